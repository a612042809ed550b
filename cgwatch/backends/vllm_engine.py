"""The vLLM backend: a real vLLM engine, in this process, behind the same methods as cgwatch's Engine.

``VllmEngine(cfg, emit)`` builds ``vllm.LLMEngine.from_engine_args`` (in-process: one process, so
cgwatch's sampler sees the same GPU allocator and the capture log line) with CUDA graph metrics on and
a cgwatch stat logger (vllm_stats.py). Each ``step()``: apply pending commands, ask the seeded workload
(workload.py) who arrives and who is done, ``add_request`` / ``abort_request`` accordingly, run one
``LLMEngine.step()``, and turn the stats vLLM reported for it into records (vllm_stats.StepMapper):
one ``step`` record per forward, with its GPU time from CUDA events around the model runner
(vllm_timing.py). Differences between vLLM releases are vllm_version.Adapter's.

* The workload drives arrivals and request lengths (``max_tokens`` = output length, EOS ignored);
  vLLM's scheduler decides the batches. A request the workload retires before vLLM finished it is
  aborted (a replay file shrinking the batch, or a prefill that vLLM delayed by a step).
* Eager/graph and new capture sizes restart the engine with the new config (vLLM has no run-time
  switch): the live requests are re-submitted with their prompt plus the tokens generated so far (so
  they show up as a prefill), and the trace gets a ``restart`` event (old/new config, seconds).
* What vLLM does not give is None: per-bucket capture events (vLLM logs one total for all sizes: a
  ``capture_done`` event with ``scope: "total"``), kernels, checks, the GPU gap between steps.

Methods used by the CLI and the daemon: header(), start(), step(), run(), close(), submit(),
control_state(), apply_pending(), now(); attributes ``cfg``, ``sizes``, ``i``, ``tokens``.
"""

from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from cgwatch import records as R
from cgwatch.backends.vllm_config import NO_PADDING_RATIO, VllmEngineConfig, drop_above
from cgwatch.backends.vllm_log import CaptureTap, QuietStepLogs
from cgwatch.backends.vllm_stats import StatsCollector, StepMapper
from cgwatch.backends.vllm_timing import ForwardTimer
from cgwatch.backends.vllm_version import adapter_for, import_vllm
from cgwatch.engine.base import EngineBase
from cgwatch.errors import CgwatchError
from cgwatch.workload import Workload

EV_RESTART = R.EV_RESTART


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of an exception; for pydantic's ValidationError (vLLM's config classes) the
    first error's message, since its first line only says how many errors there are."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            text = str(errors()[0].get("msg", ""))
        except Exception:
            text = str(e)
    else:
        text = str(e)
    text = text.strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return f"{type(e).__name__}: {line if len(line) <= 300 else line[:297] + '...'}"


@dataclass
class _Request:
    rid: str
    prompt: list[int]
    output_len: int
    generated: list[int] = field(default_factory=list)
    finished: bool = False


