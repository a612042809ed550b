"""Where a batch is mapped to the graph that serves it (or to eager, with the reason).

``dispatch`` is the one function that decides; ``DispatchTable`` precomputes it for every batch size
so the per-step cost is a list index (the table is rebuilt when sizes, failures, mode or ratio change).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable

from cgwatch import records as R
from cgwatch.errors import CgwatchError

DEFAULT_CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True, slots=True)
class Dispatch:
    target: int | None   # smallest capture size >= batch (None: above the largest, or no sizes)
    bucket: int | None   # the graph that runs (None: eager)
    reason: str | None   # why eager (records.REASON_*), None when a graph runs


def padding_ratio(batch: int, bucket: int) -> float:
    """Share of the graph's rows that are padding."""
    return (bucket - batch) / bucket


def dispatch(batch: int, sizes: list[int], failed: Iterable[int] = (), max_padding_ratio: float = 0.5,
             graph_mode: bool = True, cuda: bool = True) -> Dispatch:
    """Map a batch to a bucket. ``sizes`` sorted ascending; ``failed`` buckets are disabled."""
    i = bisect.bisect_left(sizes, batch)
    target = sizes[i] if i < len(sizes) else None
    if not cuda:
        return Dispatch(target, None, R.REASON_NO_CUDA)
    if not graph_mode:
        return Dispatch(target, None, R.REASON_EAGER_MODE)
    if not sizes:
        return Dispatch(None, None, R.REASON_NO_GRAPHS)
    if target is None:
        return Dispatch(None, None, R.REASON_OVER_MAX)
    if target in failed:
        return Dispatch(target, None, R.REASON_BUCKET_FAILED)
    if padding_ratio(batch, target) > max_padding_ratio:
        return Dispatch(target, None, R.REASON_PADDING)
    return Dispatch(target, target, None)


class DispatchTable:
    """``dispatch`` for batch sizes 1..max_batch, looked up in O(1) on the hot path."""

    def __init__(self, max_batch: int, sizes: list[int], failed: Iterable[int] = (),
                 max_padding_ratio: float = 0.5, graph_mode: bool = True, cuda: bool = True):
        failed = frozenset(failed)
        self.sizes = sorted(sizes)
        self._table = [None] + [dispatch(b, self.sizes, failed, max_padding_ratio, graph_mode, cuda)
                                for b in range(1, max_batch + 1)]

    def __getitem__(self, batch: int) -> Dispatch:
        return self._table[batch]


MAX_SIZE_LIST = 1024        # capture sizes in one list
MAX_SIZE_DIGITS = 9         # digits of one capture size (no engine serves a billion requests at once)


def parse_sizes(text: str) -> list[int]:
    """'1,2,4,8' (or '1 2 4 8', '1, 2, 4') -> [1, 2, 4, 8] (sorted, unique). Raises CgwatchError on anything
    else; the message quotes at most a short prefix of the text."""
    from cgwatch.text import clip
    if len(text) > MAX_SIZE_LIST * (MAX_SIZE_DIGITS + 2):
        raise CgwatchError(f"capture size list of {len(text):,} characters is too long: at most "
                           f"{MAX_SIZE_LIST} sizes")
    parts = [s for s in text.replace(",", " ").split() if s]   # spaces separate too ('1 2 4' is not 124)
    if len(parts) > MAX_SIZE_LIST:
        raise CgwatchError(f"too many capture sizes ({len(parts)}): at most {MAX_SIZE_LIST}")
    for s in parts:
        if not (s.isascii() and s.lstrip("+-").isdigit()):
            raise CgwatchError(f"bad capture size list {clip(text)}: expected comma-separated integers like 1,2,4,8")
        if len(s.lstrip("+-0")) > MAX_SIZE_DIGITS:
            raise CgwatchError(f"capture size {clip(s)} is too large")
    sizes = sorted({int(s) for s in parts})
    if any(s < 1 for s in sizes):
        raise CgwatchError(f"bad capture size list {clip(text)}: sizes must be >= 1")
    return sizes


def effective_sizes(sizes: Iterable[int], max_capture_size: int | None, max_batch: int) -> tuple[list[int], list[int]]:
    """Sizes to capture, and the ones dropped (above --max-cudagraph-capture-size or the concurrency cap)."""
    cap = min(max_batch, max_capture_size) if max_capture_size else max_batch
    sizes = sorted(set(sizes))
    return [s for s in sizes if s <= cap], [s for s in sizes if s > cap]


def check_ratio(ratio: float) -> float:
    if not 0.0 <= ratio <= 1.0:
        raise CgwatchError(f"--max-padding-ratio must be between 0 and 1, got {ratio}")
    return ratio
