"""Where ``cgwatch bench --backend vllm`` measures: the seed's table (eager vs graph step latency and
throughput per batch size) on a real vLLM engine, in the same result rows as cgwatch's own bench
(engine/bench.py), so bench.py prints and records both alike.

One ``VllmEngine`` per mode (graph with ``--batch-sizes`` as vLLM's capture sizes, then a restart in
eager mode, ``enforce_eager``). For each batch size b: b requests join with a ``prompt_len``-token
prompt (prefill forwards are not timed), then ``warmup`` decode forwards, then ``steps`` timed ones,
then ``tokens`` forwards for throughput; then they are aborted. Every forward goes through
``VllmEngine.step``, so the records (FULL / PIECEWISE / eager, padding, GPU time) are the ones the
daemon and the report see. Latency = the forward's GPU time (CUDA events around the model runner's
forward and sampling, vllm_timing.py), or its engine-step wall time where that is n/a; the
engine-step wall p50 is in ``wall_p50_ms`` (what vLLM's own benchmarks time). Throughput = b x
tokens / wall seconds of those forwards.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from cgwatch import records as R
from cgwatch.engine.bench_base import BenchBase, latency_stats
from cgwatch.errors import CgwatchError
from cgwatch.workload import Admit, StepPlan, WorkloadSpec

MAX_PREFILL_STEPS = 64   # forwards to wait for b requests to reach pure decode


class BenchRequests:
    """The bench's workload for the vLLM engine: b requests join at once, nobody leaves until told.
    Duck-types the parts of ``workload.Workload`` the engine reads."""

    kind, rate, queued = "bench", 0.0, 0

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.live: int = 0
        self._admit: list[Admit] = []
        self._finish: list[int] = []
        self._step = self._next_id = 0

    def join(self, b: int, prompt_len: int, output_len: int) -> None:
        self._admit = [Admit(self._next_id + k, k, prompt_len, output_len) for k in range(b)]
        self._next_id += b
        self.live = b

    def leave_all(self) -> None:
        self._finish, self.live = list(range(self.live)), 0

    def next_step(self) -> StepPlan:
        plan = StepPlan(self._step, 0, self._finish, self._admit, list(range(self.live)))
        self._step += 1
        self._admit, self._finish = [], []
        return plan

    def set_rate(self, rate: float) -> None:
        raise CgwatchError("the bench workload has no arrival rate")

    def describe(self) -> dict:
        return {"arrival": "bench", "kind": "bench", "max_concurrency": self.max_batch}


class VllmBench(BenchBase):
    """Same interface as engine/bench.py's Bench: header(), run(progress) -> result, close(), now(), engine."""

    def __init__(self, cfg, emit: Callable[[dict], None], vllm_options: dict | None = None):
        from cgwatch.backends.vllm_config import VllmEngineConfig
        from cgwatch.engine.bench import check_config

        check_config(cfg)
        self.cfg = cfg
        tap = self._tap(emit)   # self.steps: every step record, for the statistics

        self.sizes = tuple(sorted(set(cfg.batch_sizes)))
        self.bandwidth = self._bandwidth()     # before vLLM takes most of the GPU's memory
        opts = dict(vllm_options or {})
        self.vcfg = VllmEngineConfig(
            model=cfg.model, dtype=cfg.dtype, max_seq=cfg.max_seq, capture_sizes=self.sizes,
            mode="eager" if cfg.modes[:1] == ("eager",) else "graph",
            seed=cfg.seed, max_num_seqs=max(self.sizes), temperature=0.0,
            workload=WorkloadSpec(arrival=f"fixed:{max(self.sizes)}", max_concurrency=max(self.sizes),
                                  max_seq=cfg.max_seq, seed=cfg.seed), **opts)
        from cgwatch.backends.vllm_engine import VllmEngine
        self.engine = VllmEngine(self.vcfg, tap)
        self.requests = BenchRequests(max(self.sizes))
        self.engine.workload = self.requests

    @staticmethod
    def _bandwidth() -> float | None:
        import torch
        from cgwatch.measure.bandwidth import copy_bandwidth
        if not torch.cuda.is_available():
            return None
        bw = copy_bandwidth(torch.device("cuda", torch.cuda.current_device()))
        torch.cuda.empty_cache()
        return bw

    def header(self) -> dict:
        return self.engine.header() | {"bench": self.cfg.describe() | {"backend": "vllm"}}

    def run(self, progress: Callable[[str], None] = lambda s: None) -> dict:
        from cgwatch.engine.control import Command

        eng, cfg = self.engine, self.cfg
        eng.start()
        rows = {b: {"batch": b} for b in self.sizes}
        capture_s = eng.tap.seconds
        for mode in cfg.modes:
            if mode not in ("eager", "graph"):
                continue
            if (mode == "graph") != eng.graph_mode:
                progress(f"restarting vLLM in {mode} mode")
                eng._apply(Command("mode", mode))
                if (mode == "graph") != eng.graph_mode:
                    raise CgwatchError(f"vLLM did not restart in {mode} mode")
                if mode == "graph":
                    capture_s = eng.tap.seconds
            for b in self.sizes:
                progress(f"batch {b}: {mode}")
                rows[b][mode] = self._measure(b, mode)
                if mode == "graph":
                    rows[b][mode]["capture_s"] = None   # vLLM logs one total for all sizes: capture_total_s
        out_rows = []
        for b in self.sizes:
            row = rows[b]
            row["floor_ms"] = self._floor_ms(b)
            out_rows.append(row)
            eng.emit(R.event(R.EV_INFO, eng.now(), message=f"bench batch {b}: " + ", ".join(
                f"{m} {row[m]['p50_ms']:.3f} ms" for m in ("eager", "graph") if row.get(m) and "p50_ms" in row[m]),
                bench=row))
        h = eng.header()
        return {"rows": out_rows, "bandwidth_bytes_per_s": self.bandwidth, "model": h["model"] | {"name": cfg.model},
                "device": h["device"], "dtype": h["dtype"], "gpu": h["gpu"], "torch": h["torch"],
                "max_seq": cfg.max_seq, "prompt_len": cfg.prompt_len, "steps": cfg.steps, "warmup": cfg.warmup,
                "tokens": cfg.tokens, "backend": "vllm", "vllm": h.get("vllm"), "model_runner": h.get("model_runner"),
                "cudagraph_mode": h["config"].get("cudagraph_mode"), "capture_total_s": capture_s,
                "latency": "GPU time of each forward (CUDA events around vLLM's model runner), else engine-step wall"}

    def _decode_steps(self, n: int, b: int) -> tuple[list[dict], float]:
        """Run ``n`` forwards; the decode records of batch b among them, and the wall seconds."""
        first = len(self.steps)
        t0 = time.perf_counter()
        for _ in range(n):
            self.engine.step()
        wall = time.perf_counter() - t0
        recs = [r for r in self.steps[first:] if R.step_phase(r) == R.PHASE_DECODE and r["batch"] == b]
        return recs, wall

    def _measure(self, b: int, mode: str) -> dict:
        eng, cfg = self.engine, self.cfg
        self.requests.join(b, cfg.prompt_len, cfg.warmup + cfg.steps + cfg.tokens + MAX_PREFILL_STEPS)
        try:
            for _ in range(MAX_PREFILL_STEPS):       # prefill until all b decode together
                first = len(self.steps)
                eng.step()
                if any(R.step_phase(r) == R.PHASE_DECODE and r["batch"] == b for r in self.steps[first:]):
                    break
            else:
                return {"error": f"the {b} requests did not reach a pure decode batch in {MAX_PREFILL_STEPS} forwards"}
            self._decode_steps(cfg.warmup, b)
            self._mark(f"bench b={b} {mode}: {cfg.steps} timed steps")
            timed, _ = self._decode_steps(cfg.steps, b)
            if not timed:
                return {"error": f"no decode forward of batch {b} was recorded"}
            out = latency_stats([R.step_ms(r) for r in timed])
            out["wall_p50_ms"] = statistics.median(r["host_us"] for r in timed) / 1e3
            out["host_us_p50"] = statistics.median(r["host_us"] for r in timed)
            out["gpu_timed"] = sum(r["gpu_ms"] is not None for r in timed)
            out["gap_us_p50"] = None
            out["kernels"] = None
            out["served"] = sorted({R.step_runtime_mode(r) for r in timed})
            self._mark(f"bench b={b} {mode}: {cfg.tokens}-token throughput")
            _, wall = self._decode_steps(cfg.tokens, b)
            out["tokens_per_s"] = b * cfg.tokens / wall if wall > 0 else None
            return out
        finally:
            self.requests.leave_all()
            eng.step()                                # the aborts reach vLLM
            self.steps.clear()

    def _floor_ms(self, b: int) -> float | None:
        """The HBM floor of a decode step at batch b, for a cgwatch preset (same formula as engine/bench.py)."""
        from cgwatch.engine.bench import hbm_floor_ms
        from cgwatch.engine.model import PRESETS
        args = PRESETS.get(self.cfg.model)
        if args is None or not self.bandwidth:
            return None
        elt = 4 if self.engine.model_dtype == "float32" else 2
        ctx = self.cfg.prompt_len + self.cfg.warmup + self.cfg.steps / 2
        return hbm_floor_ms(args, elt, b, ctx, self.bandwidth)