class VllmEngine(EngineBase):
    backend = "vllm"

    def __init__(self, cfg: VllmEngineConfig, emit: Callable[[dict], None]):
        self.workload = Workload(cfg.workload)   # bad workload specs fail before vLLM's slow import
        self.vllm = import_vllm()          # checked and imported: a one-line CgwatchError otherwise
        self.adapter = adapter_for(self.vllm.__version__)
        from vllm import SamplingParams
        from vllm.engine.arg_utils import EngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.llm_engine import LLMEngine
        self._EngineArgs, self._LLMEngine = EngineArgs, LLMEngine
        self._SamplingParams, self._DELTA = SamplingParams, RequestOutputKind.DELTA

        self.cfg, self.emit = cfg, emit
        self.graph_mode = cfg.mode == "graph"
        self.want_sizes: list[int] | None = None     # sizes asked for; None = vLLM's default list
        self.dropped_sizes: list[int] = []
        if cfg.capture_sizes is not None:
            kept, self.dropped_sizes = drop_above(cfg.capture_sizes, cfg.max_capture_size)
            self.want_sizes = list(kept)
        self.sizes: list[int] = list(self.want_sizes or [])   # sizes in force (vLLM's resolved list)
        self.collector = StatsCollector()
        self.timer = ForwardTimer()
        self.tap = CaptureTap().install()
        self.quiet = QuietStepLogs().install()
        self._init_commands(cfg.schedule)
        self.requests: dict[int, _Request] = {}      # workload slot -> request
        self.by_id: dict[str, _Request] = {}
        self.resubmits = 0
        self._rng = random.Random(cfg.seed)
        self.i = self.tokens = 0
        self.busy_ms = 0.0
        self.started = self.paused = False
        self._wall = 0.0                             # wall time of engine steps not yet reported
        self._wall_t0: float | None = None
        self.llm = None
        self.t0 = time.perf_counter()
        try:
            self._build()
        except BaseException:
            self.tap.uninstall()
            self.quiet.uninstall()
            raise
        import torch
        from cgwatch.measure.host import HostStats
        from cgwatch.measure.nvml import Nvml
        from cgwatch.measure.sampler import Sampler
        self.cuda = self.device_type == "cuda" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
        self.nvml = Nvml(self.device if self.cuda else None)
        self.sampler = Sampler(self.nvml, HostStats(self.device), self._busy, self.now, emit,
                               cfg.sample_interval_s)

    # -- building and rebuilding the vLLM engine ---------------------------------------------------
    def _build(self) -> None:
        """Build the vLLM engine for the current mode and sizes (``build_s``: the seconds it took)."""
        kwargs = self.cfg.engine_kwargs(self.graph_mode, self.want_sizes)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # in-process: cgwatch times the steps itself
        if self.adapter.force_v1_runner:
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        self.tap.reset()
        self.collector.drain()
        t = time.perf_counter()
        why = None
        try:
            args = self._EngineArgs(**kwargs)
            self.llm = self._LLMEngine.from_engine_args(args, stat_loggers=[self.collector.logger_class()],
                                                        enable_multiprocessing=False)
        except CgwatchError:
            raise
        except Exception as e:
            why = _first_line(e)
        if why is not None:            # out of the except block: its traceback (holding the half-built
            self.llm = None            # engine's GPU memory) is gone, so the memory can be given back
            self._release()
            raise CgwatchError(f"vLLM could not start {self.cfg.model!r} "
                               f"({'graph' if self.graph_mode else 'eager'} mode): {why}") from RuntimeError(why)
        self.build_s = time.perf_counter() - t
        self.timer.install(self.llm)
        if self.adapter.read_outputless_steps:
            self.collector.tap_outputless_steps(self.llm)
        vc = self.llm.vllm_config
        cc = vc.compilation_config
        self.cudagraph_mode = str(cc.cudagraph_mode)
        self.graphs_on = self.graph_mode and cc.cudagraph_mode != self._graph_mode_none()
        if self.graphs_on:
            self.sizes = sorted(int(s) for s in (cc.cudagraph_capture_sizes or []))
        self.runner = "v2" if getattr(vc, "use_v2_model_runner", False) else "v1"
        self.device_type = getattr(vc.device_config, "device_type", None) or "unknown"
        self.vocab = max(2, int(vc.model_config.get_vocab_size()))
        self.model_dtype = str(vc.model_config.dtype).removeprefix("torch.")
        spec = getattr(vc, "speculative_config", None)
        self.spec_tokens = int(getattr(spec, "num_speculative_tokens", 0) or 0) if spec is not None else 0
        self.mapper = StepMapper(self.sizes, self.graph_mode, self.cudagraph_mode, self.spec_tokens)

    @staticmethod
    def _graph_mode_none():
        from vllm.config import CUDAGraphMode
        return CUDAGraphMode.NONE

    def _shutdown(self) -> None:
        """Stop the vLLM engine and give its GPU memory back (vLLM's own test clean-up)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        try:
            llm.engine_core.shutdown()
        except Exception:
            pass
        del llm
        self._release()

    @staticmethod
    def _release() -> None:
        """Give back what a stopped (or half-built) engine held: objects, process groups, cached memory."""
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        except Exception:
            pass

    def _describe_config(self) -> dict:
        """The running vLLM config as the trace's restart events describe it: what vLLM captured
        (``cudagraph_capture_sizes``, empty in eager mode), the sizes asked for (None = vLLM's
        default list) and cgwatch's size list in force (``sizes``: the targets of eager steps too)."""
        return {"mode": "graph" if self.graph_mode else "eager", "enforce_eager": not self.graph_mode,
                "cudagraph_mode": self.cudagraph_mode,
                "cudagraph_capture_sizes": list(self.sizes) if self.graphs_on else [],
                "requested_sizes": self.want_sizes, "sizes": list(self.sizes), "model_runner": self.runner}

    def _note_adjustments(self) -> None:
        """Say so when vLLM resolved another graph mode or size list than the one asked for."""
        want = self.cfg.cudagraph_mode
        if self.graph_mode and want is not None and self.cudagraph_mode != want:
            self.emit(R.event(R.EV_INFO, self.now(), message=f"vLLM runs cudagraph_mode {self.cudagraph_mode}, "
                              f"not the requested {want}"))
        if self.graphs_on and self.want_sizes is not None and self.sizes != sorted(self.want_sizes):
            self.emit(R.event(R.EV_INFO, self.now(), message=f"vLLM captures {self.sizes}, not the requested "
                              f"{self.want_sizes}"))

    def _emit_capture(self) -> None:
        """vLLM's capture total for the engine just built (graph mode), or why it is n/a."""
        t = self.now()
        if not self.graphs_on:
            return
        if self.tap.seconds is None:
            self.emit(R.event(R.EV_INFO, t, message="vLLM did not log its graph capture total (VLLM_LOGGING_LEVEL "
                              "above INFO?): capture time and graph memory are n/a"))
            return
        self.emit(R.capture_done(t, sizes=list(self.sizes), failed=[], pool_bytes=self.tap.bytes,
                                 seconds=round(self.tap.seconds, 3), pool="shared", pools=1, source="vllm",
                                 scope="total", cudagraph_mode=self.cudagraph_mode,
                                 label=f"vLLM total for {len(self.sizes)} sizes: Graph capturing finished in "
                                       f"{self.tap.seconds:.0f} secs, took {self.tap.bytes / (1 << 30):.2f} GiB"))

    def _restart(self, why: str, old: dict) -> None:
        """Rebuild the engine for the current mode/sizes (a CgwatchError if vLLM does not start); ``old``:
        the config it replaces (``_describe_config()`` before the change)."""
        self.emit(R.alert(self.now(), f"restarting vLLM for {why} (vLLM has no run-time switch): the loop pauses "
                          f"while it loads, compiles and captures", level="info"))
        t = time.perf_counter()
        self._shutdown()
        try:
            self._build()
        except CgwatchError as e:
            self.emit(R.alert(self.now(), f"vLLM restart for {why} failed: {e}", level="error"))
            raise
        secs = time.perf_counter() - t
        new = self._describe_config()
        self.emit(R.event(EV_RESTART, self.now(), backend="vllm", reason=why, old=old, new=new,
                          seconds=round(secs, 3), build_s=round(self.build_s, 3)))
        n = self._resubmit_live()
        self.emit(R.alert(self.now(), f"vLLM restarted in {secs:.1f} s for {why}: {new['mode']} mode, "
                          f"cudagraph_mode {new['cudagraph_mode']}, {len(new['cudagraph_capture_sizes'])} capture "
                          f"sizes; {n} live request(s) re-submitted", level="info"))
        self._note_adjustments()
        self._emit_capture()

    def _busy(self) -> float | None:
        """Completed GPU time of the forwards so far, ms (the samples' GPU-busy share); None untimed."""
        return self.busy_ms if self.timer.reason is None else None

    # -- metadata and state ------------------------------------------------------------------------
    def header(self) -> dict:
        mc = self.llm.vllm_config.model_config
        model = {"name": self.cfg.model, "source": f"vllm ({self.cfg.resolved.source})",
                 "load_format": self.cfg.resolved.load_format, "architecture": (mc.architectures or [None])[0],
                 "max_model_len": mc.max_model_len, "vocab_size": self.vocab, "params": None}
        cfg = self.cfg.describe() | {"capture_sizes": list(self.sizes), "cudagraph_mode": self.cudagraph_mode}
        tp = ({"tensor_parallel_size": self.cfg.tensor_parallel_size,
               "rank_stats": "per engine: vLLM reports each step once for all its workers, not per rank"}
              if self.cfg.tensor_parallel_size > 1 else {})
        return (self._header_run(self.model_dtype, self.device_type)
                | {"vllm": self.vllm.__version__, "model_runner": self.runner, "vllm_notes": self.adapter.notes,
                   "gpu_timing": ("CUDA events around each forward (model runner)" if self.timer.reason is None
                                  else f"n/a: {self.timer.reason}"),
                   "async_scheduling": bool(self.llm.vllm_config.scheduler_config.async_scheduling)}
                | self._header_plan(model, cfg)
                | {"nvtx": False, "nvml": self.nvml.available, "build_s": round(self.build_s, 3)} | tp)

    def command_limits(self):
        """Capture sizes are tokens per forward in vLLM: at most max_num_batched_tokens (else max_num_seqs)."""
        from cgwatch.engine.control import Limits
        sched = getattr(getattr(self.llm, "vllm_config", None), "scheduler_config", None)
        tokens = getattr(sched, "max_num_batched_tokens", None)
        if isinstance(tokens, int) and tokens > 0:
            return Limits(tokens, "vLLM's max_num_batched_tokens")
        return Limits(self.cfg.num_seqs, "--max-num-seqs")

    def control_state(self) -> dict:
        return {"mode": "graph" if self.graph_mode else "eager", "cuda": self.cuda, "sizes": list(self.sizes),
                "captured": list(self.sizes) if self.graphs_on else [], "failed": [], "max_padding_ratio": None,
                "rate": self.workload.rate, "arrival": self.workload.kind, "paused": self.paused,
                "backend": "vllm", "cudagraph_mode": self.cudagraph_mode}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self.t0 = time.perf_counter()
        for note in self.adapter.notes + ([self.cfg.resolved.note] if self.cfg.resolved.note else []):
            self.emit(R.event(R.EV_INFO, self.now(), message=note))
        if self.timer.reason is not None:
            self.emit(R.event(R.EV_INFO, self.now(), message=f"GPU time of vLLM forwards is n/a: {self.timer.reason}"))
        if self.dropped_sizes:
            self.emit(R.event(R.EV_INFO, self.now(), message=f"capture sizes {self.dropped_sizes} dropped: above "
                              f"--max-cudagraph-capture-size {self.cfg.max_capture_size}"))
        self.emit(R.event(R.EV_INFO, self.now(), message=f"vLLM {self.vllm.__version__} engine built in "
                          f"{self.build_s:.1f} s (model runner {self.runner}, cudagraph_mode {self.cudagraph_mode}, "
                          f"{len(self.sizes)} capture sizes)"))
        self._note_adjustments()
        self._emit_capture()
        self._emit_state()
        self.sampler.start()

    def close(self) -> dict:
        self.sampler.stop()
        self.emit(self.sampler.sample())
        self._shutdown()
        self.tap.uninstall()
        self.quiet.uninstall()
        return self._summary()

    # -- commands (the mechanism, and rate / pause / mark: control.CommandTaker) -------------------
    def _previous(self) -> tuple:
        return self.graph_mode, self.want_sizes, self._describe_config()

    def _cmd_mode(self, mode: str, t: float) -> None:
        want = mode == "graph"
        if want == self.graph_mode:
            return
        previous = self._previous()
        self.graph_mode = want
        self.emit(R.event(R.EV_MODE, t, mode=mode))
        self._restart_or_note(f"{mode} mode", previous)

    def _cmd_recapture(self, value: list[int], t: float) -> None:
        previous = self._previous()
        sizes, dropped = drop_above(value, self.cfg.max_capture_size)
        if not sizes:
            raise CgwatchError(f"no capture size is <= --max-cudagraph-capture-size {self.cfg.max_capture_size}")
        self.emit(R.event(R.EV_RECAPTURE, t, sizes=list(sizes), old=list(self.sizes), dropped=dropped))
        self.want_sizes = list(sizes)
        if self.graph_mode:
            self._restart_or_note(f"capture sizes {list(sizes)}", previous)
        else:
            self.sizes = list(sizes)      # in force from the next graph-mode restart on
            self.mapper = StepMapper(self.sizes, self.graph_mode, self.cudagraph_mode, self.spec_tokens)

    def _cmd_padding(self, value: float, t: float) -> None:
        raise CgwatchError(NO_PADDING_RATIO)

    def _cmd_kernels(self, value: str, t: float) -> None:
        raise CgwatchError("vLLM picks its own kernels: 'kernels' is for cgwatch's engine (--backend pytorch)")

    def _restart_or_note(self, why: str, previous: tuple) -> None:
        """Restart for ``why``; if that fails, go back to ``previous`` (mode, sizes, description) and
        refuse the command. If even the previous config does not start again, the run ends (RuntimeError)."""
        self._flush_wall()
        try:
            self._restart(why, previous[2])
        except CgwatchError as e:
            mode_changed = previous[0] != self.graph_mode
            self.graph_mode, self.want_sizes = previous[:2]
            try:
                self._build()
            except CgwatchError as again:
                raise RuntimeError(f"vLLM could not start again with the previous config: {again}") from again
            if mode_changed:
                self.emit(R.event(R.EV_MODE, self.now(), mode="graph" if self.graph_mode else "eager"))
            self.emit(R.alert(self.now(), "vLLM is back on the previous config", level="warn"))
            self._emit_capture()
            self._resubmit_live()
            self._emit_state()
            raise CgwatchError(f"vLLM restart for {why} failed, back on the previous config: {e}") from None

    def _resubmit_live(self) -> int:
        self.by_id.clear()
        live = [r for r in self.requests.values() if not r.finished]
        for r in live:
            self._submit_request(r, resubmit=True)
        return len(live)

    # -- the loop ----------------------------------------------------------------------------------
    def _submit_request(self, r: _Request, resubmit: bool = False) -> None:
        if resubmit:
            self.resubmits += 1
            r.rid = f"{r.rid.split('~')[0]}~{self.resubmits}"
        remaining = r.output_len - len(r.generated)
        if remaining < 1:
            r.finished = True
            return
        params = self._SamplingParams(max_tokens=remaining, ignore_eos=True, temperature=self.cfg.temperature,
                                      detokenize=False, output_kind=self._DELTA,
                                      seed=None if self.cfg.temperature == 0 else self._rng.randrange(2 ** 31))
        self.llm.add_request(r.rid, {"prompt_token_ids": r.prompt + r.generated}, params)
        self.by_id[r.rid] = r

    def _admit(self, a) -> None:
        r = _Request(f"cg{a.req_id}", [self._rng.randrange(self.vocab) for _ in range(a.prompt_len)], a.output_len)
        self.requests[a.slot] = r
        self._submit_request(r)

    def _retire(self, slot: int) -> None:
        r = self.requests.pop(slot, None)
        if r is None:
            return
        self.by_id.pop(r.rid, None)
        if not r.finished:
            self.llm.abort_request([r.rid])

    def _absorb(self, outputs) -> None:
        for out in outputs or ():
            r = self.by_id.get(getattr(out, "request_id", None))
            if r is None:
                continue
            for c in getattr(out, "outputs", None) or ():
                r.generated.extend(c.token_ids)
            if getattr(out, "finished", False):
                r.finished = True

    def _flush_wall(self) -> None:
        self._wall, self._wall_t0 = 0.0, None

    def step(self) -> bool:
        """One vLLM engine step (and the workload tick before it). False when the workload has ended."""
        self.apply_pending()
        plan = self.workload.next_step()
        if plan is None:
            return False
        for slot in plan.finished:
            self._retire(slot)
        if not plan.active:   # nothing live and nothing arriving (rate 0): wait for commands
            self._starved()
            return True
        for a in plan.admitted:
            self._admit(a)
        t0 = time.perf_counter()
        outputs = self.llm.step()
        t1 = time.perf_counter()
        if self._wall_t0 is None:
            self._wall_t0 = t0
        self._wall += t1 - t0
        self._absorb(outputs)
        its = self.collector.drain()
        if its:
            # With async scheduling a step's stats arrive with the next engine step, so the wall time
            # is that of the engine-step calls since the last stats; one stats object per call is the rule.
            wall = self._wall / len(its)
            t = self._wall_t0 - self.t0
            for it in its:
                rec = self.mapper.record(it, self.i, t, wall, self.timer.take(it.unpadded_tokens))
                if len(its) > 1:
                    rec["wall_shared_by"] = len(its)
                self.i += 1
                self.tokens += rec["tokens"]
                if rec["gpu_ms"] is not None:
                    self.busy_ms += rec["gpu_ms"]
                self.emit(rec)
            self._flush_wall()
        return True
