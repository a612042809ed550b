#!/usr/bin/env bash
# Issue 14 on one GPU: the GPU tests, then `cgwatch bench` plain vs fused kernels on llama-1b (and
# llama-8b with STEPS=...bench8), a second run's start-up (Triton's cache), and a torch.profiler
# breakdown of one fused graph step by kernel class. Run from the repo root with the wheels in .whl/.
# STEPS: tests,bench1,bench8,startup,profile,overhead,record (default: tests,bench1). Outputs under $OUT.
# record (issue 13): two real llama-1b recordings with prefills (the default Poisson workload): one closed
# (Parquet), one killed mid-run (an Arrow IPC stream of 0.25 s batches), for the one-pass exports on the CPU.
set -u
. probes/gpu_env.sh
STEPS=${STEPS:-tests,bench1}
SIZES=${SIZES:-1,2,4,8,16,32,64}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  python3 -c 'import pyarrow; print("pyarrow", pyarrow.__version__)' 2>&1 | tail -1; } | tee "$OUT/env.txt"
if [[ $STEPS == *tests* ]]; then
  timeout ${TESTS_TIMEOUT:-450} python3 -m pytest -m gpu -q -x -p no:cacheprovider ${TESTS:-tests/} -k "${TESTK:-}" 2>&1 | tail -30 > "$OUT/gpu_tests.txt"
  tail -12 "$OUT/gpu_tests.txt"
fi
if [[ $STEPS == *bench1* ]]; then
  timeout 400 python3 -m cgwatch bench --model llama-1b --batch-sizes "$SIZES" --steps ${BSTEPS:-100} \
    --tokens ${BTOKENS:-128} --kernels ${BKERNELS:-plain,fused} --json --record "$OUT/bench_llama1b.jsonl" > "$OUT/bench_llama1b.json" 2> "$OUT/bench_llama1b.err"
  echo "bench llama-1b rc=$?"; tail -3 "$OUT/bench_llama1b.err"
  python3 -c "import json,sys; sys.path.insert(0,'.'); from cgwatch.bench import format_result; print(format_result(json.load(open('$OUT/bench_llama1b.json'))))"
fi
if [[ $STEPS == *bench8* ]]; then
  timeout 500 python3 -m cgwatch bench --model llama-8b --batch-sizes "$SIZES" --steps ${BSTEPS:-100} \
    --tokens ${BTOKENS:-128} --kernels ${BKERNELS:-plain,fused} --json > "$OUT/bench_llama8b.json" 2> "$OUT/bench_llama8b.err"
  echo "bench llama-8b rc=$?"; tail -3 "$OUT/bench_llama8b.err"
  python3 -c "import json,sys; sys.path.insert(0,'.'); from cgwatch.bench import format_result; print(format_result(json.load(open('$OUT/bench_llama8b.json'))))"
fi
if [[ $STEPS == *startup* ]]; then   # Triton's on-disk cache: the second start compiles nothing
  rm -rf ~/.triton/cache
  for run in first second; do
    timeout 200 python3 -m cgwatch run --headless --model llama-1b --arrival fixed:8 --steps 50 \
      --record "$OUT/startup_$run.jsonl" > "$OUT/startup_$run.txt" 2>&1
    python3 - "$OUT/startup_$run.jsonl" "$run" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
done = [r for r in recs if r.get("kind") == "capture_done"]
caps = [(r["bucket"], r.get("compile_s")) for r in recs if r.get("kind") == "capture"]
print(sys.argv[2], "run: capture round", done[0]["seconds"], "s, compile", done[0].get("compile_s"), "s; per bucket", caps)
PY
  done
fi
if [[ $STEPS == *profile* ]]; then
  timeout 200 python3 probes/step_profile.py --model ${PMODEL:-llama-1b} --batches 1,64 --json "$OUT/step_profile.json" 2>&1 | tail -40
fi
if [[ $STEPS == *overhead* ]]; then   # cgwatch's loop vs a bare replay loop (issue 13 / 14: <= 1%)
  for ext in none .jsonl .parquet; do
    timeout 200 python3 probes/bench_overhead.py --models llama-1b --batches 1 --trace-ext $ext \
      --json "$OUT/overhead_${ext#.}.json" 2>&1 | tail -4
  done
fi
if [[ $STEPS == *record* ]]; then
  timeout 300 python3 -m cgwatch run --headless --model llama-1b --max-seq 512 --steps ${RSTEPS:-60000} \
    --record "$OUT/rec_llama1b.parquet" > "$OUT/rec_parquet.txt" 2>&1
  echo "closed recording rc=$?"; tail -2 "$OUT/rec_parquet.txt"
  timeout -s KILL ${RKILL:-45} python3 -m cgwatch run --headless --model llama-1b --max-seq 512 \
    --record "$OUT/rec_killed.arrows" > "$OUT/rec_killed.txt" 2>&1
  echo "killed recording rc=$? (137: SIGKILL, as meant)"; ls -la "$OUT"/rec_*
fi
