"""What both backends share (cgwatch's loop, engine/loop.py, and vLLM's, backends/vllm_engine.py):
the run clock, the loop that steps until told to stop, the header fields that describe any run, and
the summary the end record carries. Each backend keeps its own start, step, close and commands.

torch is imported only where a header is built: the vLLM backend keeps its import light."""

from __future__ import annotations

import os
import platform
import socket
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Callable

import cgwatch
from cgwatch import records as R
from cgwatch.engine.control import CommandTaker


class EngineBase(CommandTaker):
    """A subclass sets ``t0``, ``i``, ``tokens``, ``started``, ``paused``, ``emit``, ``workload``,
    ``nvml``, ``cuda``, ``device``, and implements ``start()``, ``step()``, ``close()``,
    ``control_state()`` and the commands (control.CommandTaker)."""

    backend = ""   # the header's "backend"

    def now(self) -> float:
        """Seconds since the run started (``t`` of every record)."""
        return time.perf_counter() - self.t0

    # -- the loop --------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Step until max_steps steps, the workload ends, or should_stop() (checked every step).
        Paused or idle: no steps, but commands are still answered (resume among them)."""
        with self._loop_context():
            if not self.started:
                self.start()
            while (max_steps is None or self.i < max_steps) and not should_stop():
                if self.paused or self.idle:
                    self._before_wait()
                    if self.paused:
                        self.wait_for_command()
                    else:
                        self._wait_idle()
                    continue
                if not self.step():
                    break

    def _loop_context(self):
        """What the whole loop runs inside (cgwatch's engine: torch.inference_mode)."""
        return nullcontext()

    def _before_wait(self) -> None:
        """Paused or idle, before waiting for a command (a hook: emit what is in flight, say)."""

    # -- records ---------------------------------------------------------------------------------
    def _emit_state(self) -> None:
        self.emit(R.event(R.EV_STATE, self.now(), **self.control_state()))

    def _summary(self) -> dict:
        """The end record's counts (the session adds outcome and t)."""
        return {"steps": self.i, "tokens": self.tokens, "duration_s": round(self.now(), 4)}

    def _header_run(self, dtype: str, no_gpu: str) -> dict:
        """The header's first fields, the same for every backend: version, time, host and process,
        GPU (``no_gpu`` names the device without one), torch, device, dtype, backend."""
        import torch
        info = self.nvml.static_info()
        gpu = info["gpu_name"] or (torch.cuda.get_device_name(self.device) if self.cuda else no_gpu)
        return {"cgwatch": cgwatch.__version__, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version(),
                "gpu": gpu, "driver": info["driver"], "gpu_mem_total_bytes": info["mem_total_bytes"],
                "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(self.device),
                "dtype": dtype, "backend": self.backend}

    def _header_plan(self, model: dict, config: dict, **fields) -> dict:
        """The header's model, config and workload, the backend's ``fields``, then the command limits."""
        return {"model": model, "config": config, "workload": self.workload.describe(), **fields,
                "command_limits": self.command_limits().describe()}
