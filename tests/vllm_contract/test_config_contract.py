"""The engine arguments cgwatch builds, checked by vLLM's own argument and config classes (on vLLM's
CPU platform: validation runs, no model loads)."""

import pytest

pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.config import CompilationConfig, CUDAGraphMode, ObservabilityConfig  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

from cgwatch.backends.vllm_config import CUDAGRAPH_MODES, DTYPES, VllmEngineConfig  # noqa: E402
from cgwatch.workload import WorkloadSpec  # noqa: E402


def cfg(model, **kw):
    return VllmEngineConfig(model=model, load_format="dummy", max_seq=256,
                            workload=WorkloadSpec(max_concurrency=16, max_seq=256), **kw)


def test_cgwatch_modes_are_vllms_modes():
    assert set(CUDAGRAPH_MODES) == {m.name for m in CUDAGraphMode}
    for name in CUDAGRAPH_MODES:
        assert CompilationConfig(cudagraph_mode=name).cudagraph_mode == CUDAGraphMode[name]
    with pytest.raises(Exception):
        CompilationConfig(cudagraph_mode="HALF")


@pytest.mark.parametrize("mode", CUDAGRAPH_MODES)
def test_engine_args_are_accepted_and_resolve(tiny_model, mode):
    c = cfg(tiny_model, cudagraph_mode=mode, max_capture_size=16, gpu_memory_utilization=0.5)
    args = EngineArgs(**c.engine_kwargs(True, [1, 2, 4, 8, 16]))
    assert args.compilation_config.cudagraph_mode == CUDAGraphMode[mode]
    assert args.cudagraph_capture_sizes == [1, 2, 4, 8, 16] and args.max_cudagraph_capture_size == 16
    assert args.enforce_eager is False and args.max_num_seqs == 16 and args.gpu_memory_utilization == 0.5
    obs = args.create_observability_config()
    assert isinstance(obs, ObservabilityConfig)
    assert obs.cudagraph_metrics is True and obs.enable_logging_iteration_details is True
    vc = args.create_engine_config()
    assert vc.observability_config.cudagraph_metrics and vc.observability_config.enable_logging_iteration_details
    assert vc.scheduler_config.max_num_seqs == 16 and vc.model_config.max_model_len == 256
    assert vc.model_config.skip_tokenizer_init is True and vc.cache_config.gpu_memory_utilization == 0.5


def test_eager_args_resolve_to_no_graphs(tiny_model):
    vc = EngineArgs(**cfg(tiny_model).engine_kwargs(False, [1, 2, 4])).create_engine_config()
    assert vc.model_config.enforce_eager is True
    assert vc.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_is_a_vllm_dtype(tiny_model, dtype):
    EngineArgs(**cfg(tiny_model, dtype=dtype).engine_kwargs(True, None)).create_engine_config()


def test_vllm_refuses_what_cgwatch_refuses(tiny_model):
    with pytest.raises(Exception, match="gpu_memory_utilization"):
        EngineArgs(model=tiny_model, max_model_len=256, gpu_memory_utilization=1.5).create_engine_config()


def test_cgwatch_flags_mirror_vllms_cli(tiny_model):
    """The same settings through vLLM's own command line give the EngineArgs cgwatch builds."""
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    ns = parser.parse_args(["--model", tiny_model, "--max-model-len", "256", "--enforce-eager",
                            "--cudagraph-capture-sizes", "1", "2", "4", "--max-cudagraph-capture-size", "4",
                            "--gpu-memory-utilization", "0.6", "--max-num-seqs", "12", "--cudagraph-metrics",
                            "--enable-logging-iteration-details", "-cc.cudagraph_mode=PIECEWISE"])
    theirs = EngineArgs.from_cli_args(ns)
    c = VllmEngineConfig(model=tiny_model, load_format="dummy", max_seq=256, mode="eager", max_capture_size=4, cudagraph_mode="piecewise",
                         gpu_memory_utilization=0.6, max_num_seqs=12)
    eager = EngineArgs(**c.engine_kwargs(False, [1, 2, 4]))
    graph = EngineArgs(**c.engine_kwargs(True, [1, 2, 4]))
    for name in ("enforce_eager", "gpu_memory_utilization", "max_num_seqs", "cudagraph_metrics",
                 "enable_logging_iteration_details", "max_model_len"):
        assert getattr(eager, name) == getattr(theirs, name), name
    for name in ("cudagraph_capture_sizes", "max_cudagraph_capture_size"):
        assert getattr(graph, name) == getattr(theirs, name), name
    assert graph.compilation_config.cudagraph_mode == theirs.compilation_config.cudagraph_mode


def test_sampling_params_cgwatch_sends():
    p = SamplingParams(max_tokens=7, ignore_eos=True, temperature=0.0, detokenize=False,
                       output_kind=RequestOutputKind.DELTA, seed=None)
    assert p.max_tokens == 7 and p.ignore_eos and p.output_kind == RequestOutputKind.DELTA
    SamplingParams(max_tokens=3, ignore_eos=True, temperature=0.8, detokenize=False,
                   output_kind=RequestOutputKind.DELTA, seed=12345)
