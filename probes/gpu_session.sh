#!/usr/bin/env bash
# One GPU session on the device machine: GPU tests, overhead benchmark, sample trace, report.
# Run from the repo root with the nvtx wheel carried in .whl/ (see README "GPU work").
# Writes everything under $OUT; prints a short table last.
set -u
. probes/gpu_env.sh
STEPS=${STEPS:-all}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, nvtx, pynvml; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } | tee "$OUT/env.txt"

if [[ $STEPS == all || $STEPS == *tests* ]]; then
  timeout 420 python3 -m pytest -m gpu -v -p no:cacheprovider tests/ 2>&1 | tail -40 > "$OUT/gpu_tests.txt"
  tail -15 "$OUT/gpu_tests.txt"
fi
if [[ $STEPS == all || $STEPS == *overhead* ]]; then   # probes/bench_overhead.py
  timeout 300 python3 probes/bench_overhead.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" | tail -8
  if [[ -n ${BENCH_INFLIGHT1:-} ]]; then
    timeout 200 python3 probes/bench_overhead.py --max-inflight 1 --json "$OUT/bench_inflight1.json" 2>&1 | tail -6
  fi
fi
if [[ $STEPS == all || $STEPS == *trace* ]]; then
  timeout 240 python3 -m cgwatch run --headless --model llama-1b --arrival poisson:0.25 --steps 4000 \
    --at 1500:eager --at 1800:graph --at 2500:recapture=1,2,4,8,16,24,32,40,48,56,64 --at 3000:mark=after-recapture \
    --record "$OUT/llama1b_poisson.jsonl" > "$OUT/trace_run.txt" 2>&1; echo "run rc=$?"
  tail -5 "$OUT/trace_run.txt"
  python3 -m cgwatch report "$OUT/llama1b_poisson.jsonl" | tee "$OUT/report.txt"
fi
if [[ $STEPS == all || $STEPS == *live* ]]; then   # a client drives the daemon through the protocol
  timeout 300 python3 probes/live_session.py --model llama-1b --steps 3000 --record "$OUT/llama1b_live.jsonl" \
    2>&1 | tee "$OUT/live.txt" | tail -9
fi
if [[ $STEPS == all || $STEPS == *smoke* ]]; then   # the largest preset, and --profile-steps
  timeout 240 python3 -m cgwatch run --headless --model llama-8b --arrival fixed:8 --steps 300 --profile-steps 100:120 \
    --record "$OUT/llama8b_fixed8.jsonl" > "$OUT/llama8b.txt" 2>&1; echo "llama-8b rc=$?"; tail -2 "$OUT/llama8b.txt"
  python3 -m cgwatch report "$OUT/llama8b_fixed8.jsonl" | head -14
fi
if [[ $STEPS == all || $STEPS == *probes* ]]; then   # issue 4: standalone probes
  timeout 120 python3 probes/launch_overhead.py --json "$OUT/launch_overhead.json" 2>&1 | tail -4
  timeout 120 python3 probes/linear_latency.py --json "$OUT/linear_latency.json" 2>&1 | tail -6
  timeout 200 python3 probes/graph_memory.py --model llama-1b --json "$OUT/graph_memory.json" 2>&1 | tail -6
  timeout 200 python3 probes/workspace_lifetime.py --model llama-1b --json "$OUT/workspace_lifetime.json" 2>&1 | tail -4
fi
if [[ $STEPS == all || $STEPS == *sweep* ]]; then   # issue 4: cgwatch bench (STEPS=sweep), eager vs graph vs compile
  for m in ${BENCH_MODELS:-tiny llama-1b}; do
    timeout ${BENCH_TIMEOUT:-400} python3 -m cgwatch bench --model $m --batch-sizes ${BENCH_SIZES:-1,2,4,8,16,32,64} \
      ${BENCH_FLAGS:---with-compile} --record "$OUT/bench_$m.jsonl" --json > "$OUT/bench_$m.json" 2> "$OUT/bench_$m.err"
    echo "bench $m rc=$?"; tail -3 "$OUT/bench_$m.err"
    python3 -c "import json,sys; from cgwatch.bench import format_result; r=json.load(open(sys.argv[1])); print(format_result(r))" \
      "$OUT/bench_$m.json" 2>&1 | tee "$OUT/bench_$m.txt"
  done
fi
if [[ $STEPS == all || $STEPS == *gap* ]]; then   # the GPU gap between steps, graph vs eager (fixed batch 8)
  for m in ${GAP_MODELS:-tiny llama-1b}; do
    timeout 200 python3 -m cgwatch run --headless --model $m --arrival fixed:8 --steps 1000 --at 500:eager \
      --record "$OUT/gap_$m.jsonl" > "$OUT/gap_$m.txt" 2>&1; echo "gap $m rc=$?"
    python3 -m cgwatch report "$OUT/gap_$m.jsonl" --json | python3 -c "
import json, sys; r = json.load(sys.stdin); t = r['totals']
print(f\"{sys.argv[1]}: gpu idle graph {t['gpu_idle_graph_pct']}% eager {t['gpu_idle_eager_pct']}%\")
for b in r['buckets']:
    if b['steps']: print(f\"  bucket {b['label']}: gap p50 graph {b['gap_us_graph_p50']} us, eager {b['gap_us_eager_p50']} us; launch p50 graph {b['host_us_graph_p50']} us, eager {b['host_us_eager_p50']} us; step p50 graph {b['graph_p50_ms']} ms, eager {b['eager_p50_ms']} ms\")
" $m
  done
fi
