"""Where a step's GPU time is measured: CUDA events around the step, read once they completed.

The loop never waits on a fresh step: ``poll`` hands back the steps whose end event has fired, and
only when more than ``max_inflight`` steps are pending does it wait on the oldest -- the same bound a
serving engine has when it reads the sampled tokens of step n-2. On the CPU there are no events:
every step is done when ``stop`` returns.
"""

from __future__ import annotations

from collections import deque

import torch


class StepTimer:
    def __init__(self, device: torch.device, max_inflight: int = 2):
        self.cuda = device.type == "cuda"
        self.max_inflight = max_inflight
        self._pending: deque = deque()   # (payload, start_event, end_event)
        self._free: list = []
        self._current = None
        self.busy_ms = 0.0               # sum of completed GPU step times (for the GPU-busy fraction)

    def _events(self):
        if self._free:
            return self._free.pop()
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self._current = self._events()
            self._current[0].record()

    def stop(self, payload) -> list:
        """End the step begun by ``start``; returns the (payload, gpu_ms) pairs now complete."""
        if not self.cuda:
            return [(payload, None)]
        start, end = self._current
        end.record()
        self._pending.append((payload, start, end))
        if len(self._pending) > self.max_inflight:
            self._pending[0][2].synchronize()
        return self.poll()

    def poll(self) -> list:
        done = []
        pending = self._pending
        while pending and pending[0][2].query():
            payload, start, end = pending.popleft()
            ms = start.elapsed_time(end)
            self.busy_ms += ms
            self._free.append((start, end))
            done.append((payload, ms))
        return done

    def abandon(self) -> list:
        """The pending steps without their GPU times (``None``), for when the device cannot answer: a
        CUDA fault poisons the context and every event query after it raises."""
        out = [(payload, None) for payload, _, _ in self._pending]
        self._pending.clear()
        return out

    def drain(self) -> list:
        if self._pending:
            self._pending[-1][2].synchronize()
        return self.poll()
