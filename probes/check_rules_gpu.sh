#!/usr/bin/env bash
# The two capture rules of `cgwatch check` that came from PyTorch's source (a torch.tensor built inside the
# callable; torch.multinomial's host read), confirmed with real captures on a GPU. Runs each case of
# tests/check_cases.py in its own `cgwatch check --device cuda --json` and prints one line per case:
# the status, the cause, the lint's severity for the op, and whether the capture was attempted.
#   bash probes/check_rules_gpu.sh            (on the GPU machine; needs only torch there)
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0))"
python3 -c "from cgwatch.check.lint import multinomial_reads_host as r; print('lint: multinomial reads the host on this torch:', r())"
for case in builds_tensor samples_one_token samples_with_replacement samples_without_a_host_read; do
  python3 -m cgwatch check "tests/check_cases.py:$case" --example-inputs 'f32[4,8]' --device cuda --json \
    > "${OUT:-/tmp}/check_$case.json" 2> "${OUT:-/tmp}/check_$case.err"
  rc=$?
  python3 - "$case" "$rc" "${OUT:-/tmp}/check_$case.json" <<'PY'
import json, sys
case, rc, path = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{case:30s} rc={rc} no JSON ({e})"); sys.exit()
sev = ",".join(sorted({f.get("severity", "?") + ":" + str(f.get("cause")) for f in r.get("findings") or []})) or "-"
print(f"{case:30s} rc={rc} status={r['status']:5s} phase={str(r['phase']):8s} cause={r['cause']} "
      f"attempted={r['capture_attempted']} lint={sev} error={(r.get('error') or '')[:100]!r}")
PY
done
