"""What cgwatch relies on in vLLM's source, read from the installed files (both model runners need a
GPU stack to import, so they are read, not imported): which runner fills cudagraph_stats (V1 always,
V2 from 0.30: why cgwatch forces V1 before), when LLMEngine.step hands stats to the stat loggers (all
steps from 0.28, only steps with request output before: why cgwatch reads outputless steps itself),
both runners log the capture line cgwatch's tap reads, and the per-step log lines cgwatch silences
look as it expects."""

import importlib.util
import inspect
import logging
import re

import pytest

pytest.importorskip("vllm")

import vllm  # noqa: E402
import vllm.envs  # noqa: E402
from vllm.logger import init_logger  # noqa: E402
from vllm.v1.engine.llm_engine import LLMEngine  # noqa: E402

from cgwatch.backends.vllm_log import CAPTURE_PREFIX, METRICS_LOGGER, RUNNER_LOGGERS, CaptureTap, QuietStepLogs  # noqa: E402
from cgwatch.backends.vllm_version import adapter_for  # noqa: E402

from support import RELEASE, at_least, source  # noqa: E402

V1, V2 = "vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner"
RUNNERS = {"v1 (VLLM_USE_V2_MODEL_RUNNER=0)": V1, "v2 (default)": V2}
CAPTURE_FORMAT = '"Graph capturing finished in %.0f secs, took %.2f GiB"'
ADAPTER = adapter_for(vllm.__version__)


def fills_cudagraph_stats(module: str) -> bool:
    """Does this runner build a CUDAGraphStat (with cudagraph_metrics on) and hand it to its
    ModelRunnerOutput? V1 builds it inline, V2 (0.30 on) through cudagraph_utils.make_cudagraph_stats."""
    src = source(module)
    if "observability_config.cudagraph_metrics" not in src:
        return False
    if "make_cudagraph_stats" in src:                       # V2: through cudagraph_utils
        util = source("vllm.v1.worker.gpu.cudagraph_utils")
        body = util[util.index("def make_cudagraph_stats"):][:600]
    else:                                                    # V1: in the runner
        body = src[src.index("cudagraph_stats = CUDAGraphStat("):][:400]
    for field in ("num_unpadded_tokens=", "num_padded_tokens=", "num_paddings=", "runtime_mode=str("):
        assert field in body, (module, field)
    return bool(re.search(r"cudagraph_stats\s*=\s*cudagraph_stats", src))   # handed to ModelRunnerOutput


def test_the_v1_runner_fills_cudagraph_stats_in_every_release():
    assert fills_cudagraph_stats(V1)


def test_the_v2_runner_fills_cudagraph_stats_from_0_30_only():
    """0.26-0.29: Model Runner V2 (their default for a dense model) has no cudagraph_stats at all,
    so SchedulerStats.cudagraph_stats stays None and cgwatch would get no step records: cgwatch runs V1
    there (Adapter.force_v1_runner). 0.30 on: V2 builds it with make_cudagraph_stats
    (v1/worker/gpu/model_runner.py:1712 in 0.30, :1860 in 0.33)."""
    if at_least(30):
        assert fills_cudagraph_stats(V2)
        assert ADAPTER.force_v1_runner is False
    else:
        src = source(V2)
        assert "cudagraph_stats" not in src and "CUDAGraphStat" not in src, RELEASE
        assert "make_cudagraph_stats" not in source("vllm.v1.worker.gpu.cudagraph_utils")
        assert not fills_cudagraph_stats(V2)
        assert ADAPTER.force_v1_runner is True


