"""Where a step's GPU time is measured: CUDA events around the step, read once they completed.

The loop never waits on a fresh step: ``poll`` hands back the steps whose end event has fired, and
only when more than ``max_inflight`` steps are pending does it wait on the oldest -- the same bound a
serving engine has when it reads the sampled tokens of step n-2. On the CPU there are no events:
every step is done when ``stop`` returns.

Also where the GPU gap between steps is measured: the previous step's end event to this step's start
event, for steps the loop issued back to back. Anything else put on the stream or the host in
between (a prefill, a command, a sync) breaks the chain (``break_chain``; ``drain`` does it), and the
next step has no gap.
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
        self._chained = False            # the next step follows the last one with nothing in between
        self._prev = None                # events of the last completed step, kept for the next gap
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
        """End the step begun by ``start``; returns the (payload, gpu_ms, gap_ms) now complete."""
        if not self.cuda:
            return [(payload, None, None)]
        start, end = self._current
        end.record()
        self._pending.append((payload, start, end, self._chained))
        self._chained = True
        if len(self._pending) > self.max_inflight:
            self._pending[0][2].synchronize()
        return self.poll()

    def break_chain(self) -> None:
        """Something other than a step runs before the next one: it gets no gap."""
        self._chained = False

    def poll(self) -> list:
        done = []
        pending = self._pending
        while pending and pending[0][2].query():
            payload, start, end, chained = pending.popleft()
            ms = start.elapsed_time(end)
            gap = self._prev[1].elapsed_time(start) if chained and self._prev else None
            if self._prev:
                self._free.append(self._prev)
            self._prev = (start, end)
            self.busy_ms += ms
            done.append((payload, ms, gap))
        return done

    def abandon(self) -> list:
        """The pending steps without their GPU times (``None``), for when the device cannot answer: a
        CUDA fault poisons the context and every event query after it raises."""
        out = [(payload, None, None) for payload, *_ in self._pending]
        self._pending.clear()
        self._chained = False
        return out

    def drain(self) -> list:
        """Wait for every pending step (a sync: the next step has no gap)."""
        self._chained = False
        if self._pending:
            self._pending[-1][2].synchronize()
        return self.poll()
