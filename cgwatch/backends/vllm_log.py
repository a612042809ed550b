"""What cgwatch reads from vLLM's log: its capture total, and the per-step lines it silences.

vLLM returns the graph memory of a capture only to its worker and logs the result, from either model
runner, as ``"Graph capturing finished in %.0f secs, took %.2f GiB"`` with the unrounded seconds and
GiB as the record's arguments. ``CaptureTap`` is a ``logging.Filter`` on the two runners' loggers
that keeps those two numbers (it never hides the line). Filters survive vLLM's ``dictConfig`` (which
drops handlers of existing loggers); nothing is read if vLLM logs above INFO, and then capture time
and graph memory are n/a.

With ``enable_logging_iteration_details`` on (cgwatch needs it to tell prefill from decode steps),
vLLM's default logger would also print one line per step, and ``cudagraph_metrics`` adds a table of
graph stats every few seconds; cgwatch shows both on its dashboard, so ``QuietStepLogs`` drops those
two and leaves every other vLLM log line alone.
"""

from __future__ import annotations

import logging
import re

GIB = 1 << 30
CAPTURE_PREFIX = "Graph capturing finished in"
RUNNER_LOGGERS = ("vllm.v1.worker.gpu_model_runner",   # VLLM_USE_V2_MODEL_RUNNER=0
                  "vllm.v1.worker.gpu.model_runner")   # Model Runner V2 (the default)
METRICS_LOGGER = "vllm.v1.metrics.loggers"
_CAPTURE_RE = re.compile(r"Graph capturing finished in ([\d.]+) secs?, took ([\d.]+) GiB")


def parse_capture(record: logging.LogRecord) -> tuple[float, int] | None:
    """(seconds, bytes) from vLLM's capture line; None for any other record."""
    msg = record.msg if isinstance(record.msg, str) else ""
    if not msg.startswith(CAPTURE_PREFIX):
        return None
    args = record.args if isinstance(record.args, tuple) else ()
    if len(args) == 2 and all(isinstance(a, (int, float)) for a in args):
        return float(args[0]), int(round(float(args[1]) * GIB))
    m = _CAPTURE_RE.search(record.getMessage())
    return (float(m[1]), int(round(float(m[2]) * GIB))) if m else None


class CaptureTap(logging.Filter):
    """Keeps the last capture total vLLM logged since ``reset()``; lets every record through."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.seconds: float | None = None
        self.bytes: int | None = None
        self.lines = 0

    def filter(self, record: logging.LogRecord) -> bool:
        got = parse_capture(record)
        if got is not None:
            self.seconds, self.bytes = got
            self.lines += 1
        return True

    def install(self) -> "CaptureTap":
        for name in RUNNER_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def uninstall(self) -> None:
        for name in RUNNER_LOGGERS:
            logging.getLogger(name).removeFilter(self)


class QuietStepLogs(logging.Filter):
    """Drops vLLM's per-step "Iteration(N): ..." lines and its periodic CUDA graph stats table."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not ("Iteration(%d)" in msg or msg.startswith("**CUDAGraph Config Settings"))

    def install(self) -> "QuietStepLogs":
        logging.getLogger(METRICS_LOGGER).addFilter(self)
        return self

    def uninstall(self) -> None:
        logging.getLogger(METRICS_LOGGER).removeFilter(self)
