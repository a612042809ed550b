#!/usr/bin/env bash
# Whole-trace exports against the cores they get (docs/BENCHMARKS.md, issue 13): the 1M- and 10M-step synthetic
# traces exported by this checkout (B: export_columnar.BUILDERS from the usable cores, 2 to 6) and by a copy held
# at two builder threads (A: what a 2-core machine gets), side by side (probes/ab_trace_commands.py). Needs
# numpy and pyarrow, no GPU; run it where there are more than two cores (the GPU host):
#     OUT=/tmp/out ROUNDS=1 STEPS=1000000,10000000 bash probes/export_cores.sh
set -euo pipefail
OUT=${OUT:-/tmp/cgwatch-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
STEPS=${STEPS:-1000000,10000000}
TB=${TB:-/tmp/cgwatch-tb}
nproc; python3 -c "import sys, numpy, pyarrow; print(sys.version.split()[0], 'numpy', numpy.__version__, 'pyarrow', pyarrow.__version__)"
python3 -c "from cgwatch.export_columnar import BUILDERS; print('builders', BUILDERS)"
python3 probes/trace_bench.py --steps "$STEPS" --out "$TB" --only size | tail -1
A=$(mktemp -d); cp -r cgwatch "$A/"
sed -i 's/^BUILDERS = .*/BUILDERS = 2/' "$A/cgwatch/export_columnar.py"
grep -q '^BUILDERS = 2$' "$A/cgwatch/export_columnar.py"
traces=(); for n in ${STEPS//,/ }; do traces+=("$TB/synth_$n.parquet"); done
python3 probes/ab_trace_commands.py --a "$A" --b "$PWD" --rounds "${ROUNDS:-1}" \
  --only "${ONLY:-export csv,export pftrace,export perfetto}" --json "$OUT/export_cores.json" "${traces[@]}"
rm -rf "$A"
