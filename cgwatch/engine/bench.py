"""Where ``cgwatch bench`` measures: eager vs CUDA graph (vs torch.compile) per batch size, on the
real engine.

One ``Engine`` (model, static KV cache, every batch size captured in one shared pool, each graph
checked against eager). ``--batch-sizes`` b requests sit in slots 0..b-1, prefilled with a
``prompt_len``-token prompt, and each mode decodes them from the same saved state:

- latency: ``warmup`` steps, then ``steps`` timed ones, each through ``Engine.step`` -- the step
  records, NVTX ranges and CUDA-event GPU times are the engine's own. Mean / median / P99 of the
  step's GPU time (on the CPU: its host time), and the median host launch time.
- throughput: ``tokens`` consecutive steps, synchronised at both ends: b * tokens / wall seconds.
- kernels per step: the captured graph's kernel nodes; eager: kernels one step launches (profiler).
- GPU gap: the median ``gap_us`` of the timed steps (the GPU idle between back-to-back steps).
- cgwatch's own cost per graph step (``overhead_pct``): ``tokens`` steps through the engine's loop
  against the same graph replayed ``tokens`` times alone (``Engine.replay_bare``), each from the same
  saved state (so the same positions: a decode step's attention grows with them), synchronised at both
  ends, in OWN_COST_ROUNDS alternating rounds: 100 * (median loop / median bare - 1), with
  ``loop_ms`` / ``bare_ms`` per step. probes/bench_overhead.py's method, on every rank at N > 1.
- ``with_compile``: ``DecodeState.decode`` under ``torch.compile(mode="reduce-overhead")`` (inductor
  fuses, then cudagraph trees record a graph per shape), timed the same way with CUDA events around
  each call; its first call per batch size (compile + record) is reported as compile seconds.
- HBM floor: (weight bytes + the KV bytes a step must read at the mean context) / the measured
  copy bandwidth (measure/bandwidth.py). The fused attention reads exactly that KV (each row's live
  positions); the plain one reads every row's whole cache row (``max_seq`` positions).
- kernels: each mode runs with the plain PyTorch kernels (``eager``, ``graph``: the seed's
  eager-vs-graph comparison) and with the fused Triton kernels (``eager_fused``, ``graph_fused``,
  engine/kernels.py), the same weights and GEMMs; ``--kernels`` picks which. Fused needs CUDA and
  Triton: without them the bench runs plain only and says why (``kernels_why``).

With ``tensor_parallel_size`` N > 1 the engine runs N ranks (engine/loop.py): the bench drives them
through ``Engine.call_all`` (prefill, save / restore the state, drain) and ``Engine.step``, so every
rank runs the same work; each row also has ``allreduce_pct`` (the share of the step's kernel time in
NCCL kernels, from the profiler over a few steps on rank 0; on the CPU the share of host time in gloo
all-reduces) and ``plan_us_p50`` (rank 0's host time per step for the plan exchange, cgwatch's own
cost of N ranks). The eager kernel count and torch.compile are one-rank only.

All records go to ``emit`` (a trace file: ``report``, ``replay`` and ``recommend --costs`` read it);
phase boundaries are marks, and the end record carries the result rows.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cgwatch import records as R
from cgwatch.engine import kernels as K
from cgwatch.engine.bench_base import BenchBase, latency_stats
from cgwatch.engine.control import Command
from cgwatch.engine.loop import Engine, EngineConfig, resolve_device
from cgwatch.errors import CgwatchError
from cgwatch.measure import graph_stats
from cgwatch.measure.bandwidth import copy_bandwidth
from cgwatch.workload import StepPlan, WorkloadSpec


OWN_COST_ROUNDS = 5   # loop / bare rounds of cgwatch's own cost per graph step (medians)


@dataclass
class BenchConfig:
    model: str = "tiny"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    steps: int = 100          # timed steps per batch size and mode
    warmup: int = 10
    tokens: int = 128         # decode length of the throughput run
    prompt_len: int = 32
    max_seq: int = 1024
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    with_compile: bool = False
    nvtx: bool = True
    tensor_parallel_size: int = 1
    modes: tuple[str, ...] = field(default=("eager", "graph"))
    kernels: tuple[str, ...] = ("plain", "fused")   # fused is skipped (with why) where it cannot run

    def describe(self) -> dict:
        """The header's ``bench`` (both backends' benches): the config, tuples as lists."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


