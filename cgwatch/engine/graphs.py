"""Where graphs are captured, checked, measured, replayed and released: one graph per batch-size bucket.

Capture follows vLLM/SGLang: warm up on a side stream, capture largest bucket first into one shared
memory pool so smaller graphs reuse the big graph's blocks (``pool="private"`` gives each graph its own
pool, for comparison). A bucket whose capture fails is disabled with its cause; the others go on.
Each graph is checked against eager on the same inputs right after capture.

With tensor parallelism every rank captures the same buckets in the same order (the all-reduces are
inside the graphs). ``ranks`` (engine/ranks.py) settles each bucket before its check: a bucket that
failed on any rank is disabled on every rank, its cause the failing rank's (``failed_rank``); then
every rank checks its graph and the per-rank measures go to rank 0 for the capture event (``ranks``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cgwatch import capture_errors
from cgwatch.engine.step import DecodeState
from cgwatch.measure import graph_stats
from cgwatch.measure.nvml import Nvml
from cgwatch.nvtx_ranges import Nvtx

WARMUP_ITERS = 2


@dataclass
class BucketGraph:
    size: int
    ok: bool
    graph: torch.cuda.CUDAGraph | None = None
    capture_s: float = 0.0
    compile_s: float | None = None   # the first warm-up call less the second: JIT compile (Triton) and
                                     # lazy init this bucket caused; ~0 when the kernels were cached
    pool_bytes: int | None = None    # allocator segments this capture added (shared) / its pool (private)
    nvml_bytes: int | None = None    # NVML used-memory delta across the capture (driver-side memory too)
    kernels: int | None = None       # kernel nodes in the graph
    check: dict | None = None        # {"tokens_equal": bool, "rel_err": float}
    cause: str | None = None
    hint: str | None = None
    error: str | None = None
    outputs: tuple = field(default=(), repr=False)
    failed_rank: int | None = None   # tensor parallelism: the rank whose capture failed
    ranks: list | None = None        # tensor parallelism: every rank's rank_fields(), on rank 0

    def event_fields(self) -> dict:
        out = {"bucket": self.size, "ok": self.ok, "capture_s": round(self.capture_s, 4),
               "compile_s": None if self.compile_s is None else round(self.compile_s, 4),
               "pool_bytes": self.pool_bytes, "nvml_bytes": self.nvml_bytes, "kernels": self.kernels,
               "check": self.check, "cause": self.cause, "hint": self.hint, "error": self.error}
        if self.ranks is not None:
            out |= {"failed_rank": self.failed_rank, "ranks": self.ranks}
        return out

    def rank_fields(self) -> dict:
        """What one rank measured of its capture (an entry of the capture event's ``ranks``)."""
        return {"ok": self.ok, "capture_s": round(self.capture_s, 4), "pool_bytes": self.pool_bytes,
                "nvml_bytes": self.nvml_bytes, "kernels": self.kernels, "check": self.check,
                "cause": self.cause, "error": self.error}


class _InjectedFault(Exception):
    pass


class GraphManager:
    def __init__(self, state: DecodeState, nvml: Nvml, nvtx: Nvtx, pool: str = "shared",
                 fail_buckets: tuple[int, ...] = (), ranks=None):
        if pool not in ("shared", "private"):
            raise ValueError(pool)
        self.state, self.nvml, self.nvtx, self.pool_mode = state, nvml, nvtx, pool
        self.ranks = ranks                      # engine/ranks.Ranks with tensor parallelism, else None
        self.fail_buckets = set(fail_buckets)   # fault injection: these captures hit a real host sync
        self.graphs: dict[int, BucketGraph] = {}
        self.pool = None
        self.pools: list = []
        # One capture stream for every capture: the allocator reuses a freed block only on the stream
        # it was allocated on, so a stream per capture would defeat the shared pool.
        self.stream = torch.cuda.Stream()

    # -- capture -------------------------------------------------------------------------------
    def capture(self, sizes: list[int], on_bucket: Callable[[BucketGraph], None] = lambda b: None,
                largest_first: bool = True) -> dict:
        """Capture every size, largest first (as vLLM and SGLang do: smaller graphs then reuse the
        larger ones' blocks in a shared pool; ``largest_first=False`` is for probes/graph_memory.py).
        Returns the round's summary (for a capture_done event)."""
        t0 = time.perf_counter()
        self.pool = torch.cuda.graph_pool_handle() if self.pool_mode == "shared" else None
        self.pools = [self.pool] if self.pool is not None else []
        snap = self.state.snapshot()
        with torch.inference_mode():
            for size in sorted(sizes, reverse=largest_first):
                b = self._capture_graph(size, snap)
                local_failed = not b.ok
                mine = b.rank_fields()             # this rank's own outcome, before the agreement
                if self.ranks is not None:
                    b = self._settle(b)
                if b.ok:
                    b.check = mine["check"] = self._check(b, snap)
                if self.ranks is not None:
                    rows = self.ranks.all_gather(mine)
                    b.ranks = [{"rank": r, **row} for r, row in enumerate(rows)]
                self.graphs[size] = b
                on_bucket(b)
                if local_failed and self.pool is not None:
                    # A failed capture leaves the pool marked as recording (torch skips the
                    # allocators' end-of-capture bookkeeping when cudaStreamEndCapture fails), and
                    # every later capture into it would fail: go on in a fresh pool and stream.
                    self.pool = torch.cuda.graph_pool_handle()
                    self.pools.append(self.pool)
                    self.stream = torch.cuda.Stream()
        self.state.restore(snap)
        torch.cuda.synchronize()
        compile_s = [self.graphs[s].compile_s for s in sizes if self.graphs[s].compile_s is not None]
        return {"sizes": self.ok_sizes(), "failed": self.failed_sizes(), "pool": self.pool_mode, "pools": len(self.pools) or None,
                "pool_bytes": self.total_pool_bytes(), "seconds": round(time.perf_counter() - t0, 4),
                "compile_s": round(sum(compile_s), 4) if compile_s else None}

    def _capture_one(self, size: int, snap) -> BucketGraph:
        """One bucket captured and checked (one rank)."""
        b = self._capture_graph(size, snap)
        if b.ok:
            b.check = self._check(b, snap)
        return b

    def _settle(self, b: BucketGraph) -> BucketGraph:
        """Agree with the other ranks: a bucket that failed on any rank is disabled on this one too."""
        rank, cause, hint, error = self.ranks.settle_capture(b.ok, b.cause, b.hint, b.error)
        if rank is None:
            return b
        if b.ok:
            b.graph.reset()
            b.graph, b.outputs, b.ok = None, (), False
        b.failed_rank = rank
        if rank != self.ranks.rank or b.cause is None:
            b.cause, b.hint, b.error = cause, hint, error
        return b

    def _capture_graph(self, size: int, snap) -> BucketGraph:
        st = self.state
        st.set_slots(list(range(min(size, st.scratch))), size)
        torch.cuda.synchronize()
        pool_before = graph_stats.pool_bytes(self.pool) if self.pool is not None else 0
        t0 = time.perf_counter()
        warm: list[float] = []
        try:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                for _ in range(WARMUP_ITERS):
                    w = time.perf_counter()
                    st.restore(snap)
                    st.decode(size)
                    self.stream.synchronize()
                    warm.append(time.perf_counter() - w)
            torch.cuda.current_stream().wait_stream(self.stream)
            st.restore(snap)
            torch.cuda.synchronize()
            nvml_before = self.nvml.used_bytes()   # after warm-up: its allocations are not graph memory
            graph = _new_graph()
            with self.nvtx.range(f"capture_b{size}"):
                outputs = self._capture_into(graph, size)
            if hasattr(graph, "instantiate"):
                graph.instantiate()   # keep_graph=True defers it to the first replay; count it here
            torch.cuda.synchronize()
        except Exception as exc:  # capture failed: disable this bucket, keep going
            torch.cuda.synchronize()
            cause, hint = capture_errors.classify(exc)
            return BucketGraph(size, ok=False, capture_s=time.perf_counter() - t0, cause=cause, hint=hint,
                               error=capture_errors.first_line(exc), compile_s=_compile_s(warm))
        capture_s = time.perf_counter() - t0
        b = BucketGraph(size, ok=True, graph=graph, capture_s=capture_s, outputs=outputs, compile_s=_compile_s(warm))
        pool_after = graph_stats.pool_bytes(graph.pool())
        if self.pool_mode == "shared":
            b.pool_bytes = None if pool_after is None or pool_before is None else pool_after - pool_before
        else:
            b.pool_bytes = pool_after
        nvml_after = self.nvml.used_bytes()
        b.nvml_bytes = None if nvml_after is None or nvml_before is None else nvml_after - nvml_before
        b.kernels = graph_stats.kernel_nodes(graph)
        return b

    def _capture_into(self, graph: torch.cuda.CUDAGraph, size: int):
        """Capture one step on the capture stream. Unlike ``torch.cuda.graph``, a failure here leaves no
        stream switched and no allocator routing into the pool, so the next bucket captures cleanly."""
        st = self.state
        stream = self.stream
        prev = torch.cuda.current_stream()
        stream.wait_stream(prev)
        try:
            with torch.cuda.stream(stream):
                pool = self.pool if self.pool is not None else torch.cuda.graph_pool_handle()
                _clear_cublas_workspaces()   # so the capture allocates its workspace in the pool
                graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                try:
                    outputs = st.decode(size)
                    if size in self.fail_buckets:
                        outputs[1].sum().item()   # injected fault: a real host sync inside capture
                finally:
                    try:
                        graph.capture_end()
                    except Exception:
                        _end_allocate_to_pool(pool)
                        raise
        finally:
            prev.wait_stream(stream)
        return outputs

    def _check(self, b: BucketGraph, snap) -> dict:
        """Replay vs eager on the same inputs: greedy tokens equal? relative error of the logits."""
        st = self.state
        st.restore(snap)
        eager_logits = st.decode(b.size)[0].clone()
        st.restore(snap)
        b.graph.replay()
        graph_logits = b.outputs[0]
        rel = (graph_logits - eager_logits).norm() / eager_logits.norm().clamp_min(1e-30)
        equal = torch.equal(graph_logits.argmax(-1), eager_logits.argmax(-1))
        st.restore(snap)
        return {"tokens_equal": bool(equal), "rel_err": float(rel)}

    # -- use -----------------------------------------------------------------------------------
    def replay(self, size: int) -> None:
        self.graphs[size].graph.replay()

    def ok_sizes(self) -> list[int]:
        return sorted(s for s, b in self.graphs.items() if b.ok)

    def failed_sizes(self) -> list[int]:
        return sorted(s for s, b in self.graphs.items() if not b.ok)

    def total_pool_bytes(self) -> int | None:
        if not self.graphs:
            return 0
        if self.pool_mode == "shared":
            sizes = [graph_stats.pool_bytes(p) for p in self.pools]
            return None if any(s is None for s in sizes) else sum(sizes)
        sizes = [b.pool_bytes for b in self.graphs.values() if b.ok]
        return None if any(s is None for s in sizes) else sum(sizes)

    def release(self) -> tuple[int, int | None]:
        """Drop every graph and its pool. Returns (freed, pool): ``freed`` is how far torch's reserved
        memory fell across the release and ``empty_cache()``, so it counts every cached block the
        allocator gave back to the driver, not only the pool's (400 MiB against a 134 MiB pool on the
        H100 sample); ``pool`` is the graphs' pool, as ``total_pool_bytes`` measured it (None if unknown)."""
        torch.cuda.synchronize()
        pool = self.total_pool_bytes()
        before = torch.cuda.memory_reserved()
        for b in self.graphs.values():
            if b.graph is not None:
                b.graph.reset()
            b.graph, b.outputs = None, ()
        self.graphs.clear()
        self.pool, self.pools = None, []
        torch.cuda.empty_cache()
        return before - torch.cuda.memory_reserved(), pool


def _compile_s(warm: list[float]) -> float | None:
    return max(0.0, warm[0] - warm[-1]) if len(warm) >= 2 else None


def _clear_cublas_workspaces() -> None:
    """Drop torch's cached cuBLAS workspaces, so the next capture allocates its own inside the graph
    pool. A captured GEMM keeps the raw address of the workspace it used; left as it is, that is the
    workspace the warm-up cached for the capture stream, in the ordinary allocator, and anything that
    clears the cache later (torch.compile's cudagraph trees do, on every record) followed by
    ``empty_cache`` unmaps it: the next replay faults with an illegal memory access (H100, llama-1b;
    probes/workspace_lifetime.py). Inside the pool, the workspace lives as long as the graphs."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def _end_allocate_to_pool(pool) -> None:
    """A capture_end that raised skipped the allocator's endAllocateToPool: do it here, or every
    later capture into the pool fails with 'already recording to mempool_id'."""
    try:
        torch._C._cuda_endAllocateToPool(torch.cuda.current_device(), pool)
    except Exception:
        pass   # an older torch without the binding: the next capture reports its own error


def _new_graph() -> torch.cuda.CUDAGraph:
    try:
        return torch.cuda.CUDAGraph(keep_graph=True)   # keeps the cudaGraph_t so kernels can be counted
    except TypeError:                                  # older torch
        return torch.cuda.CUDAGraph()
