"""What cgwatch relies on in vLLM's source, read from the installed files (both model runners need a
GPU stack to import, so they are read, not imported): both fill cudagraph_stats, both log the capture
line cgwatch's tap reads, and the per-step log lines cgwatch silences look as it expects."""

import importlib.util
import logging
import pathlib
import re

import pytest

pytest.importorskip("vllm")

import vllm.envs  # noqa: E402
from vllm.logger import init_logger  # noqa: E402

from cgwatch.backends.vllm_log import CAPTURE_PREFIX, METRICS_LOGGER, RUNNER_LOGGERS, CaptureTap, QuietStepLogs  # noqa: E402

RUNNERS = {"v1 (VLLM_USE_V2_MODEL_RUNNER=0)": "vllm.v1.worker.gpu_model_runner",
           "v2 (default)": "vllm.v1.worker.gpu.model_runner"}
CAPTURE_FORMAT = '"Graph capturing finished in %.0f secs, took %.2f GiB"'


def source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    return pathlib.Path(spec.origin).read_text()


@pytest.mark.parametrize("runner", RUNNERS)
def test_both_runners_fill_cudagraph_stats_when_metrics_are_on(runner):
    src = source(RUNNERS[runner])
    assert "observability_config.cudagraph_metrics" in src
    if "make_cudagraph_stats" in src:                       # V2: through cudagraph_utils
        util = source("vllm.v1.worker.gpu.cudagraph_utils")
        body = util[util.index("def make_cudagraph_stats"):][:600]
    else:                                                    # V1: in the runner
        body = src[src.index("cudagraph_stats = CUDAGraphStat("):][:400]
    for field in ("num_unpadded_tokens=", "num_padded_tokens=", "num_paddings=", "runtime_mode=str("):
        assert field in body, (runner, field)
    assert re.search(r"cudagraph_stats\s*=\s*cudagraph_stats", src), runner   # handed to ModelRunnerOutput


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


def test_the_tap_survives_vllms_logging_config_and_reads_its_record():
    """vLLM (re)configures logging with dictConfig when an engine starts; the tap is a filter, kept."""
    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging

    tap = CaptureTap().install()
    quiet = QuietStepLogs().install()
    try:
        configure_logging(LoggingConfig())
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
