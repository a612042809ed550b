"""Fan-out of records from the engine (and its sampler thread) to every sink, in order, one at a time."""

from __future__ import annotations

import threading
from typing import Callable

Sink = Callable[[dict], None]


class Fanout:
    def __init__(self, *sinks: Sink):
        self.sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        with self._lock:
            self.sinks.append(sink)

    def __call__(self, rec: dict) -> None:
        with self._lock:
            for sink in self.sinks:
                sink(rec)
