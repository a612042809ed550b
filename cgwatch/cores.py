"""The CPU cores this process may use (its affinity: a container or taskset can give it fewer than the machine
has): the engine's torch threads and the exports' text builders are sized from it."""

from __future__ import annotations

import os


def usable() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # (not on every platform)
        return os.cpu_count() or 1
