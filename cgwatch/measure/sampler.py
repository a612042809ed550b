"""Periodic samples, a few times a second, on a background thread: NVML, host, allocator, and the
GPU-busy fraction from the step events (completed GPU step time over wall time in the window).
With tensor parallelism rank 0 also reads every rank's GPU through NVML (one process can query them
all): ``gpus`` in the sample, one entry a rank, keyed by ``gpu`` (the rank's CUDA index)."""

from __future__ import annotations

import threading
from typing import Callable

from cgwatch import records as R
from cgwatch.measure.host import HostStats
from cgwatch.measure.nvml import Nvml


class Sampler:
    def __init__(self, nvml: Nvml, host: HostStats, busy_ms: Callable[[], float | None],
                 clock: Callable[[], float], emit: Callable[[dict], None], interval_s: float = 0.25,
                 gpus: list[Nvml] = ()):
        self.nvml, self.host, self.busy_ms, self.clock, self.emit = nvml, host, busy_ms, clock, emit
        self.gpus = list(gpus)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cgwatch-sampler", daemon=True)
        self._last = (clock(), busy_ms())

    def sample(self) -> dict:
        t, busy = self.clock(), self.busy_ms()
        t0, busy0 = self._last
        self._last = (t, busy)
        frac = None
        if busy is not None and busy0 is not None and t > t0:
            frac = round(min(1.0, (busy - busy0) / ((t - t0) * 1000.0)), 4)
        rec = {"type": R.SAMPLE, "t": round(t, 6), **self.nvml.sample(), **self.host.sample(), "gpu_busy": frac}
        if self.gpus:
            rec["gpus"] = [{"gpu": r, **n.sample()} for r, n in enumerate(self.gpus)]
        return rec

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.emit(self.sample())

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
