"""GPU time of each vLLM forward: CUDA events around the model runner's work for one engine step.

vLLM does not time its steps on the GPU. In process (cgwatch runs the engine core in its own
process), both model runners split a step into ``execute_model(scheduler_output)`` (inputs, the
forward: a FULL graph, PIECEWISE graphs or eager) and ``sample_tokens(grammar_output)`` (sampling),
on the stream vLLM made current. ``ForwardTimer`` wraps the two methods of the runner instance: a
start event when ``execute_model`` begins a forward with scheduled tokens, an end event when the
matching ``sample_tokens`` returns (or when ``execute_model`` returns the output itself). Events are
recorded, never waited on, in the step; ``take(rows)`` reads the oldest finished pair when the
step's stats arrive (the stats of a forward come after it, also with async scheduling), matching
the scheduled token count against the stats' unpadded tokens. GPU time therefore includes input
preparation kernels, the forward and sampling, and not the host's scheduling between forwards.
"""

from __future__ import annotations

from collections import deque

MAX_PENDING = 64   # forwards timed but not yet claimed by stats (bounded: a mismatch never grows it)


def find_runner(llm):
    """The model runner of an in-process ``LLMEngine`` (one GPU worker), or None."""
    executor = getattr(llm, "model_executor", None)
    if executor is None:
        core = getattr(getattr(llm, "engine_core", None), "engine_core", None)
        executor = getattr(core, "model_executor", None)
    worker = getattr(getattr(executor, "driver_worker", None), "worker", None)
    return getattr(worker, "model_runner", None)


class ForwardTimer:
    def __init__(self) -> None:
        self.open: deque = deque()                       # (start event, tokens) awaiting sample_tokens
        self.done: deque = deque(maxlen=MAX_PENDING)     # (start, end, tokens)
        self.reason: str | None = "not installed"        # why GPU times are n/a; None when timing

    def install(self, llm) -> "ForwardTimer":
        import torch

        self.open.clear()
        self.done.clear()
        if not torch.cuda.is_available():
            self.reason = "no CUDA"
            return self
        runner = find_runner(llm)
        if runner is None or not callable(getattr(runner, "execute_model", None)) \
                or not callable(getattr(runner, "sample_tokens", None)):
            self.reason = "vLLM's model runner is not reachable in process"
            return self
        execute, sample = runner.execute_model, runner.sample_tokens
        Event = torch.cuda.Event

        def execute_model(scheduler_output, *args, **kwargs):
            if kwargs.get("dummy_run"):            # V2's own warm-up / capture runs: not a step
                return execute(scheduler_output, *args, **kwargs)
            n = int(getattr(scheduler_output, "total_num_scheduled_tokens", 0) or 0)
            start = None
            if n:
                start = Event(enable_timing=True)
                start.record()
            out = execute(scheduler_output, *args, **kwargs)
            if start is not None:
                if out is None:                    # sampling follows in sample_tokens
                    self.open.append((start, n))
                else:
                    end = Event(enable_timing=True)
                    end.record()
                    self.done.append((start, end, n))
            return out

        def sample_tokens(*args, **kwargs):
            out = sample(*args, **kwargs)
            if self.open:
                start, n = self.open.popleft()
                end = Event(enable_timing=True)
                end.record()
                self.done.append((start, end, n))
            return out

        runner.execute_model, runner.sample_tokens = execute_model, sample_tokens
        self.reason = None
        return self

    def take(self, rows: int) -> float | None:
        """GPU ms of the oldest timed forward that computed ``rows`` tokens (older unmatched ones are
        dropped); None if none matches (the step record then says n/a)."""
        for k, (_, _, n) in enumerate(self.done):
            if n == rows:
                for _ in range(k):
                    self.done.popleft()
                start, end, _ = self.done.popleft()
                end.synchronize()                # long done by now: its stats came after it
                return float(start.elapsed_time(end))
        return None