class FixedSlots:
    """The bench's workload: the same ``batch`` slots every step, nobody joins or leaves.
    Duck-types the parts of ``workload.Workload`` the engine reads."""

    kind, rate, live, queued = "bench", 0.0, 0, 0

    def __init__(self, max_batch: int) -> None:
        self.max_batch, self.batch, self._step = max_batch, 1, 0

    def next_step(self) -> StepPlan:
        self._step += 1
        return StepPlan(self._step - 1, 0, [], [], list(range(self.batch)))

    def set_rate(self, rate: float) -> None:
        raise CgwatchError("the bench workload has no arrival rate")

    def describe(self) -> dict:
        return {"arrival": "bench", "kind": "bench", "max_concurrency": self.max_batch}


def check_config(c: BenchConfig) -> None:
    if not c.batch_sizes or min(c.batch_sizes) < 1:
        raise CgwatchError("--batch-sizes must be integers >= 1")
    for name in ("steps", "tokens", "prompt_len"):
        if getattr(c, name) < 1:
            raise CgwatchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
    if c.warmup < 0:
        raise CgwatchError(f"--warmup must be >= 0, got {c.warmup}")
    if c.tensor_parallel_size < 1:
        raise CgwatchError(f"--tensor-parallel-size must be >= 1, got {c.tensor_parallel_size}")
    if not c.kernels or any(k not in ("plain", "fused") for k in c.kernels):
        raise CgwatchError(f"--kernels must list plain and/or fused, got {','.join(c.kernels) or 'nothing'}")
    resolve_device(c.device, 0, c.tensor_parallel_size)   # a bad --device: one line, as in cgwatch run
    if c.with_compile and c.tensor_parallel_size > 1:
        raise CgwatchError("--with-compile runs one rank: leave out --tensor-parallel-size")
    need = c.prompt_len + max(c.warmup + c.steps, c.tokens) + 1
    if need > c.max_seq:
        raise CgwatchError(f"--max-seq {c.max_seq} is too short: prompt {c.prompt_len} + "
                           f"max(warmup + steps, tokens) needs {need} positions")


