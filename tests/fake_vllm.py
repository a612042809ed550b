"""A stand-in for the few vllm names cgwatch's vLLM backend uses, to test the adapter's loop on the CPU
without vllm (tests/vllm_contract checks the same names against the real package).

``FakeLLMEngine`` schedules like vLLM's V1 scheduler in the simple case: every waiting request is
prefilled in the next step together with the running decodes (a mixed step), then decodes one token
per step until ``max_tokens``. It reports per-step stats to the stat loggers the way vLLM does
(``SchedulerStats``-shaped objects with ``cudagraph_stats`` and ``iteration_details``) and logs the
capture line through the V2 runner's logger.
"""

from __future__ import annotations

import bisect
import enum
import logging
import sys
import types
from types import SimpleNamespace as NS


class CUDAGraphMode(enum.Enum):
    NONE = 0
    PIECEWISE = 1
    FULL = 2
    FULL_DECODE_ONLY = (2, 0)
    FULL_AND_PIECEWISE = (2, 1)

    def __str__(self) -> str:
        return self.name


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class EngineArgs:
    def __init__(self, **kw):
        self.kw = kw


class StatLoggerBase:
    pass


DEFAULT_SIZES = [1, 2, 4, 8, 16, 24, 32]


class FakeLLMEngine:
    builds: list[dict] = []       # every from_engine_args call's kwargs
    shutdowns = 0
    fail_models: set[str] = set()   # models whose build raises
    fail_next = 0                 # builds to fail from now on (for restart failures)

    @classmethod
    def from_engine_args(cls, args, stat_loggers=None, enable_multiprocessing=False):
        kw = dict(args.kw)
        cls.builds.append(kw)
        if kw["model"] in cls.fail_models or cls.fail_next > 0:
            cls.fail_next = max(0, cls.fail_next - 1)
            raise ValueError(f"cannot load {kw['model']}\nsecond line")
        return cls(kw, stat_loggers or [])

    def __init__(self, kw: dict, loggers: list):
        eager = kw["enforce_eager"]
        mode = CUDAGraphMode[(kw.get("compilation_config") or {}).get("cudagraph_mode", "FULL_AND_PIECEWISE")]
        if eager:
            mode = CUDAGraphMode.NONE
        limit = kw.get("max_cudagraph_capture_size")
        sizes = [] if eager else sorted(s for s in (kw.get("cudagraph_capture_sizes") or DEFAULT_SIZES)
                                        if limit is None or s <= limit)
        self.kw, self.mode, self.sizes = kw, mode, sizes
        self.vllm_config = NS(
            compilation_config=NS(cudagraph_mode=mode, cudagraph_capture_sizes=sizes),
            use_v2_model_runner=True, device_config=NS(device_type="cpu"), scheduler_config=NS(async_scheduling=False),
            model_config=NS(get_vocab_size=lambda: 1000, dtype="torch.bfloat16", architectures=["LlamaForCausalLM"],
                            max_model_len=kw["max_model_len"]))
        self.loggers = [factory(self.vllm_config, 0) for factory in loggers]
        self.waiting: list[tuple[str, list[int], object]] = []
        self.running: dict[str, list] = {}    # rid -> [remaining tokens]
        self.engine_core = NS(shutdown=self._shutdown)
        self.aborted: list[str] = []
        logging.getLogger("vllm").setLevel(logging.INFO)   # what vLLM's logging config does
        if mode != CUDAGraphMode.NONE:
            logging.getLogger("vllm.v1.worker.gpu.model_runner").info(
                "Graph capturing finished in %.0f secs, took %.2f GiB", 1.25, 0.5)

    def _shutdown(self):
        FakeLLMEngine.shutdowns += 1

    def add_request(self, rid, prompt, params):
        assert isinstance(rid, str) and prompt["prompt_token_ids"]
        assert params.ignore_eos and params.detokenize is False and params.output_kind is RequestOutputKind.DELTA
        self.waiting.append((rid, list(prompt["prompt_token_ids"]), params))

    def abort_request(self, ids):
        for rid in ids:
            self.aborted.append(rid)
            self.running.pop(rid, None)
            self.waiting = [w for w in self.waiting if w[0] != rid]

    def _dispatch(self, tokens: int, prefill: bool) -> tuple[CUDAGraphMode, int]:
        if self.mode == CUDAGraphMode.NONE or not self.sizes or tokens > self.sizes[-1]:
            return CUDAGraphMode.NONE, tokens
        if prefill:
            runtime = CUDAGraphMode.PIECEWISE if self.mode in (CUDAGraphMode.FULL_AND_PIECEWISE,
                                                               CUDAGraphMode.PIECEWISE) else CUDAGraphMode.NONE
        else:
            runtime = CUDAGraphMode.FULL if self.mode != CUDAGraphMode.PIECEWISE else CUDAGraphMode.PIECEWISE
        if runtime == CUDAGraphMode.NONE:
            return runtime, tokens
        return runtime, self.sizes[bisect.bisect_left(self.sizes, tokens)]

    def step(self):
        if not self.waiting and not self.running:
            return []
        new, self.waiting = self.waiting[:self.kw["max_num_seqs"]], self.waiting[self.kw["max_num_seqs"]:]
        decodes = list(self.running)
        ctx_tokens = sum(len(p) for _, p, _ in new)
        unpadded = ctx_tokens + len(decodes)
        runtime, padded = self._dispatch(unpadded, bool(new))
        outs = []
        for rid in decodes:
            self.running[rid][0] -= 1
            done = self.running[rid][0] == 0
            outs.append(NS(request_id=rid, outputs=[NS(token_ids=[7])], finished=done))
            if done:
                del self.running[rid]
        for rid, _, params in new:
            left = params.max_tokens - 1
            outs.append(NS(request_id=rid, outputs=[NS(token_ids=[5])], finished=left == 0))
            if left:
                self.running[rid] = [left]
        stats = NS(cudagraph_stats=NS(num_unpadded_tokens=unpadded, num_padded_tokens=padded,
                                      num_paddings=padded - unpadded, runtime_mode=str(runtime)),
                   iteration_details=NS(num_ctx_requests=len(new), num_ctx_tokens=ctx_tokens,
                                        num_generation_requests=len(decodes), num_generation_tokens=len(decodes),
                                        is_dummy=False))
        for lg in self.loggers:
            lg.record(stats, NS(num_generation_tokens=len(outs)))
        return outs


