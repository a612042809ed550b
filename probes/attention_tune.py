"""Tune the fused decode attention (engine/kernels.py): time ``decode_attention`` inside a CUDA graph
(16 calls a replay over 8 layers' caches in turn, so launch costs are a graph's and the KV
comes mostly from HBM, as in a step) for chunk / block / warps, at the shapes of
llama-1b (32 q heads, 8 kv, head_dim 64) and llama-8b (head_dim 128), batch 1 and 64, short and long
contexts. The KV each call must read, over the time, is the bandwidth it reaches.

    python probes/attention_tune.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cgwatch.engine import kernels as K  # noqa: E402

# chunk 1024 = the whole cache row: one pass, no merge kernel
LAYERS = 8
CONFIGS = [(c, b, w) for c in (32, 64, 128, 256, 1024) for b in (16, 32, 64) for w in (2, 4) if b <= c]


def time_us(fn, calls: int = 20, reps: int = 20) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    e.record()
    torch.cuda.synchronize()
    return a.elapsed_time(e) * 1e3 / (reps * calls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for name, hd in (("llama-1b", 64), ("llama-8b", 128)):
        for batch, ctx in ((1, 100), (8, 130), (16, 130), (32, 130), (64, 130), (64, 400), (64, 1000), (8, 1000)):
            nkv, nh, max_seq = 8, 32, 1024
            # one cache a layer, called in turn: 8 layers' KV, as a step reads it (cold in L2, mostly)
            caches = [(torch.randn(batch + 1, nkv, max_seq, hd, dtype=torch.bfloat16, device="cuda"),
                       torch.randn(batch + 1, nkv, max_seq, hd, dtype=torch.bfloat16, device="cuda"))
                      for _ in range(LAYERS)]
            q = torch.randn(batch, nh, hd, dtype=torch.bfloat16, device="cuda")
            slots = torch.arange(batch, device="cuda")
            pos = torch.full((batch,), ctx - 1, device="cuda")
            kv_bytes = 2 * batch * nkv * ctx * hd * 2
            res = []
            for chunk, block, warps in CONFIGS:
                turn = iter(range(10 ** 9))

                def call():
                    kc, vc = caches[next(turn) % LAYERS]
                    K.decode_attention(q, kc, vc, slots, pos, chunk, block, warps)
                us = time_us(call, calls=2 * LAYERS)
                res.append({"chunk": chunk, "block": block, "warps": warps, "us": us})
            res.sort(key=lambda r: r["us"])
            chosen = K.attention_config(batch, nkv, hd, max_seq)
            default = next((r for r in res if (r["chunk"], r["block"], r["warps"]) == chosen),
                           {"us": float("nan")})
            rows.append({"shape": name, "batch": batch, "ctx": ctx, "kv_bytes": kv_bytes, "best": res[:5],
                         "default": default, "all": res})
            one = next(r for r in res if r["chunk"] >= max_seq)
            b = res[0]
            print(f"{name} b={batch:2d} ctx={ctx:4d}: best chunk {b['chunk']:3d} block {b['block']:2d} warps {b['warps']}"
                  f" {b['us']:6.1f} µs ({kv_bytes / b['us'] / 1e6:.2f} TB/s); default {default['us']:6.1f} µs; one pass best "
                  f"{one['us']:6.1f} µs (block {one['block']} warps {one['warps']}); "
                  f"next {[(r['chunk'], r['block'], r['warps'], round(r['us'], 1)) for r in res[1:4]]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
