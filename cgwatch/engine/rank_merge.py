"""Where rank 0 joins every rank's step time into its step records, and watches the skew.

Rank 0's step record waits (at most ``KEEP`` steps) for the other ranks' times of the same step,
which come with the per-step exchange (engine/ranks.py), then gets ``rank_ms`` (each rank's step
time: GPU time from CUDA events where measured, host time on the CPU; None: not measured) and
``skew_ms`` (slowest minus fastest rank; None unless every rank measured it). Records leave in step
order. ``SkewWatch`` raises one alert when the same rank is the slowest in most of a window of steps
by a margin that matters, and re-arms once it is not.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable

from cgwatch import records as R

KEEP = 64                 # step records waiting for the other ranks' times; older ones leave with None
WINDOW = 200              # steps the skew alert looks at
SLOW_SHARE = 0.9          # the same rank slowest in this share of the window...
MIN_SKEW_MS = 0.05        # ...by a median skew of at least this...
MIN_SKEW_SHARE = 0.05     # ...and this share of the median step time


class RankMerge:
    def __init__(self, size: int, emit: Callable[[dict], None], now: Callable[[], float], keep: int = KEEP):
        self.size, self.emit, self.keep = size, emit, keep
        self.pending: deque[dict] = deque()
        self.theirs: dict[int, dict[int, float | None]] = {}
        self.watch = SkewWatch(size, emit, now)

    def own(self, rec: dict) -> None:
        """Rank 0's completed step record."""
        self.pending.append(rec)
        self.flush()

    def add(self, rank: int, measures: list[tuple[int, float | None]]) -> None:
        """Another rank's (step, ms) pairs."""
        for i, ms in measures:
            self.theirs.setdefault(i, {})[rank] = ms
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Emit the records every rank reported on, in order (all of them when ``force``)."""
        p = self.pending
        while p and (force or len(p) > self.keep or len(self.theirs.get(p[0]["i"], ())) >= self.size - 1):
            rec = p.popleft()
            got = self.theirs.pop(rec["i"], {})
            ms = [R.step_ms(rec)] + [got.get(r) for r in range(1, self.size)]
            rec["rank_ms"] = [None if m is None else round(m, 4) for m in ms]
            rec["skew_ms"] = None if None in ms else round(max(ms) - min(ms), 4)
            self.watch.add(rec)
            self.emit(rec)
        if p:   # a follower's times for steps rank 0 already let go
            first = p[0]["i"]
            for i in [i for i in self.theirs if i < first]:
                del self.theirs[i]


class SkewWatch:
    def __init__(self, size: int, emit: Callable[[dict], None], now: Callable[[], float], window: int = WINDOW):
        self.size, self.emit, self.now, self.window = size, emit, now, window
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=window)   # (slowest rank, skew, median ms)
        self.alerted: set[int] = set()

    def add(self, rec: dict) -> None:
        ms, skew = rec.get("rank_ms"), rec.get("skew_ms")
        if skew is None or not ms:
            return
        slowest = max(range(len(ms)), key=lambda r: ms[r])
        self.recent.append((slowest, skew, sorted(ms)[len(ms) // 2]))
        if len(self.recent) < self.window:
            return
        rank, n = Counter(r for r, _, _ in self.recent).most_common(1)[0]
        skews = sorted(s for _, s, _ in self.recent)
        steps = sorted(m for _, _, m in self.recent)
        med_skew, med_ms = skews[len(skews) // 2], steps[len(steps) // 2]
        slow = n >= SLOW_SHARE * self.window and med_skew >= max(MIN_SKEW_MS, MIN_SKEW_SHARE * med_ms)
        if slow and rank not in self.alerted:
            self.alerted.add(rank)
            self.emit(R.alert(self.now(), f"rank {rank} is persistently slower: the slowest rank in "
                              f"{100 * n / self.window:.0f}% of the last {self.window} steps, median skew "
                              f"{med_skew:.3f} ms ({100 * med_skew / med_ms:.0f}% of a step)", rank=rank,
                              skew_ms=round(med_skew, 4)))
        elif not slow:
            self.alerted.discard(rank)
