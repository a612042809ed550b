#!/usr/bin/env bash
# The vLLM backend on the GPU machine (issue: vLLM on a real GPU). Run from the repo root, after the
# wheels came over (probes/vllm_wheels.py: one device call per .vstash/NN folder, then this script):
#   STEPS=install,tests,trace,bench,tui bash probes/vllm_gpu.sh
# Everything lands under $OUT; a short table is printed last. vLLM 0.26.0 pins the machine's torch.
set -u
OUT=${OUT:-/tmp/cgwatch-vllm-out}; mkdir -p "$OUT"
STEPS=${STEPS:-install,tests,trace,bench,tui}
MODEL=${MODEL:-llama-1b}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
cg() { python3 -m cgwatch "$@"; }

if [[ $STEPS == *install* && ! -d /tmp/site/vllm ]]; then
  t=$(date +%s); python3 probes/vllm_wheels.py install /tmp/stash /tmp/site || exit 1
  echo "install: $(( $(date +%s) - t )) s"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, vllm, textual; print("torch", torch.__version__, "vllm", vllm.__version__, "textual", textual.__version__)'
} 2>&1 | tee "$OUT/env.txt"

if [[ $STEPS == *trace* ]]; then   # the sample: Poisson traffic, FULL_AND_PIECEWISE, a toggle and a recapture
  t=$(date +%s)
  timeout 420 python3 -m cgwatch run --headless --backend vllm --model $MODEL --arrival poisson:0.3 --steps 3000 \
    --at 1000:eager --at 1400:graph --at 2000:recapture=1,2,4,8,16,24,32,48,64 --at 2500:mark=after-recapture \
    --record "$OUT/vllm_${MODEL}_poisson_h200.jsonl" > "$OUT/trace_run.txt" 2>&1; echo "trace rc=$? in $(( $(date +%s) - t )) s"
  grep -v "^INFO\|^WARNING\|^(EngineCore" "$OUT/trace_run.txt" | tail -6
  cg report "$OUT/vllm_${MODEL}_poisson_h200.jsonl" > "$OUT/trace_report.txt" 2>&1; head -40 "$OUT/trace_report.txt"
fi
if [[ $STEPS == *tests* ]]; then
  t=$(date +%s)
  timeout 400 python3 -m pytest -m gpu -v -p no:cacheprovider -x tests/test_vllm_gpu.py > "$OUT/gpu_tests.txt" 2>&1
  echo "tests rc=$? in $(( $(date +%s) - t )) s"; grep -E "PASS|FAIL|ERROR|passed|failed|^E " "$OUT/gpu_tests.txt" | tail -25
fi
if [[ $STEPS == *bench* ]]; then   # vLLM and cgwatch's engine, same shapes, same card, one call
  for be in vllm pytorch; do
    t=$(date +%s)
    timeout ${BENCH_TIMEOUT:-300} python3 -m cgwatch bench --backend $be --model $MODEL --batch-sizes ${BENCH_SIZES:-1,2,4,8,16,32,64} \
      --record "$OUT/bench_${be}_${MODEL}.jsonl" --json > "$OUT/bench_${be}_${MODEL}.json" 2> "$OUT/bench_${be}_${MODEL}.err"
    echo "bench $be rc=$? in $(( $(date +%s) - t )) s"; grep "^cgwatch" "$OUT/bench_${be}_${MODEL}.err" | tail -2
    python3 -c "import json,sys; from cgwatch.bench import format_result; print(format_result(json.load(open(sys.argv[1]))))" \
      "$OUT/bench_${be}_${MODEL}.json" 2>&1 | tee "$OUT/bench_${be}_${MODEL}.txt"
  done
fi
if [[ $STEPS == *tui* ]]; then     # cgwatch run (daemon child + TUI) in a terminal: toggle, back, screenshot
  t=$(date +%s)
  timeout 400 python3 probes/tui_pty.py --size 140x45 --key ${TUI_KEY1:-75}:g --key ${TUI_KEY2:-100}:g \
    --screenshot-after ${TUI_SHOT:-140} --out "$OUT/tui_vllm_${MODEL}_h200.svg" --log "$OUT/tui_pty.log" -- \
    python3 -m cgwatch run --backend vllm --model $MODEL --arrival poisson:0.3 --record "$OUT/vllm_tui.jsonl"
  echo "tui rc=$? in $(( $(date +%s) - t )) s"
  cg report "$OUT/vllm_tui.jsonl" 2>&1 | head -12
fi
