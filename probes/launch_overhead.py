"""Probe: what a kernel launch costs on this machine -- host time per eager op vs GPU time per kernel
replayed from a CUDA graph.

    python3 probes/launch_overhead.py --json launch_overhead.json

A chain of ``--ops`` tiny in-place ops (``x.add_(1)`` on a 1-element tensor: the GPU work is ~nothing):
- eager: host wall time of the chain / ops. A tiny kernel runs in ~1-2 µs and the host needs longer
  to launch one, so the GPU never backs up the queue and this is the per-op launch cost;
- eager synced: the same with a sync at the end (host + drain);
- graph: the same chain captured once; GPU time per kernel (CUDA events / ops) and the host cost of one
  ``replay()`` call (the whole chain is one launch).
Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("launch_overhead: needs a CUDA GPU", file=sys.stderr)
        return 2
    x = torch.zeros(1, device="cuda")

    def chain():
        for _ in range(a.ops):
            x.add_(1)

    chain()
    torch.cuda.synchronize()
    host, host_synced = [], []
    for _ in range(a.rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        chain()
        host.append((time.perf_counter() - t) * 1e6 / a.ops)
        torch.cuda.synchronize()
        host_synced.append((time.perf_counter() - t) * 1e6 / a.ops)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain()
    g.replay()
    torch.cuda.synchronize()
    gpu, replay_host = [], []
    for _ in range(a.rounds):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        e0.record()
        t = time.perf_counter()
        g.replay()
        replay_host.append((time.perf_counter() - t) * 1e6)
        e1.record()
        e1.synchronize()
        gpu.append(e0.elapsed_time(e1) * 1e3 / a.ops)
    med = statistics.median
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "ops": a.ops, "rounds": a.rounds,
           "eager_host_us_per_op": med(host), "eager_synced_us_per_op": med(host_synced),
           "graph_gpu_us_per_kernel": med(gpu), "graph_replay_call_host_us": med(replay_host)}
    res["ratio"] = res["eager_host_us_per_op"] / res["graph_gpu_us_per_kernel"]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(f"launch overhead · {res['card']} · torch {res['torch']} · chain of {a.ops} x.add_(1), "
          f"median of {a.rounds} rounds")
    print("| eager host µs/op | eager µs/op incl. sync | graph GPU µs/kernel | replay() call host µs (whole chain) | "
          "eager host / graph kernel |")
    print("|---|---|---|---|---|")
    print(f"| {res['eager_host_us_per_op']:.2f} | {res['eager_synced_us_per_op']:.2f} | "
          f"{res['graph_gpu_us_per_kernel']:.2f} | {res['graph_replay_call_host_us']:.1f} | {res['ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
