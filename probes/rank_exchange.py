"""The per-step cost of driving tensor-parallel ranks: rank 0's all_gather of the step plan (and the
others' step times) over the gloo control group, and the plan's encoding (engine/ranks.py).

    python3 probes/rank_exchange.py [--ranks 2] [--steps 2000] [--max-batch 64]

Starts the ranks itself (one process each, one CPU thread each) and prints µs per step on rank 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import timedelta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rank_main(rank: int, size: int, port: int, steps: int, max_batch: int) -> None:
    import torch
    import torch.distributed as dist

    from cgwatch.engine import ranks as RK
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=timedelta(seconds=120), wait_for_workers=False)
    r = RK.Ranks(rank, size, store, cuda=False)
    n = RK.vector_len(max_batch)
    active, admitted = list(range(max_batch)), [(1, 128)]
    v = RK.encode_plan(RK.OP_STEP, 1, max_batch, active, admitted, n) if rank == 0 else \
        RK.encode_measures([(i, 4.0) for i in range(2)], n)
    for _ in range(100):
        r.exchange(v)
    t = time.perf_counter()
    for _ in range(steps):
        parts = r.exchange(v)
        if rank:
            RK.decode_plan(parts[0])
    per = (time.perf_counter() - t) / steps * 1e6
    if rank == 0:
        t = time.perf_counter()
        for _ in range(steps):
            RK.encode_plan(RK.OP_STEP, 1, max_batch, active, admitted, n)
        enc = (time.perf_counter() - t) / steps * 1e6
        print(f"{size} ranks, max batch {max_batch}: exchange {per:.1f} µs/step (all_gather of {n} float64 "
              f"over gloo), plan encoding {enc:.1f} µs; {os.cpu_count()} CPUs", flush=True)
    r.stopped = True
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank is not None:
        rank_main(a.rank, a.ranks, a.port, a.steps, a.max_batch)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, __file__, "--ranks", str(a.ranks), "--steps", str(a.steps), "--max-batch",
            str(a.max_batch), "--port", str(port)]
    procs = [subprocess.Popen(args + ["--rank", str(r)]) for r in range(1, a.ranks)]
    p0 = subprocess.Popen(args + ["--rank", "0"])
    for p in [p0, *procs]:
        p.wait(timeout=600)


if __name__ == "__main__":
    main()
