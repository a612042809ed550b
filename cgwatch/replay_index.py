"""A compact trace (Parquet or Arrow IPC, one file or a rotated run's parts) for replay without decoding it:
``CompactRecords`` is the sequence of its records (decoded a row group at a time, the last few kept), with
``tmax`` (the running maximum of t per row, for due-ness and seeks) and ``snapshot(j)``: what a view needs
to show the trace at row j at once, the way a late joiner of a live run gets it (docs/PROTOCOL.md): the
header, the aggregate of rows [0, j) (RunStats state, window as the TUI's), the events before the window and
the records of the last SNAPSHOT_ROWS rows for its charts, log and bucket status.

The aggregate comes from checkpoints: a background thread folds the trace once (fold.fold_rows, a row
group at a time, the next one read ahead) and keeps the RunStats state every CHECKPOINT_ROWS rows; a snapshot
restores the nearest checkpoint below j and folds the rest. Until the thread has passed j, a snapshot waits
for it, or (a replay's seek: ``wait=False``) is sent at once with the aggregate of the thread's last
checkpoint, marked partial; the replay sends the whole one once the thread has passed the position.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections import OrderedDict

import numpy as np

from . import fold as F
from .row_groups import RowGroups
from . import records as R
from .aggregate import VIEW_WINDOW, RunStats
from .protocol import AGGREGATE, AGGREGATE_ROW, SNAPSHOT_END
from .read_ahead import ahead

CHECKPOINT_ROWS = 1 << 17   # rows between aggregate checkpoints (a seek folds at most this many)
SNAPSHOT_ROWS = 2000        # records replayed into a snapshot for the charts (200 points) and the log
CACHE_GROUPS = 4            # decoded row groups kept
LOG_EVENTS = 1000           # events before the window a snapshot replays for the log (the view keeps 1,000 lines)
STATE_KINDS = frozenset((R.EV_CAPTURE, R.EV_CAPTURE_DONE, R.EV_RECAPTURE, R.EV_RELEASE, R.EV_MODE, R.EV_STATE,
                         R.EV_PADDING, R.EV_RATE, R.EV_PAUSE, R.EV_RESTART))   # events a view's state follows


class CompactRecords:
    def __init__(self, trace):
        self.path = trace.compact[0].path
        self.header = trace.header
        self.events: list[tuple[int, str]] = []     # (row, event kind) of the decoded rows: for ``next``
        self.event_recs: list[dict] = []            # ... and the events themselves: a snapshot replays them
        ts: list[np.ndarray] = []
        end = None
        base = [0]

        def visit(k: int, g) -> None:               # each group's t and JSON rows, as the groups are found
            nonlocal end
            a = base[0]
            t = F._floats(g.column("t_us")) / 1e6
            js = g.column("json")
            for row in np.flatnonzero(~F._null(js)).tolist():
                rec = json.loads(js[row].as_py())
                tt = rec.get("t")
                t[row] = tt if isinstance(tt, (int, float)) and not isinstance(tt, bool) else np.nan
                if rec.get("type") == "event":
                    self.events.append((a + row, rec.get("kind")))
                    self.event_recs.append(rec)
                elif rec.get("type") == "end":
                    end = rec
            ts.append(t)
            base[0] += g.num_rows

        # Parquet row groups, IPC batches, over all parts
        self.groups = RowGroups(trace.compact, visit=visit, columns=["t_us", "json"])
        self.starts = np.concatenate([[0], np.cumsum(self.groups.sizes)]).astype(np.int64)
        self.n = int(self.starts[-1])
        t = np.concatenate(ts) if ts else np.zeros(0)
        trace.cache_end(end)   # found on the way: the trace's warnings need no pass of their own
        t = np.where(np.isnan(t), -np.inf, t)
        self.tmax = np.maximum.accumulate(np.maximum(t, 0.0)) if self.n else t
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._checkpoints: dict[int, bytes] = {0: pickle.dumps(RunStats(VIEW_WINDOW).state())}   # pickled: compact
        self._built = 0                  # rows the background fold has passed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._build, name="cgwatch-replay-index", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        g = int(np.searchsorted(self.starts, k, side="right") - 1)
        with self._lock:
            recs = self._cache.get(g)
            if recs is None:
                from . import columnar as C
                recs = C.decode(self.groups.read(g))
                self._cache[g] = recs
                while len(self._cache) > CACHE_GROUPS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(g)
        return recs[k - int(self.starts[g])]

    def records(self, a: int, z: int) -> list[dict]:
        """Records [a, z), decoding only those rows."""
        from . import columnar as C
        out: list[dict] = []
        while a < z:
            g = int(np.searchsorted(self.starts, a, side="right") - 1)
            lo, hi = int(self.starts[g]), int(self.starts[g + 1])
            with self._lock:
                cached = self._cache.get(g)
            if cached is not None:
                out += cached[a - lo:min(z, hi) - lo]
            else:
                with self._lock:
                    b = self.groups.read(g)
                out += C.decode(b.slice(a - lo, min(z, hi) - a))
            a = min(z, hi)
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # -- the aggregate at a row ---------------------------------------------------------------------
    def _fold_to(self, stats: RunStats, a: int, z: int) -> None:
        """Rows [a, z) into stats, a row group at a time (the view's handles; the background fold has its own:
        one file is not read from two threads)."""
        g = int(np.searchsorted(self.starts, a, side="right") - 1)
        while a < z and g < len(self.starts) - 1:
            lo, hi = int(self.starts[g]), int(self.starts[g + 1])
            with self._lock:
                batch = self.groups.read(g)
            F.fold_rows(stats, batch, a - lo, min(z, hi) - lo)
            a = min(z, hi)
            g += 1

    def _build(self) -> None:
        """Fold the whole trace once, a checkpoint every CHECKPOINT_ROWS rows; each row group is read (decoded)
        in a second thread while the one before is folded (read_ahead)."""
        try:
            pf = self.groups.reopen()
            stats = RunStats(VIEW_WINDOW)
            stats.add(self.header)
            pos = 0
            for g, batch in ahead(self._groups_read(pf)):
                hi = int(self.starts[g + 1])
                while pos < hi:
                    nxt = min(hi, (pos // CHECKPOINT_ROWS + 1) * CHECKPOINT_ROWS)
                    F.fold_rows(stats, batch, pos - int(self.starts[g]), nxt - int(self.starts[g]))
                    pos = nxt
                    if pos % CHECKPOINT_ROWS == 0 or pos == self.n:
                        with self._lock:
                            self._checkpoints[pos] = pickle.dumps(stats.state(), protocol=5)
                            self._built = pos
                if self._stop.is_set():
                    return
        except Exception:   # a damaged row group, the file gone: seeks fold from the last checkpoint instead
            return

    def _groups_read(self, pf):
        """(group, its batch) in order, until the index is closed (the background thread's own handles)."""
        for g in range(len(self.starts) - 1):
            if self._stop.is_set():
                return
            yield g, pf.read(g)

    def covers(self, j: int) -> bool:
        """Whether the aggregate at row j comes without waiting for the background fold (at most one
        checkpoint's rows to fold from the last one)."""
        return not self._thread.is_alive() or self._built + CHECKPOINT_ROWS > j

    def aggregate_at(self, j: int, wait: bool = True) -> tuple[RunStats, int]:
        """The aggregate of rows [0, j) and how many rows it counts: j. The index still being built below j:
        with ``wait``, wait for it (folding beside it would do its work twice); else the aggregate of its
        last checkpoint (counting fewer rows), at once."""
        while wait and not self.covers(j):
            time.sleep(0.02)
        with self._lock:
            upto = j if self.covers(j) else self._built
            base = max(k for k in self._checkpoints if k <= upto)
            run, rows = pickle.loads(self._checkpoints[base])
        stats = RunStats.from_state(run, rows, window=VIEW_WINDOW)
        if base == 0:
            stats.add(self.header)
        self._fold_to(stats, base, upto)
        return stats, upto

    def snapshot(self, j: int, wait: bool = True) -> list[dict]:
        """The messages that put a view at row j (all rows before it counted). Without ``wait``, at once: while
        the index is short of j the aggregate counts only the rows it has passed, and says so (``partial``:
        {"records": those, "of": j}; docs/PROTOCOL.md)."""
        stats, counted = self.aggregate_at(j, wait)
        run, rows = stats.state()
        agg = {"type": AGGREGATE, "window": VIEW_WINDOW, "rows": len(rows), "run": run}
        if counted < j:
            agg["partial"] = {"records": counted, "of": j}
        out = [self.header, agg,
               *({"type": AGGREGATE_ROW, "row": row} for row in rows)]
        first = max(0, j - SNAPSHOT_ROWS)
        # the events before the window too, counted in the aggregate already: every one that sets what the
        # view shows (captures, releases, mode switches, ...: the bucket status, the sizes in force) and the
        # last LOG_EVENTS of the others (the log); then the window's records
        before = [(k, rec) for (k, _), rec in zip(self.events, self.event_recs) if k < first]
        rest = [k for k, rec in before if rec.get("kind") not in STATE_KINDS][-LOG_EVENTS:]
        keep = set(rest)
        out += [rec for k, rec in before if rec.get("kind") in STATE_KINDS or k in keep]
        out += self.records(first, j)
        out.append({"type": SNAPSHOT_END})
        return out
