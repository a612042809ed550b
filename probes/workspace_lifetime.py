"""Probe: do captured graphs survive a cleared cuBLAS workspace cache?

A captured GEMM keeps the raw address of the cuBLAS workspace it ran with. torch caches one workspace
per (handle, stream), in the ordinary allocator, and anything that clears that cache --
``torch._C._cuda_clearCublasWorkspaces()``, which torch.compile's cudagraph trees call on every
record -- followed by ``empty_cache`` unmaps it under the graph. GraphManager clears the cache right
before each capture, so the capture allocates its workspace inside the graph pool (engine/graphs.py).

    python3 probes/workspace_lifetime.py --model llama-1b

Each variant runs in its own process (a fault poisons the CUDA context): capture, clear the cache,
``empty_cache``, replay and compare with eager.
  pool      -- the engine as it is: the workspace is allocated in the graph pool
  ordinary  -- the pre-capture clear disabled: the workspace stays in the ordinary allocator
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

VARIANTS = ("pool", "ordinary")


def child(model_name: str, variant: str, sizes: list[int]) -> dict:
    from cgwatch.engine import graphs
    from cgwatch.engine.load import load_model
    from cgwatch.engine.step import DecodeState
    from cgwatch.measure.nvml import Nvml
    from cgwatch.nvtx_ranges import Nvtx
    if variant == "ordinary":
        graphs._clear_cublas_workspaces = lambda: None
    dev = torch.device("cuda")
    with torch.inference_mode():
        model, _ = load_model(model_name, dev, torch.bfloat16)
        model.setup_caches(max(sizes), 256)
        st = DecodeState(model, max(sizes))
        for slot in range(max(sizes)):
            st.prefill(slot, 16)
        gm = graphs.GraphManager(st, Nvml(dev), Nvtx(False))
        done = gm.capture(sizes)
        snap = st.snapshot()
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        try:
            checks = {s: gm._check(gm.graphs[s], snap) for s in sizes}
            torch.cuda.synchronize()
        except Exception as e:   # the fault this probe looks for
            return {"variant": variant, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    return {"variant": variant, "ok": all(c["tokens_equal"] for c in checks.values()),
            "pool_mib": done["pool_bytes"] / 2 ** 20 if done["pool_bytes"] is not None else None,
            "max_rel_err": max(c["rel_err"] for c in checks.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--sizes", default="1,2,8")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sizes = sorted(int(x) for x in a.sizes.split(","))
    if not torch.cuda.is_available():
        print("workspace_lifetime: needs a CUDA GPU", file=sys.stderr)
        return 2
    if a.child:
        print(json.dumps(child(a.model, a.child, sizes)))
        return 0
    rows = []
    for v in VARIANTS:
        p = subprocess.run([sys.executable, __file__, "--model", a.model, "--sizes", a.sizes, "--child", v],
                           capture_output=True, text=True, timeout=300)
        last = (p.stdout.strip().splitlines() or [""])[-1]
        try:
            rows.append(json.loads(last))
        except json.JSONDecodeError:
            lines = p.stderr.strip().splitlines()
            why = next((ln for ln in lines if "CUDA error" in ln), lines[-1] if lines else "?")
            rows.append({"variant": v, "ok": False, "error": f"exit {p.returncode}: {why.strip()[:200]}"})
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": a.model, "sizes": sizes,
           "variants": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(f"cuBLAS workspace lifetime · {a.model} · {res['card']} · torch {res['torch']} · buckets {a.sizes}")
    print("| workspace | replay after clear + empty_cache | pool MiB | max rel err |")
    print("|---|---|---|---|")
    for r in rows:
        state = "ok, tokens equal eager" if r["ok"] else r.get("error", "tokens differ from eager")
        pool = f"{r['pool_mib']:.0f}" if r.get("pool_mib") is not None else "-"
        err = f"{r['max_rel_err']:.2e}" if r.get("max_rel_err") is not None else "-"
        print(f"| {r['variant']} | {state} | {pool} | {err} |")
    return 0 if rows[0]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