def install(monkeypatch) -> types.ModuleType:
    """Put the fake vllm modules in sys.modules (undone by monkeypatch) and return the top one."""
    FakeLLMEngine.builds, FakeLLMEngine.shutdowns = [], 0
    FakeLLMEngine.fail_models, FakeLLMEngine.fail_next = set(), 0
    mods = {
        "vllm": dict(SamplingParams=SamplingParams, __version__="0.33.0"),
        "vllm.engine": {}, "vllm.engine.arg_utils": dict(EngineArgs=EngineArgs),
        "vllm.sampling_params": dict(RequestOutputKind=RequestOutputKind, SamplingParams=SamplingParams),
        "vllm.v1": {}, "vllm.v1.engine": {}, "vllm.v1.engine.llm_engine": dict(LLMEngine=FakeLLMEngine),
        "vllm.v1.metrics": {}, "vllm.v1.metrics.loggers": dict(StatLoggerBase=StatLoggerBase),
        "vllm.config": dict(CUDAGraphMode=CUDAGraphMode),
        "vllm.distributed": {}, "vllm.distributed.parallel_state": dict(cleanup_dist_env_and_memory=lambda: None),
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
    top = sys.modules["vllm"]
    import cgwatch.backends.vllm_engine as ve
    monkeypatch.setattr(ve, "import_vllm", lambda: top)
    return top
