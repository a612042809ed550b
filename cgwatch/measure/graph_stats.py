"""Where graph memory and kernels per graph are measured.

- Pool bytes: the allocator segments that belong to a graph pool (``segment_pool_id`` in
  ``torch.cuda.memory_snapshot()``), as inductor's cudagraph trees count them.
- Kernels: kernel nodes of the captured ``cudaGraph_t`` (driver API ``cuGraphGetNodes`` /
  ``cuGraphNodeGetType`` through ctypes; the graph is captured with ``keep_graph=True``).
Both are capture-time readings, never on the per-step path. Anything unavailable reads None.
"""

from __future__ import annotations

import ctypes

import torch

_CU_GRAPH_NODE_TYPE_KERNEL = 0
_libcuda = None


def pool_bytes(pool) -> int | None:
    """Bytes of allocator segments in ``pool`` (a graph pool handle: a (int, int) tuple)."""
    try:
        key = tuple(pool)
        return sum(seg["total_size"] for seg in torch.cuda.memory_snapshot()
                   if tuple(seg.get("segment_pool_id", ())) == key)
    except Exception:
        return None


def _cuda():
    global _libcuda
    if _libcuda is None:
        try:
            _libcuda = ctypes.CDLL("libcuda.so.1")
        except OSError:
            _libcuda = False
    return _libcuda or None


def kernel_nodes(graph: torch.cuda.CUDAGraph) -> int | None:
    """Number of kernel nodes in a graph captured with keep_graph=True (None if unavailable)."""
    lib = _cuda()
    if lib is None:
        return None
    try:
        raw = ctypes.c_void_p(graph.raw_cuda_graph())
        n = ctypes.c_size_t(0)
        if lib.cuGraphGetNodes(raw, None, ctypes.byref(n)) != 0:
            return None
        nodes = (ctypes.c_void_p * n.value)()
        if lib.cuGraphGetNodes(raw, nodes, ctypes.byref(n)) != 0:
            return None
        kind = ctypes.c_int(0)
        count = 0
        for node in nodes:
            if lib.cuGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(kind)) == 0 and kind.value == _CU_GRAPH_NODE_TYPE_KERNEL:
                count += 1
        return count
    except Exception:
        return None


def eager_kernels(fn) -> int | None:
    """Kernels one eager call of ``fn`` launches, counted by the profiler (capture-time only)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:
        return None
