"""The vLLM backend's options and the ``EngineArgs`` keyword arguments they become (pure: no vllm import).

cgwatch's flags mirror vLLM's own (``--enforce-eager``, ``--cudagraph-capture-sizes``,
``--max-cudagraph-capture-size``, ``--cudagraph-mode``, ``--gpu-memory-utilization``,
``--max-num-seqs``); ``engine_kwargs`` turns them into ``vllm.EngineArgs(**kwargs)`` with
``cudagraph_metrics`` (per-step ``CUDAGraphStat``) and ``enable_logging_iteration_details`` (prompt vs
decode tokens of each step) switched on. tests/vllm_contract checks these against vLLM's own classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cgwatch.backends.vllm_model import VllmModel, resolve_model
from cgwatch.engine.control import Command
from cgwatch.errors import CgwatchError
from cgwatch.workload import WorkloadSpec

# vLLM's CompilationConfig.cudagraph_mode values (vllm.config.CUDAGraphMode names)
CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
# cgwatch --dtype -> vLLM --dtype
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse_cudagraph_mode(text: str) -> str:
    name = str(text).strip().upper()
    if name not in CUDAGRAPH_MODES:
        raise CgwatchError(f"bad --cudagraph-mode {text!r}: expected one of {', '.join(CUDAGRAPH_MODES)}")
    return name


@dataclass
class VllmEngineConfig:
    model: str                                   # Hugging Face id, local folder, or a cgwatch preset (vllm_model.py)
    load_format: str | None = None               # vLLM's --load-format ("dummy": random weights); None: vLLM's
    dtype: str = "auto"                          # cgwatch names (DTYPES)
    max_seq: int = 1024                          # -> max_model_len
    capture_sizes: tuple[int, ...] | None = None  # None: vLLM's default list
    max_capture_size: int | None = None
    cudagraph_mode: str | None = None            # None: vLLM's default (FULL_AND_PIECEWISE)
    mode: str = "graph"                          # graph | eager (= --enforce-eager)
    gpu_memory_utilization: float | None = None  # None: vLLM's default
    max_num_seqs: int | None = None              # None: the workload's --max-concurrency
    tensor_parallel_size: int = 1                # passed to vLLM (its workers; its stats stay per engine)
    temperature: float = 0.0
    seed: int = 0
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    schedule: tuple[tuple[int, Command], ...] = ()
    sample_interval_s: float = 0.25
    engine_args: dict = field(default_factory=dict)   # more EngineArgs fields, as given (API/tests, not the CLI)
    backend: str = field(default="vllm", init=False)
    resolved: VllmModel = field(default=None, init=False, repr=False, compare=False)  # what vLLM gets

    def __post_init__(self) -> None:
        if not self.model:
            raise CgwatchError("--backend vllm needs --model HF_ID_OR_PATH (e.g. meta-llama/Llama-3.2-1B)")
        if self.mode not in ("graph", "eager"):
            raise CgwatchError(f"--mode must be graph or eager, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise CgwatchError(f"--dtype must be {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.cudagraph_mode is not None:
            self.cudagraph_mode = parse_cudagraph_mode(self.cudagraph_mode)
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise CgwatchError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise CgwatchError(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.tensor_parallel_size < 1:
            raise CgwatchError(f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_capture_size is not None and self.max_capture_size < 1:
            raise CgwatchError(f"--max-cudagraph-capture-size must be >= 1, got {self.max_capture_size}")
        if self.max_seq < 8:
            raise CgwatchError(f"--max-seq must be >= 8, got {self.max_seq}")
        if self.capture_sizes is not None:
            self.capture_sizes = tuple(self.capture_sizes)
            if not drop_above(self.capture_sizes, self.max_capture_size)[0]:
                raise CgwatchError(f"no capture size is <= --max-cudagraph-capture-size {self.max_capture_size}")
        for step, cmd in self.schedule:
            if cmd.name == "padding":
                raise CgwatchError(f"--at {step}:padding=...: {NO_PADDING_RATIO}")
        if self.load_format is not None and not str(self.load_format).strip():
            raise CgwatchError("--load-format must not be empty")
        self.resolved = resolve_model(self.model, self.load_format)

    @property
    def num_seqs(self) -> int:
        return self.max_num_seqs or self.workload.max_concurrency

    def describe(self) -> dict:
        d = asdict(self)
        d["workload"] = asdict(self.workload)
        d["schedule"] = [[s, c.name, c.value] for s, c in self.schedule]
        d["engine_args"] = {k: repr(v) if not isinstance(v, (str, int, float, bool, type(None))) else v
                            for k, v in self.engine_args.items()}
        d["max_num_seqs"] = self.num_seqs
        d["resolved"] = asdict(self.resolved)
        return d

    def engine_kwargs(self, graph: bool, sizes: list[int] | tuple[int, ...] | None) -> dict:
        """``vllm.EngineArgs(**kwargs)`` for graph mode (with ``sizes``, None = vLLM's default list) or
        eager mode (``enforce_eager``: no graphs, no compilation)."""
        kw: dict = {
            "model": self.resolved.path, "dtype": DTYPES[self.dtype], "max_model_len": self.max_seq, "seed": self.seed,
            "max_num_seqs": self.num_seqs, "enforce_eager": not graph,
            "cudagraph_metrics": True,                 # SchedulerStats.cudagraph_stats every step
            "enable_logging_iteration_details": True,  # SchedulerStats.iteration_details: prompt vs decode tokens
            "disable_log_stats": False,                # stat loggers run only with stats on
            "skip_tokenizer_init": True,               # cgwatch sends token ids and reads token ids
        }
        if self.resolved.load_format is not None:
            kw["load_format"] = self.resolved.load_format
        if self.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.tensor_parallel_size > 1:
            kw["tensor_parallel_size"] = self.tensor_parallel_size
        if graph:
            if sizes is not None:
                # the sizes are already cut at --max-cudagraph-capture-size; vLLM refuses a max that is
                # not the largest size given, so it gets only the list
                kw["cudagraph_capture_sizes"] = list(sizes)
            elif self.max_capture_size is not None:
                kw["max_cudagraph_capture_size"] = self.max_capture_size
            if self.cudagraph_mode is not None:
                kw["compilation_config"] = {"cudagraph_mode": self.cudagraph_mode}
        kw.update(self.engine_args)
        return kw


NO_PADDING_RATIO = ("the vLLM backend has no max padding ratio: vLLM pads every batch up to the next "
                    "capture size and runs eager only above the largest")


def drop_above(sizes, limit: int | None) -> tuple[tuple[int, ...], list[int]]:
    """Sorted unique sizes <= limit, and the ones dropped."""
    sizes = sorted(set(int(s) for s in sizes))
    if limit is None:
        return tuple(sizes), []
    return tuple(s for s in sizes if s <= limit), [s for s in sizes if s > limit]
