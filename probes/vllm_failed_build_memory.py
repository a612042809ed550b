"""Does a vLLM engine whose build failed (a graph capture out of memory) give its GPU memory back?

A restart that fails must leave room for the previous config to start again. This builds the tiny
preset with vLLM, stops it, then builds again with the capture made to run out of memory (all free
memory taken right before vLLM captures), and prints the device memory in use after each clean-up
step; then it looks for what still holds the big CUDA tensors.

    PYTHONPATH=/tmp/site:$PWD python3 probes/vllm_failed_build_memory.py
"""

from __future__ import annotations

import gc
import sys

import torch

from cgwatch.backends.vllm_config import VllmEngineConfig
from cgwatch.backends.vllm_engine import VllmEngine
from cgwatch.backends.vllm_faults import capture_out_of_memory
from cgwatch.errors import CgwatchError
from cgwatch.workload import WorkloadSpec

GIB = 1 << 30


def used() -> str:
    free, total = torch.cuda.mem_get_info()
    return f"device used {(total - free) / GIB:6.2f} GiB, torch allocated {torch.cuda.memory_allocated() / GIB:6.2f} GiB"


def _describe(obj) -> str:
    if isinstance(obj, dict):
        for owner in gc.get_referrers(obj):
            if getattr(owner, "__dict__", None) is obj:
                return f"{type(owner).__module__}.{type(owner).__qualname__}.__dict__"
        return f"dict{list(obj)[:3]}"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__}[{len(obj)}]"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def holders(limit: int = 2, depth: int = 16) -> None:
    """For the largest live CUDA tensors: a chain of what refers to them, up to an owner object."""
    def size(o) -> int:
        try:
            return o.untyped_storage().nbytes() if isinstance(o, torch.Tensor) and o.is_cuda else 0
        except Exception:      # fake / symbolic tensors of the compiler
            return 0
    objs = gc.get_objects()
    big = [o for o in objs if size(o) > (256 << 20)]
    del objs
    print(f"live CUDA tensors > 256 MiB: {len(big)}")
    mine = {id(big)}
    for t in big[:limit]:
        chain, obj, seen = [], t, set(mine)
        for _ in range(depth):
            seen.add(id(obj))
            refs = [r for r in gc.get_referrers(obj)
                    if id(r) not in seen and type(r).__name__ not in ("frame", "list_iterator")]
            if not refs:
                break
            refs.sort(key=lambda r: isinstance(r, (list, tuple, dict)))   # objects before containers
            obj = refs[0]
            chain.append(_describe(obj))
            if type(obj).__name__ in ("module", "type"):
                break
        print("  held by: " + " <- ".join(chain))


def main() -> None:
    cfg = VllmEngineConfig(model="tiny", load_format="dummy", max_seq=256, capture_sizes=(1, 2, 4),
                           gpu_memory_utilization=0.3, max_num_seqs=4,
                           workload=WorkloadSpec(arrival="fixed:4", prompt_len="fixed:8", output_len="fixed:64",
                                                 max_concurrency=4, max_seq=256))
    eng = VllmEngine(cfg, lambda rec: None)
    print("built:          ", used())
    eng._shutdown()
    print("after shutdown: ", used())
    try:
        with capture_out_of_memory():
            eng._build()
    except CgwatchError as e:
        print("failed build:   ", str(e)[:160])
    print("after failure:  ", used())
    gc.collect()
    torch.cuda.empty_cache()
    print("after gc:       ", used())
    holders()
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    print("after dynamo reset:", used())
    holders()
    try:
        eng._build()
        print("rebuilt:        ", used())
    except CgwatchError as e:
        print("rebuild failed: ", str(e)[:200])
    eng.close()


if __name__ == "__main__":
    main()
