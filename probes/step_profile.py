"""Where a decode step's GPU time goes: torch.profiler over replays of the engine's own captured graphs,
kernels grouped by class (GEMM, attention, norm, RoPE + KV write, SiLU, indexing, sampling, all-reduce,
other), per batch size, for the plain and the fused kernels (issue 14's profile).

    python probes/step_profile.py --model llama-1b --batches 1,64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cgwatch.engine.control import Command  # noqa: E402
from cgwatch.engine.loop import Engine, EngineConfig  # noqa: E402
from cgwatch.workload import WorkloadSpec  # noqa: E402

CLASSES = [  # first match wins
    ("all-reduce", r"nccl"),
    ("attention", r"attn_chunk|attn_merge|flash|fmha|efficient_attention|softmax|attention"),
    ("norm", r"rms_norm"),
    ("rope+kv write", r"rope_cache"),
    ("silu*up", r"silu_mul"),
    ("gemm", r"gemm|gemv|cutlass|xmma|cublas|splitk|sm\d\d_|ampere_|hopper|Kernel2|dot_kernel"),
    ("indexing", r"index|gather|scatter|embedding|cat"),
    ("sampling", r"argmax|reduce"),
]


def kernel_class(name: str) -> str:
    low = name.lower()
    for cls, pat in CLASSES:
        if re.search(pat.lower(), low):
            return cls
    return "elementwise/other"


def profile_replays(eng: Engine, b: int, n: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    for _ in range(10):
        eng.graphs.replay(b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        eng.graphs.replay(b)
    end.record()
    torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / n
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            eng.graphs.replay(b)
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0, 0.0])
    names = defaultdict(float)
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        c = per[kernel_class(e.name)]
        c[0] += 1
        c[1] += e.device_time
        names[e.name[:90]] += e.device_time
    kernel_us = sum(v[1] for v in per.values()) / n
    return {"batch": b, "step_ms": step_ms, "kernel_us": kernel_us,
            "classes": {k: {"kernels": v[0] / n, "us": v[1] / n} for k, v in sorted(per.items(), key=lambda kv: -kv[1][1])},
            "top": [{"name": k, "us": v / n} for k, v in sorted(names.items(), key=lambda kv: -kv[1])[:12]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--kernels", default=os.environ.get("PKERNELS", "plain,fused"))
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--json")
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    kinds = a.kernels.split(",")
    wl = WorkloadSpec(arrival=f"fixed:{max(batches)}", max_concurrency=max(batches), max_seq=1024, seed=0)
    eng = Engine(EngineConfig(model=a.model, capture_sizes=tuple(batches), max_seq=1024, mode="graph",
                              kernels=kinds[0], max_padding_ratio=0.0, nvtx=False, workload=wl), lambda r: None)
    out = {"model": a.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    with torch.inference_mode():
        eng.start()
        for s in range(max(batches)):
            eng.state.prefill(s, 64)   # context ~64-114 while profiled (the bench's prompt 32 + steps)
        for kind in kinds:
            if eng.kernels != kind:
                eng._apply(Command("kernels", kind))
            for b in batches:
                eng.state.set_slots(list(range(b)), b)
                row = profile_replays(eng, b, a.replays) | {"kernels_set": kind}
                out["rows"].append(row)
                print(f"\n{a.model} batch {b} {kind}: graph step {row['step_ms']:.3f} ms (CUDA events), "
                      f"kernel time {row['kernel_us']:.0f} µs")
                for cls, v in row["classes"].items():
                    print(f"  {cls:18s} {v['kernels']:6.1f} kernels {v['us']:8.1f} µs "
                          f"{100 * v['us'] / row['kernel_us']:5.1f}%")
                for t in row["top"][:6]:
                    print(f"    {t['us']:8.1f} µs  {t['name']}")
    eng.close()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
