"""Probe: the seed's claim -- a Linear 4096x4096 fp16 at batch 16, eager vs CUDA graph.

    python3 probes/linear_latency.py --json linear_latency.json

Two ways to time a call, both over ``--iters`` calls after a warm-up, mean / median / P99:
- isolated: CUDA events around one call, then a sync before the next (the latency a lone call sees);
- back-to-back: ``--iters`` calls queued without a sync, wall time / calls (the throughput a loop sees).
The graph captures one ``F.linear`` into a static output; the eager call is the same op.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def stats(v: list[float]) -> dict:
    v = sorted(v)
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p99": v[round(0.99 * (len(v) - 1))]}


def isolated_us(fn, iters: int) -> dict:
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e) * 1e3)
    return stats(out)


def isolated_wall_us(fn, iters: int) -> dict:
    out = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e6)
    return stats(out)


def back_to_back_us(fn, iters: int, rounds: int = 5) -> dict:
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e6 / iters)
    return stats(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("linear_latency: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.dim, device="cuda", dtype=torch.float16)
    w = torch.randn(a.dim, a.dim, device="cuda", dtype=torch.float16) / a.dim ** 0.5
    out = torch.empty(a.batch, a.dim, device="cuda", dtype=torch.float16)

    def eager():
        torch.matmul(x, w.t(), out=out)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            eager()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        eager()
    ref = F.linear(x, w)
    g.replay()
    torch.cuda.synchronize()
    same = torch.allclose(out, ref, rtol=1e-2, atol=1e-2)
    for _ in range(50):
        eager(), g.replay()
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "dim": a.dim, "batch": a.batch,
           "iters": a.iters, "graph_equals_eager": same, "modes": {}}
    for name, fn in (("eager", eager), ("graph", g.replay)):
        res["modes"][name] = {"isolated_gpu_us": isolated_us(fn, a.iters),
                              "isolated_wall_us": isolated_wall_us(fn, a.iters),
                              "back_to_back_us": back_to_back_us(fn, a.iters)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(f"Linear {a.dim}x{a.dim} fp16, batch {a.batch} · {res['card']} · torch {res['torch']} · "
          f"{a.iters} calls · graph output == eager: {same}")
    print("| timing | eager mean / median / p99 µs | graph mean / median / p99 µs | eager / graph (median) |")
    print("|---|---|---|---|")
    for key, label in (("isolated_gpu_us", "one call, CUDA events"), ("isolated_wall_us", "one call, host wall + sync"),
                       ("back_to_back_us", "back-to-back, wall / call")):
        e, g_ = res["modes"]["eager"][key], res["modes"]["graph"][key]
        print(f"| {label} | {e['mean']:.1f} / {e['median']:.1f} / {e['p99']:.1f} | "
              f"{g_['mean']:.1f} / {g_['median']:.1f} / {g_['p99']:.1f} | {e['median'] / g_['median']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
