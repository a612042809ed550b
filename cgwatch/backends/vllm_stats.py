"""vLLM's per-step statistics -> cgwatch records: the stat logger vLLM calls, and the pure mapping.

vLLM (with ``cudagraph_metrics`` and ``enable_logging_iteration_details`` on) hands every stat logger,
once per engine step, a ``SchedulerStats`` whose

* ``cudagraph_stats`` is a ``CUDAGraphStat(num_unpadded_tokens, num_padded_tokens, num_paddings,
  runtime_mode)``: the tokens the forward computed, the capture size it was padded to, and the graph
  mode it ran (``"NONE"`` = eager, ``"PIECEWISE"``, ``"FULL"``);
* ``iteration_details`` says how many of those tokens were prompt ("context") tokens and how many
  were decode ("generation") tokens;

and an ``IterationStats`` whose ``num_generation_tokens`` counts the tokens the step produced.

Mapping (docs/VLLM.md has the full table): every forward is a ``step`` record (records.step), the
pure decode ones and the mixed prefill+decode ones (most forwards under chunked prefill) alike:

* ``batch`` = requests in the forward (prompt + decode requests), ``rows`` = tokens it computed
  (unpadded; > batch when prompt chunks or speculative drafts ride along), ``prompt_tokens``,
  ``phase`` = decode / mixed / prefill;
* ``runtime_mode`` = FULL / PIECEWISE / NONE, ``bucket`` = the padded token count when a graph ran
  (None on NONE), ``target`` = the smallest capture size >= rows, ``padded`` = bucket - rows;
* ``host_us`` = the engine step's wall time, ``gpu_ms`` = CUDA events around the model runner's
  forward (vllm_timing.py; None where not measured), ``tokens`` = tokens produced.

A hit is a forward a captured graph ran (FULL or PIECEWISE); the report keeps the two apart.

This module imports vllm only inside ``StatsCollector.logger_class()`` (vLLM calls it); the rest is
plain Python over duck-typed stat objects, testable without vLLM.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from cgwatch import records as R

# A decode step that vLLM's dispatcher ran eager although graphs are on and the batch is within the
# capture sizes (e.g. FULL_DECODE_ONLY on a batch it does not cover). An additive reason (TRACE_FORMAT).
REASON_VLLM_NO_GRAPH = R.REASON_VLLM_NO_GRAPH   # (the schema lives in records.py)
NONE_MODE = "NONE"   # str(vllm.config.CUDAGraphMode.NONE)


@dataclass(frozen=True)
class _Generated:
    num_generation_tokens: int


_NO_TOKENS = _Generated(0)


@dataclass(frozen=True)
class Iteration:
    """One vLLM engine step, as its stats describe it."""
    unpadded_tokens: int
    padded_tokens: int
    paddings: int
    runtime_mode: str                 # NONE | PIECEWISE | FULL
    ctx_requests: int | None = None   # None: iteration details were not reported
    ctx_tokens: int | None = None
    gen_requests: int | None = None
    gen_tokens: int | None = None
    generated: int | None = None      # tokens produced (IterationStats.num_generation_tokens)

    @property
    def is_prefill(self) -> bool:
        return bool(self.ctx_tokens)


def iteration_from_stats(scheduler_stats, iteration_stats=None) -> Iteration | None:
    """A ``SchedulerStats`` (+ optional ``IterationStats``) -> Iteration; None when the step carries no
    ``CUDAGraphStat`` (no forward ran, or the stats are of another kind) or is a dummy step."""
    cg = getattr(scheduler_stats, "cudagraph_stats", None)
    if cg is None:
        return None
    d = getattr(scheduler_stats, "iteration_details", None)
    if d is not None and getattr(d, "is_dummy", False):
        return None
    generated = getattr(iteration_stats, "num_generation_tokens", None) if iteration_stats is not None else None
    return Iteration(
        unpadded_tokens=int(cg.num_unpadded_tokens), padded_tokens=int(cg.num_padded_tokens),
        paddings=int(cg.num_paddings), runtime_mode=str(cg.runtime_mode),
        ctx_requests=None if d is None else int(d.num_ctx_requests),
        ctx_tokens=None if d is None else int(d.num_ctx_tokens),
        gen_requests=None if d is None else int(d.num_generation_requests),
        gen_tokens=None if d is None else int(d.num_generation_tokens),
        generated=None if generated is None else int(generated))


def target_for(sizes: list[int], batch: int) -> int | None:
    """The smallest capture size >= batch (sizes sorted); None above the largest or with none."""
    k = bisect.bisect_left(sizes, batch)
    return sizes[k] if k < len(sizes) else None


class StepMapper:
    """Iterations -> ``step`` / ``prefill`` records, given the capture sizes and mode in force."""

    def __init__(self, sizes: list[int] | None, graph_mode: bool, cudagraph_mode: str | None = None,
                 spec_tokens: int = 0):
        self.sizes = sorted(sizes or [])
        self.graph_mode = graph_mode
        self.cudagraph_mode = cudagraph_mode   # the configured one, e.g. FULL_AND_PIECEWISE (None: unknown)
        self.spec_tokens = spec_tokens         # speculative tokens per request and step (0: none)

    def reason(self, batch: int, target: int | None) -> str:
        """Why a decode step ran eager (runtime mode NONE)."""
        if not self.graph_mode or self.cudagraph_mode == NONE_MODE:
            return R.REASON_EAGER_MODE
        if not self.sizes:
            return R.REASON_NO_GRAPHS
        if target is None:
            return R.REASON_OVER_MAX
        return REASON_VLLM_NO_GRAPH

    def record(self, it: Iteration, i: int, t: float, wall_s: float, gpu_ms: float | None = None) -> dict:
        """The step record of one forward: ``i`` = its index, ``t`` = s since the run started,
        ``wall_s`` = the engine step's wall time, ``gpu_ms`` = its GPU time (None: not measured)."""
        graph = it.runtime_mode != NONE_MODE
        rows = it.unpadded_tokens
        prompt = it.ctx_tokens or 0
        if it.gen_tokens is not None and it.gen_requests is not None:
            # a request resumed after preemption recomputes its context as "generation" tokens: what
            # exceeds 1 + drafts per decode request is prompt-like work, not decode
            prompt += max(0, it.gen_tokens - it.gen_requests * (1 + self.spec_tokens))
        if it.ctx_requests is None or it.gen_requests is None:   # no iteration details: one token a request
            batch = rows
        else:
            batch = it.ctx_requests + it.gen_requests
        if not prompt:
            phase = R.PHASE_DECODE
        else:
            phase = R.PHASE_PREFILL if not it.gen_requests else R.PHASE_MIXED
        target = target_for(self.sizes, rows)
        bucket = it.padded_tokens if graph else None
        reason = None if graph else self.reason(rows, target)
        tokens = it.generated if it.generated is not None else (it.gen_tokens if it.gen_tokens is not None else batch)
        mode = it.runtime_mode if it.runtime_mode in R.RUNTIME_MODES else (R.RUNTIME_FULL if graph else R.RUNTIME_NONE)
        return R.step(i, t, batch, target, bucket, reason, wall_s * 1e6, gpu_ms, tokens, rows=rows,
                      runtime_mode=mode, phase=phase, prompt_tokens=prompt)


