#!/usr/bin/env bash
# Tensor parallelism on two GPUs (nvidia-h200-x2), issue 11: the TP GPU tests, a two-rank sample trace
# (llama-8b, Poisson traffic, a toggle and a recapture) with its report and the per-GPU TUI screenshot,
# and the bench (llama-8b N=1 / N=2, llama-70b N=2: eager vs graph per batch, all-reduce share of a
# step, cgwatch's plan cost per step). Run from the repo root; outputs under $OUT; a short table last.
# Each part fits one 10-minute device call: STEPS=tests, STEPS=trace, STEPS=bench8, STEPS=bench70.
set -u
. probes/gpu_env.sh
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}      # NVLink multicast off (cgwatch sets it too)
STEPS=${STEPS:-all}
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  nvidia-smi topo -m | head -4
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$OUT/env.txt"

if [[ $STEPS == all || $STEPS == *tests* ]]; then   # NCCL inside the graphs, a failing rank, a killed rank, llama-70b
  timeout 560 python3 -m pytest -m gpu -v -p no:cacheprovider tests/test_tensor_parallel_gpu.py 2>&1 | tail -30 \
    > "$OUT/tp_gpu_tests.txt"; tail -12 "$OUT/tp_gpu_tests.txt"
fi
if [[ $STEPS == all || $STEPS == *trace* ]]; then   # the README's per-GPU view comes from this trace
  timeout 400 python3 -m cgwatch run --headless --tp 2 --model ${TRACE_MODEL:-llama-8b} --arrival poisson:0.25 \
    --steps 3000 --at 1000:eager --at 1300:graph --at 2000:recapture=1,2,4,8,16,24,32,40,48,56,64 \
    --at 2500:mark=after-recapture --record "$OUT/tp2_poisson.jsonl" > "$OUT/tp2_run.txt" 2>&1; echo "run rc=$?"
  tail -4 "$OUT/tp2_run.txt"
  python3 -m cgwatch report "$OUT/tp2_poisson.jsonl" | tee "$OUT/tp2_report.txt"
  python3 -m cgwatch report "$OUT/tp2_poisson.jsonl" --json > "$OUT/tp2_report.json"
  python3 -m cgwatch export "$OUT/tp2_poisson.jsonl" --format csv -o "$OUT/tp2_poisson.csv" | tail -1
  python3 -m cgwatch export "$OUT/tp2_poisson.jsonl" --format pftrace -o "$OUT/tp2_poisson.pftrace" | tail -1   # ui.perfetto.dev
  dur=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['totals']['duration_s'] or 10)" "$OUT/tp2_report.json")
  at=$(python3 -c "print(round(float('$dur') * 0.9, 1))")
  python3 probes/screenshot.py "$OUT/tp2_poisson.jsonl" --at "$at" --keys G --size 80x24 --out "$OUT/tui_tp2_gpus_80x24.svg"
  python3 probes/screenshot.py "$OUT/tp2_poisson.jsonl" --at "$at" --keys G --size 120x40 --out "$OUT/tui_tp2_gpus.svg"
fi
bench() {   # bench MODEL TP SIZES TIMEOUT
  local name="bench_$1_tp$2"
  timeout "$4" python3 -m cgwatch bench --model "$1" --tp "$2" --batch-sizes "$3" --steps ${BENCH_STEPS:-50} \
    --warmup 10 --tokens 64 --max-seq 512 --record "$OUT/$name.jsonl" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "$name rc=$?"; tail -2 "$OUT/$name.err"
  python3 -c "import json,sys; from cgwatch.bench import format_result; print(format_result(json.load(open(sys.argv[1]))))" \
    "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
}
if [[ $STEPS == all || $STEPS == *bench8* ]]; then
  timeout 40 python3 probes/rank_exchange.py 2>&1 | tee "$OUT/rank_exchange.txt"   # the plan exchange alone (CPU, ~5 s)
  bench llama-8b 1 ${BENCH_SIZES:-1,8,32,64} 270   # the two fit one 600 s call
  bench llama-8b 2 ${BENCH_SIZES:-1,8,32,64} 270
fi
if [[ $STEPS == all || $STEPS == *bench70* ]]; then
  bench llama-70b 2 ${BENCH70_SIZES:-1,8,32} 560
fi
# the short table: p50 step ms eager / graph, speedup, all-reduce share, plan µs (rank 0), skew, cgwatch's own
# cost per graph step against a bare replay on every rank (the bench's overhead_pct: the issue's <= 1% at N=2)
python3 - "$OUT" <<'PY'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*_tp*.json"))):
    try:
        res = json.load(open(path))
    except Exception as e:
        print(f"{os.path.basename(path)}: unreadable ({e})"); continue
    name = res["model"]["name"] if isinstance(res.get("model"), dict) else res.get("model")
    for r, kind in ((r, kind) for r in res["rows"] for kind in ("", "_fused") if r.get("graph" + kind)):
        e, g = r.get("eager" + kind) or {}, r.get("graph" + kind) or {}
        f = lambda v, s: "n/a" if v is None else format(v, s)
        rows.append((name, res.get("tensor_parallel_size", 1), kind.strip("_") or "plain", r["batch"],
                     f(e.get("p50_ms"), ".3f"), f(g.get("p50_ms"), ".3f"),
                     f(e["p50_ms"] / g["p50_ms"] if e.get("p50_ms") and g.get("p50_ms") else None, ".2f"),
                     f(e.get("allreduce_pct"), ".1f"), f(g.get("allreduce_pct"), ".1f"),
                     f(g.get("plan_us_p50"), ".0f"), f(g.get("skew_ms_p50"), ".3f"), f(g.get("tokens_per_s"), ",.0f"),
                     f(g.get("overhead_pct"), "+.2f")))
head = ("model", "tp", "kernels", "batch", "eager ms", "graph ms", "speedup", "AR% eager", "AR% graph", "plan µs", "skew ms", "graph tok/s",
        "cgwatch %")
if rows:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for line in (head, *rows):
        print("  ".join(str(x).rjust(n) for x, n in zip(line, w)))
PY