class Bench(BenchBase):
    def __init__(self, cfg: BenchConfig, emit: Callable[[dict], None]):
        check_config(cfg)
        self.cfg = cfg
        tap = self._tap(emit)   # self.steps: every step record, for the statistics

        sizes = tuple(sorted(set(cfg.batch_sizes)))
        self.sizes = sizes
        self.max_batch = sizes[-1]
        probe = resolve_device(cfg.device, 0, cfg.tensor_parallel_size)
        ecfg = EngineConfig(model=cfg.model, device=cfg.device, dtype=cfg.dtype, max_seq=cfg.max_seq,
                            capture_sizes=sizes, max_padding_ratio=0.0,
                            mode="graph" if probe.type == "cuda" else "eager", seed=cfg.seed, nvtx=cfg.nvtx,
                            kernels="auto" if cfg.kernels[0] == "fused" else "plain",
                            tensor_parallel_size=cfg.tensor_parallel_size,
                            workload=WorkloadSpec(arrival=f"fixed:{self.max_batch}", max_concurrency=self.max_batch,
                                                  max_seq=cfg.max_seq, seed=cfg.seed))
        self.engine = eng = Engine(ecfg, tap)
        eng.workload = self.slots = FixedSlots(self.max_batch)
        self.cuda = eng.cuda
        self.kernels_why = K.unavailable(eng.device, eng.dtype) if "fused" in cfg.kernels else None
        self.kinds = [k for k in dict.fromkeys(cfg.kernels) if k == "plain" or not self.kernels_why]
        if not self.kinds:
            eng.close()
            raise CgwatchError(f"--kernels fused: {self.kernels_why}")

    def header(self) -> dict:
        return self.engine.header() | {"bench": self.cfg.describe()}

    # -- the run ---------------------------------------------------------------------------------
    def run(self, progress: Callable[[str], None] = lambda s: None) -> dict:
        eng, cfg = self.engine, self.cfg
        with torch.inference_mode():
            eng.start()   # captures every size (graph mode on CUDA)
            bandwidth = copy_bandwidth(eng.device)
            # the same prompts for every mode and batch size
            eng.call_all("prefill_slots", list(range(self.max_batch)), cfg.prompt_len)
            self._sync()
            eng.call_all("save_state")
            saved = eng._saved_state   # (torch.compile restores it itself: one rank)
            rows = {b: {"batch": b} for b in self.sizes}
            for kind in self.kinds:
                self._set_kernels(kind)
                for b in self.sizes:
                    self.slots.batch = b
                    for mode in cfg.modes:
                        key = mode if kind == "plain" else f"{mode}_fused"
                        if mode == "graph" and not self.cuda:
                            rows[b][key] = None
                            continue
                        progress(f"batch {b}: {mode} ({kind} kernels)")
                        rows[b][key] = self._measure_engine(b, mode, saved)
            if cfg.with_compile:
                self._set_kernels("plain")   # torch.compile of the plain step (inductor fuses it itself)
                compiled = self._compiled() if self.cuda else None
                for b in self.sizes:
                    progress(f"batch {b}: compile")
                    rows[b]["compile"] = self._measure_compiled(b, compiled, saved) if compiled else \
                        {"error": "torch.compile reduce-overhead needs CUDA"}
            for row in rows.values():
                row["floor_ms"] = self._floor_ms(row["batch"], bandwidth)
                eng.emit(R.event(R.EV_INFO, eng.now(), message=f"bench batch {row['batch']}: " + _row_text(row),
                                 bench=row))
            rows = list(rows.values())
            eng.call_all("restore_state")
        return {"rows": rows, "kernels": self.kinds, "kernels_why": self.kernels_why,
                "tensor_parallel_size": cfg.tensor_parallel_size, "bandwidth_bytes_per_s": bandwidth, "model": eng.model_info,
                "device": str(eng.device), "dtype": str(eng.dtype).removeprefix("torch."),
                "gpu": eng.header()["gpu"], "torch": torch.__version__, "max_seq": cfg.max_seq,
                "prompt_len": cfg.prompt_len, "steps": cfg.steps, "warmup": cfg.warmup, "tokens": cfg.tokens}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _set_mode(self, mode: str) -> None:
        eng = self.engine
        if ("graph" if eng.graph_mode else "eager") != mode:
            eng._apply(Command("mode", mode))

    def _set_kernels(self, kind: str) -> None:
        if self.engine.kernels != kind:
            self.engine._apply(Command("kernels", kind))   # every rank; graphs are captured again

    def _measure_engine(self, b: int, mode: str, saved) -> dict:
        """Latency and throughput of batch ``b`` in ``mode``, through the engine's own step."""
        eng, cfg = self.engine, self.cfg
        self._set_mode(mode)
        eng.call_all("restore_state")
        for _ in range(cfg.warmup):
            eng.step()
        eng.call_all("_drain")
        self._mark(f"bench b={b} {mode}: {cfg.steps} timed steps")
        first = len(self.steps)
        for _ in range(cfg.steps):
            eng.step()
        eng.call_all("_drain")
        timed = [r for r in self.steps[first:] if r["batch"] == b]
        out = latency_stats([R.step_ms(r) for r in timed])
        out["host_us_p50"] = statistics.median(r["host_us"] for r in timed)
        gaps = [r["gap_us"] for r in timed if r.get("gap_us") is not None]
        out["gap_us_p50"] = statistics.median(gaps) if gaps else None   # GPU idle between steps
        out["served"] = sorted({r["mode"] for r in timed})   # a failed capture falls back to eager
        out["kernels"] = self._kernels(b, mode)
        if mode == "graph":
            g = eng.graphs.graphs.get(b)
            out["capture_s"] = g.capture_s if g else None
        if cfg.tensor_parallel_size > 1:
            plans = [r["plan_us"] for r in timed if r.get("plan_us") is not None]
            out["plan_us_p50"] = statistics.median(plans) if plans else None
            skews = [r["skew_ms"] for r in timed if r.get("skew_ms") is not None]
            out["skew_ms_p50"] = statistics.median(skews) if skews else None
            eng.call_all("restore_state")
            out["allreduce_pct"] = self._allreduce_pct()
        eng.call_all("restore_state")
        self._mark(f"bench b={b} {mode}: {cfg.tokens}-token throughput")
        self._sync()
        t0 = time.perf_counter()
        for _ in range(cfg.tokens):
            eng.step()
        self._sync()
        wall = time.perf_counter() - t0
        eng.call_all("_drain")
        out["tokens_per_s"] = b * cfg.tokens / wall
        if mode == "graph" and b in eng.graphs.ok_sizes():
            out.update(self._own_cost(b))
        return out

    def _own_cost(self, b: int) -> dict:
        """cgwatch's own cost per graph step of batch ``b`` (the module docstring)."""
        eng, n = self.engine, self.cfg.tokens
        runs = {"loop": lambda: [eng.step() for _ in range(n)], "bare": lambda: eng.call_all("replay_bare", b, n)}
        ms: dict[str, list[float]] = {"loop": [], "bare": []}
        for _ in range(OWN_COST_ROUNDS):
            for kind, run in runs.items():
                eng.call_all("restore_state")
                self._sync()
                t0 = time.perf_counter()
                run()
                self._sync()
                ms[kind].append((time.perf_counter() - t0) * 1e3 / n)
                eng.call_all("_drain")
        loop, bare = statistics.median(ms["loop"]), statistics.median(ms["bare"])
        return {"loop_ms": loop, "bare_ms": bare, "overhead_pct": 100 * (loop / bare - 1)}

    def _allreduce_pct(self, steps: int = 5) -> float | None:
        """The share of a step in all-reduce, from the profiler over ``steps`` steps on rank 0: NCCL
        kernels over all kernels (CUDA), gloo all-reduce over the steps' host time (CPU)."""
        from torch.profiler import ProfilerActivity, profile
        eng = self.engine
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            with profile(activities=acts) as prof:
                t0 = time.perf_counter()
                for _ in range(steps):
                    eng.step()
                self._sync()
                wall_us = (time.perf_counter() - t0) * 1e6
            eng.call_all("_drain")
            events = prof.events()
        except Exception:   # a profiler that cannot run here: n/a, the bench goes on
            return None
        if self.cuda:
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            total = sum(e.device_time for e in kernels)
            nccl = sum(e.device_time for e in kernels if "nccl" in e.name.lower())
            return 100.0 * nccl / total if total else None
        ar = sum(e.cpu_time_total for e in events if "all_reduce" in e.name and e.name.startswith("gloo"))
        return 100.0 * ar / wall_us if wall_us else None

    def _kernels(self, b: int, mode: str) -> int | None:
        eng = self.engine
        if not self.cuda:
            return None
        if mode == "graph":
            g = eng.graphs.graphs.get(b)
            return g.kernels if g and g.ok else None
        if eng.ranks is not None:
            return None   # an eager decode on rank 0 alone would wait for the others' all-reduces
        snap = eng.state.snapshot()
        n = graph_stats.eager_kernels(lambda: eng.state.decode(b))
        eng.state.restore(snap)
        return n

    # -- torch.compile ---------------------------------------------------------------------------
    def _compiled(self):
        st = self.engine.state
        for t in (st.next_token, st.pos, st.slot_buf):   # mutated in place: static addresses for
            torch._dynamo.mark_static_address(t)          # cudagraph trees (else it skips graphs)
        return torch.compile(st.decode, mode="reduce-overhead")

    def _measure_compiled(self, b: int, compiled, saved) -> dict:
        cfg, st = self.cfg, self.engine.state
        from torch._dynamo.utils import counters
        skips0 = counters["inductor"]["cudagraph_skips"]
        st.restore(saved)
        st.set_slots(list(range(b)), b)

        def call():
            torch.compiler.cudagraph_mark_step_begin()
            compiled(b)

        self._mark(f"bench b={b} compile: first call (compile + record)")
        self._sync()
        t0 = time.perf_counter()
        try:
            call()
            self._sync()
        except Exception as e:   # inductor / dynamo failure: reported, the bench goes on
            first = (str(e).strip().splitlines() or [""])[0][:200]
            return {"error": f"{type(e).__name__}: {first}"}
        compile_s = time.perf_counter() - t0
        for _ in range(cfg.warmup):
            call()
        st.restore(saved)
        self._mark(f"bench b={b} compile: {cfg.steps} timed calls")
        pairs, host = [], []
        for _ in range(cfg.steps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            h = time.perf_counter()
            s.record()
            call()
            e.record()
            host.append((time.perf_counter() - h) * 1e6)
            pairs.append((s, e))
        self._sync()
        out = latency_stats([s.elapsed_time(e) for s, e in pairs])
        out["host_us_p50"] = statistics.median(host)
        st.restore(saved)
        self._sync()
        t0 = time.perf_counter()
        for _ in range(cfg.tokens):
            call()
        self._sync()
        out["tokens_per_s"] = b * cfg.tokens / (time.perf_counter() - t0)
        out["compile_s"] = compile_s
        out["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips0
        snap = st.snapshot()
        out["kernels"] = graph_stats.eager_kernels(call)   # the profiler (CUPTI) sees the kernels a
        st.restore(snap)                                    # replayed graph runs (H100: 120-137 on tiny)
        st.restore(saved)
        return out

    # -- HBM floor -------------------------------------------------------------------------------
    def _floor_ms(self, b: int, bandwidth: float | None) -> float | None:
        if not bandwidth:
            return None
        m = self.engine.model
        weights = sum(p.numel() * p.element_size() for p in m.parameters())
        ctx = self.cfg.prompt_len + self.cfg.warmup + self.cfg.steps / 2   # mean position while timed
        return hbm_floor_ms(m.args, m.embed_tokens.weight.element_size(), b, ctx, bandwidth, weights, m.tp_size)


def hbm_floor_ms(a, elt: int, b: int, ctx: float, bandwidth: float, weight_bytes: int | None = None,
                 tp_size: int = 1) -> float:
    """The least time a decode step of batch b can take: (weights + KV at context ``ctx``) / bandwidth.
    ``weight_bytes``: the model's parameter bytes (None: from the shapes, ``a.n_params()``); with
    tensor parallelism, one rank's (its shards and the replicated layers) and its share of the KV."""
    weights = a.n_params() * elt if weight_bytes is None else weight_bytes
    # a step gathers b rows of the embedding table, so it is not read in full -- unless it is
    # also the lm_head (tied), which reads all of it; parameters() counts a tied table once
    weights -= 0 if a.tie_embeddings else a.vocab_size * a.dim * elt
    kv = b * a.n_layers * 2 * (a.n_kv_heads // tp_size) * a.head_dim * ctx * elt
    return (weights + kv) / bandwidth * 1e3


def _row_text(row: dict) -> str:
    parts = []
    for mode in ("eager", "graph", "eager_fused", "graph_fused", "compile"):
        m = row.get(mode)
        if m and "p50_ms" in m:
            parts.append(f"{mode} {m['p50_ms']:.3f} ms")
    return ", ".join(parts) or "n/a"
