#!/usr/bin/env bash
# cgwatch's own cost per graph step, two ways side by side on one GPU (issue 11's "same method" at N=1):
# probes/bench_overhead.py (the single-GPU number) and `cgwatch bench`'s overhead_pct (its loop against
# Engine.replay_bare from the same state; what tp_gpu.sh's bench reports at N=2). Plus the bench GPU test.
# Run from the repo root with the wheels in .whl/; outputs under $OUT.
set -u
. probes/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_bench.py 2>&1 | tail -3
timeout 200 python3 probes/bench_overhead.py --models llama-1b --batches ${SIZES:-1,8} --trace-ext .jsonl \
  --json "$OUT/overhead_probe.json" 2>&1 | tail -4
timeout 240 python3 -m cgwatch bench --model llama-1b --batch-sizes ${SIZES:-1,8} --kernels ${KERNELS:-plain,fused} \
  --steps 50 --tokens 150 --json --record "$OUT/bench_own_cost.jsonl" > "$OUT/bench_own_cost.json" 2> "$OUT/bench_own_cost.err"
echo "bench rc=$?"; tail -2 "$OUT/bench_own_cost.err"
python3 -c "import json,sys; from cgwatch.bench import format_result; print(format_result(json.load(open(sys.argv[1]))))" \
  "$OUT/bench_own_cost.json"
