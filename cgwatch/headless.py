"""The headless view: one status line a second from the record stream (a sink like any other)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cgwatch import records as R
from cgwatch.event_text import event_text
from cgwatch.text import printable


class StatusLine:
    """A line a second: steps and tokens per second over that second, the last step's number and batch,
    graph share and padding of that second's steps, the last NVML utilization. ``finish`` prints the
    last part-second, if it had steps (a line of zeros would read as a stalled run)."""

    def __init__(self, out: TextIO = sys.stdout, every_s: float = 1.0):
        self.out, self.every_s = out, every_s
        self.batch, self.last_i, self.util = 0, -1, None   # the latest values: kept across lines
        self._reset(time.monotonic())
        self.alerts = 0

    def _reset(self, now: float) -> None:
        self.since, self.steps, self.graph, self.tokens, self.rows, self.padded = now, 0, 0, 0, 0, 0

    def __call__(self, rec: dict) -> None:
        kind = rec["type"]
        if kind == R.STEP:
            self.steps += 1
            self.tokens += rec["tokens"]
            self.batch, self.last_i = rec["batch"], rec["i"]
            if rec["bucket"] is not None:
                self.graph += 1
                self.rows += rec["bucket"]
                self.padded += rec["padded"]
            now = time.monotonic()
            if now - self.since >= self.every_s:
                self.print_line(now)
        elif kind == R.SAMPLE:
            self.util = rec.get("gpu_util")
        elif kind == R.EVENT and rec["kind"] in (R.EV_ALERT, R.EV_MODE, R.EV_RECAPTURE, R.EV_CAPTURE_DONE):
            self.out.write(f"[{rec['t']:8.2f}s] {printable(event_text(rec))}\n")
            self.out.flush()

    def finish(self, now: float) -> None:
        """The steps since the last line, if any."""
        if self.steps:
            self.print_line(now)

    def print_line(self, now: float) -> None:
        dt = max(now - self.since, 1e-9)
        hit = f"{100 * self.graph / self.steps:5.1f}%" if self.steps else "  n/a"
        pad = f"{100 * self.padded / self.rows:4.1f}%" if self.rows else " n/a"
        util = "n/a" if self.util is None else f"{self.util}%"
        self.out.write(f"step {self.last_i + 1:>7} | {self.steps / dt:7.1f} steps/s | {self.tokens / dt:9.0f} tok/s | "
                       f"batch {self.batch:>3} | graph {hit} | pad {pad} | gpu util {util}\n")
        self.out.flush()
        self._reset(now)
