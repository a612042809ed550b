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

from support import at_least  # noqa: E402


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
    # with a size list cgwatch sends only the list (already cut at --max-cudagraph-capture-size):
    # vLLM derives the max from it (test_a_size_list_gives_vllm_its_max)
    assert args.cudagraph_capture_sizes == [1, 2, 4, 8, 16] and args.max_cudagraph_capture_size is None
    assert args.enforce_eager is False and args.max_num_seqs == 16 and args.gpu_memory_utilization == 0.5
    obs = args.create_observability_config()
    assert isinstance(obs, ObservabilityConfig)
    assert obs.cudagraph_metrics is True and obs.enable_logging_iteration_details is True
    vc = args.create_engine_config()
    assert vc.observability_config.cudagraph_metrics and vc.observability_config.enable_logging_iteration_details
    assert vc.scheduler_config.max_num_seqs == 16 and vc.model_config.max_model_len == 256
    assert vc.model_config.skip_tokenizer_init is True and vc.cache_config.gpu_memory_utilization == 0.5


def test_a_size_list_gives_vllm_its_max(tiny_model, graphs_on_cpu):
    """cgwatch cuts the list at --max-cudagraph-capture-size and sends the list alone; vLLM takes
    max(list) as max_cudagraph_capture_size (_set_cudagraph_sizes, config/vllm.py, every release)."""
    c = cfg(tiny_model, capture_sizes=(1, 2, 4, 8, 16, 32), max_capture_size=16)
    kw = c.engine_kwargs(True, [1, 2, 4, 8, 16])
    assert "max_cudagraph_capture_size" not in kw
    cc = EngineArgs(**kw).create_engine_config().compilation_config
    assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 16] and cc.max_cudagraph_capture_size == 16


def test_vllm_refuses_a_max_that_is_not_the_lists_max(tiny_model, graphs_on_cpu):
    """Why cgwatch never sends both: every release raises "customized max_cudagraph_capture_size(=8)
    should be consistent with the max value of cudagraph_capture_sizes(=4)" (config/vllm.py:1867 in
    0.26, :2619 in 0.33) when both are given and differ (a pydantic ValidationError around it)."""
    with pytest.raises(Exception, match="should be consistent with the max value of cudagraph_capture_sizes"):
        EngineArgs(model=tiny_model, load_format="dummy", skip_tokenizer_init=True, max_model_len=256,
                   max_num_seqs=16, cudagraph_capture_sizes=[1, 2, 4],
                   max_cudagraph_capture_size=8).create_engine_config()


@pytest.mark.parametrize("max_capture_size", [16, None])
def test_without_a_size_list_vllm_resolves_its_own(tiny_model, graphs_on_cpu, max_capture_size):
    """No --cudagraph-capture-sizes: cgwatch sends --max-cudagraph-capture-size alone (or nothing) and
    vLLM builds its default list: [1, 2, 4] + multiples of 8 up to the max, which defaults to
    2 x max_num_seqs (_set_cudagraph_sizes, config/vllm.py:1739 in 0.26, :2398 in 0.33)."""
    c = VllmEngineConfig(model=tiny_model, load_format="dummy", max_seq=256, max_capture_size=max_capture_size,
                         max_num_seqs=12)
    kw = c.engine_kwargs(True, None)
    assert "cudagraph_capture_sizes" not in kw and kw.get("max_cudagraph_capture_size") == max_capture_size
    cc = EngineArgs(**kw).create_engine_config().compilation_config
    if max_capture_size is not None:
        # a given max: the grid below it, in every release
        assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 16] and cc.max_cudagraph_capture_size == 16
    elif at_least(31):
        # 0.31 on, max computed by vLLM and no speculative decoding: max_num_seqs itself is captured too
        # ("elif max_num_seqs <= max_cudagraph_capture_size: uniform_decode_sizes = [max_num_seqs]",
        # config/vllm.py:2540 in 0.31, :2550 in 0.33; only "when the default is computed here")
        assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 12, 16, 24] and cc.max_cudagraph_capture_size == 24
    else:
        # 0.26-0.30: the grid only (12 is not on it)
        assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 16, 24] and cc.max_cudagraph_capture_size == 24


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


def test_cgwatch_flags_mirror_vllms_cli(tiny_model, graphs_on_cpu):
    """The same settings through vLLM's own command line give the EngineArgs cgwatch builds, and the
    same resolved config. (FULL, not a piecewise mode: on this CPU harness 0.30+ resolve piecewise
    modes away, support.cpu_default_cudagraph_mode.)"""
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    common = ["--model", tiny_model, "--load-format", "dummy", "--skip-tokenizer-init", "--max-model-len", "256",
              "--gpu-memory-utilization", "0.6", "--max-num-seqs", "12", "--cudagraph-metrics",
              "--enable-logging-iteration-details", "-cc.cudagraph_mode=FULL"]
    theirs_eager = EngineArgs.from_cli_args(parser.parse_args([*common, "--enforce-eager"]))
    # a list with its own max (allowed by vLLM: the max is the list's); cgwatch sends the list alone
    theirs_graph = EngineArgs.from_cli_args(parser.parse_args(
        [*common, "--cudagraph-capture-sizes", "1", "2", "4", "--max-cudagraph-capture-size", "4"]))
    c = VllmEngineConfig(model=tiny_model, load_format="dummy", max_seq=256, mode="eager", max_capture_size=4,
                         cudagraph_mode="full", gpu_memory_utilization=0.6, max_num_seqs=12)
    eager = EngineArgs(**c.engine_kwargs(False, [1, 2, 4]))
    graph = EngineArgs(**c.engine_kwargs(True, [1, 2, 4]))
    for name in ("enforce_eager", "gpu_memory_utilization", "max_num_seqs", "cudagraph_metrics",
                 "enable_logging_iteration_details", "max_model_len", "load_format", "skip_tokenizer_init"):
        assert getattr(eager, name) == getattr(theirs_eager, name), name
    assert graph.enforce_eager is theirs_graph.enforce_eager is False
    assert graph.cudagraph_capture_sizes == theirs_graph.cudagraph_capture_sizes == [1, 2, 4]
    assert graph.max_cudagraph_capture_size is None and theirs_graph.max_cudagraph_capture_size == 4
    assert graph.compilation_config.cudagraph_mode == theirs_graph.compilation_config.cudagraph_mode
    ours_cc = graph.create_engine_config().compilation_config
    theirs_cc = theirs_graph.create_engine_config().compilation_config
    assert (ours_cc.cudagraph_capture_sizes, ours_cc.max_cudagraph_capture_size, ours_cc.cudagraph_mode) == \
        (theirs_cc.cudagraph_capture_sizes, theirs_cc.max_cudagraph_capture_size, theirs_cc.cudagraph_mode) == \
        ([1, 2, 4], 4, CUDAGraphMode.FULL)
    ours_eager = eager.create_engine_config().compilation_config
    assert ours_eager.cudagraph_mode == theirs_eager.create_engine_config().compilation_config.cudagraph_mode \
        == CUDAGraphMode.NONE


def test_sampling_params_cgwatch_sends():
    p = SamplingParams(max_tokens=7, ignore_eos=True, temperature=0.0, detokenize=False,
                       output_kind=RequestOutputKind.DELTA, seed=None)
    assert p.max_tokens == 7 and p.ignore_eos and p.output_kind == RequestOutputKind.DELTA
    SamplingParams(max_tokens=3, ignore_eos=True, temperature=0.8, detokenize=False,
                   output_kind=RequestOutputKind.DELTA, seed=12345)