class StatsCollector:
    """Collects the Iterations vLLM reports; the engine adapter drains them after each engine step."""

    def __init__(self) -> None:
        self.pending: list[Iteration] = []
        self.records_seen = 0     # record() calls (stats with or without a CUDAGraphStat)

    def add(self, scheduler_stats, iteration_stats=None) -> None:
        self.records_seen += 1
        it = iteration_from_stats(scheduler_stats, iteration_stats)
        if it is not None:
            self.pending.append(it)

    def tap_outputless_steps(self, llm) -> None:
        """vLLM 0.26-0.27 (vllm_version.Adapter.read_outputless_steps): the stats of a step that returned
        no request output never reach stat loggers; read them from the engine core's output instead."""
        core = getattr(llm, "engine_core", None)
        get_output = getattr(core, "get_output", None)
        if get_output is None:
            return

        def tapped(*args, **kwargs):
            out = get_output(*args, **kwargs)
            stats = getattr(out, "scheduler_stats", None)
            if stats is not None and not getattr(out, "outputs", None):
                self.add(stats, _NO_TOKENS)
            return out
        core.get_output = tapped

    def drain(self) -> list[Iteration]:
        out, self.pending = self.pending, []
        return out

    def logger_class(self) -> type:
        """A ``vllm.v1.metrics.loggers.StatLoggerBase`` subclass feeding this collector, for
        ``LLMEngine.from_engine_args(..., stat_loggers=[cls])`` (vLLM calls ``cls(vllm_config, engine_index)``)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        collector = self

        class CgwatchStatLogger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                self.vllm_config, self.engine_index = vllm_config, engine_index

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                if scheduler_stats is not None:
                    # 0.28 on: iteration_stats is None exactly for a forward that returned no request
                    # output, i.e. produced no token (not iteration_details' count of generation tokens)
                    collector.add(scheduler_stats, _NO_TOKENS if iteration_stats is None else iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return CgwatchStatLogger

