"""Probe: graph memory per bucket, one private pool per graph vs one shared pool, captured largest-first
vs smallest-first -- through the engine's own GraphManager (cgwatch/engine/graphs.py).

    python3 probes/graph_memory.py --model llama-1b --sizes 1,2,4,8,16,32,64 --json graph_memory.json

Per bucket: the pool bytes it added (shared) or its own pool's bytes (private), from the allocator's
segments (measure/graph_stats.py), and the NVML used-memory delta of its capture (driver-side graph
memory included). Each layout is captured, measured, released, and the next one starts clean.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from cgwatch.engine.graphs import GraphManager
from cgwatch.engine.load import load_model
from cgwatch.engine.step import DecodeState
from cgwatch.measure.nvml import Nvml
from cgwatch.nvtx_ranges import Nvtx

MIB = 2 ** 20
LAYOUTS = (("private", True), ("shared", True), ("shared", False))   # (pool, largest first)


def measure(model, sizes: list[int], pool: str, largest_first: bool) -> dict:
    st = DecodeState(model, max(sizes))
    gm = GraphManager(st, Nvml(torch.device("cuda")), Nvtx(False), pool=pool)
    torch.cuda.synchronize()
    reserved0 = torch.cuda.memory_reserved()
    done = gm.capture(sizes, largest_first=largest_first)
    per = {s: {"pool_mib": None if b.pool_bytes is None else b.pool_bytes / MIB,
               "nvml_mib": None if b.nvml_bytes is None else b.nvml_bytes / MIB,
               "capture_s": b.capture_s, "ok": b.ok} for s, b in gm.graphs.items()}
    out = {"pool": pool, "order": "largest first" if largest_first else "smallest first",
           "total_pool_mib": None if done["pool_bytes"] is None else done["pool_bytes"] / MIB,
           "reserved_delta_mib": (torch.cuda.memory_reserved() - reserved0) / MIB,
           "nvml_total_mib": sum(p["nvml_mib"] or 0 for p in per.values()),
           "capture_s": done["seconds"], "failed": done["failed"], "buckets": per}
    gm.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--max-seq", type=int, default=1024)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("graph_memory: needs a CUDA GPU", file=sys.stderr)
        return 2
    sizes = sorted(int(x) for x in a.sizes.split(","))
    dev = torch.device("cuda")
    model, info = load_model(a.model, dev, torch.bfloat16)
    model.setup_caches(max(sizes), a.max_seq)
    rows = [measure(model, sizes, pool, lf) for pool, lf in LAYOUTS]
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": a.model,
           "max_seq": a.max_seq, "sizes": sizes, "layouts": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(f"graph memory · {a.model} · {res['card']} · torch {res['torch']} · KV {a.max_seq} x {max(sizes)} slots")
    print("| layout | " + " | ".join(f"b{s} MiB" for s in sizes) + " | pool total MiB | NVML total MiB | capture s |")
    print("|---|" + "---|" * (len(sizes) + 3))
    for r in rows:
        cells = [f"{r['buckets'][s]['pool_mib']:.0f}" if r["buckets"][s]["pool_mib"] is not None else "n/a" for s in sizes]
        print(f"| {r['pool']}, {r['order']} | " + " | ".join(cells) +
              f" | {r['total_pool_mib']:.0f} | {r['nvml_total_mib']:.0f} | {r['capture_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