def test_llm_engine_step_hands_outputless_steps_to_the_loggers_from_0_28_only():
    """LLMEngine.step records stats
    * 0.26/0.27: only `if logger_manager is not None and outputs.scheduler_stats is not None and
      len(outputs.outputs) > 0` (v1/engine/llm_engine.py:322-326), with `iteration_stats =
      IterationStats() if self.log_stats else None`: a forward of partial prefill chunks alone is
      never reported, so cgwatch taps engine_core.get_output for those (Adapter.read_outputless_steps);
    * 0.28 on: whenever scheduler_stats is not None ("Record even when this step produced no request
      outputs", :326-327 in 0.28, :356-357 in 0.33), with `iteration_stats = IterationStats() if
      self.log_stats and outputs.outputs else None`: the loggers see those steps (iteration_stats None),
      so the tap must not be installed (it would count them twice)."""
    src = inspect.getsource(LLMEngine.step)
    assert "self.engine_core.get_output()" in src     # what the tap wraps, in every release
    if at_least(28):
        assert "Record even when this step produced no request outputs" in src
        assert re.search(r"if self\.logger_manager is not None and outputs\.scheduler_stats is not None:", src)
        assert "len(outputs.outputs) > 0" not in src
        assert re.search(r"IterationStats\(\) if self\.log_stats and outputs\.outputs else None", src)
        assert ADAPTER.read_outputless_steps is False
    else:
        assert re.search(r"outputs\.scheduler_stats is not None\s*and len\(outputs\.outputs\) > 0", src)
        assert "IterationStats() if self.log_stats else None" in src
        assert ADAPTER.read_outputless_steps is True


def test_the_scheduler_passes_runner_stats_to_scheduler_stats():
    src = source("vllm.v1.core.sched.scheduler")
    assert "cudagraph_stats = model_runner_output.cudagraph_stats" in src
    assert "cudagraph_stats=cudagraph_stats" in src


@pytest.mark.parametrize("runner", RUNNERS)
def test_both_runners_log_the_capture_total_cgwatch_reads(runner):
    assert RUNNERS[runner] in RUNNER_LOGGERS
    src = source(RUNNERS[runner])
    assert CAPTURE_FORMAT in src and CAPTURE_FORMAT.strip('"').startswith(CAPTURE_PREFIX)
    assert "logger = init_logger(__name__)" in src


def test_the_v2_switch_exists():
    assert "VLLM_USE_V2_MODEL_RUNNER" in dir(vllm.envs) or "VLLM_USE_V2_MODEL_RUNNER" in source("vllm.envs")


def test_quiet_filter_matches_vllms_per_step_lines():
    loggers = source("vllm.v1.metrics.loggers")
    assert '"%sIteration(%d): %d context requests' in loggers
    assert '"**CUDAGraph Config Settings:**' in source("vllm.compilation.cuda_graph")
    assert METRICS_LOGGER == "vllm.v1.metrics.loggers"


def configure_vllm_logging() -> None:
    """What an engine start does to logging: 0.31 on, LLMEngine.__init__ calls
    configure_logging_if_needed(vllm_config.logging_config) (config/logging.py:LoggingConfig, new in
    0.31); 0.26-0.30 configure once, at `import vllm.logger` (a module-level
    _configure_vllm_root_logger(), logger.py:241 in 0.26), with no LoggingConfig. Both dictConfig with
    "disable_existing_loggers": False."""
    if at_least(31):
        from vllm.config.logging import LoggingConfig
        from vllm.logger import configure_logging
        configure_logging(LoggingConfig())
    else:
        assert importlib.util.find_spec("vllm.config.logging") is None, RELEASE
        import vllm.logger
        assert not hasattr(vllm.logger, "configure_logging")
        vllm.logger._configure_vllm_root_logger()


def test_the_tap_survives_vllms_logging_config_and_reads_its_record():
    """vLLM (re)configures logging with dictConfig; the tap is a filter, kept."""
    assert '"disable_existing_loggers": False' in source("vllm.logger")
    tap = CaptureTap().install()
    quiet = QuietStepLogs().install()
    try:
        configure_vllm_logging()
        for name in RUNNER_LOGGERS:
            tap.reset()
            init_logger(name).info_once(CAPTURE_FORMAT.strip('"'), 17.25, 1.5)
            assert (tap.seconds, tap.bytes) == (17.25, int(1.5 * 2**30)), name
        rec = logging.LogRecord(METRICS_LOGGER, logging.INFO, "x", 1, "%sIteration(%d): %d context requests",
                                ("", 3, 1), None)
        assert logging.getLogger(METRICS_LOGGER).filter(rec) is False
    finally:
        tap.uninstall()
        quiet.uninstall()
