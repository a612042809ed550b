"""What both benches share (engine/bench.py for cgwatch's engine, backends/vllm_bench.py for vLLM): the
step records they time, taken on their way to the sinks; the engine's clock and marks; close; the
latency statistics of a mode. No torch here, so the vLLM bench imports it cheaply."""

from __future__ import annotations

import statistics
from typing import Callable

from cgwatch import records as R
from cgwatch.aggregate import percentile


def latency_stats(values: list[float]) -> dict:
    """mean / p50 / p99 of step times in ms, and how many: the percentiles linearly interpolated, as the report's
    (aggregate.percentile), so a bench's p99 and a report's p99 of the same steps are one number."""
    v = sorted(values)
    return {"mean_ms": statistics.fmean(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "n": len(v)}


class BenchBase:
    """``engine`` is set by the subclass; ``steps`` collects every step record the engine emits."""

    engine = None

    def _tap(self, emit: Callable[[dict], None]) -> Callable[[dict], None]:
        """The engine's sink: keeps the step records for the statistics, passes everything on."""
        self.steps: list[dict] = []

        def tap(rec: dict) -> None:
            if rec.get("type") == R.STEP:
                self.steps.append(rec)
            emit(rec)
        return tap

    def close(self) -> dict:
        return self.engine.close()

    def now(self) -> float:
        return self.engine.now()

    def _mark(self, text: str) -> None:
        self.engine.emit(R.event(R.EV_MARK, self.engine.now(), text=text))
