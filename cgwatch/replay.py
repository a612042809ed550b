"""``ReplaySource``: a recorded trace played back through the ``Source`` interface, paced by ``t``.

Playback position ``pos`` is in trace seconds (0 = run start). The records are the trace's screened ones
(``Trace.screened()``, the validation every reader shares): what cannot be trusted is not played, and one
info line at t = 0 (and ``warnings``) says what was left out. A record is due once the running
maximum of ``t`` up to it is <= ``pos`` (two writer threads may interleave lines a few ms out of
order; the running maximum keeps "played so far" a prefix of the file, so file order is kept).

Commands (see source.py) run synchronously in the caller's thread and answer through
``on_record`` with an ``ack``; playback acks carry ``playback`` ({position_s, duration_s, speed,
paused}), never ``state`` (that is the engine's controllable state, which a replay does not have).
A backward seek re-emits the header and replays the trace up to the target at once, so views
reset and rebuild; a forward seek or ``next`` emits the skipped records at once. Reaching the end
(by playing or seeking) pauses, and the status text says "end of trace"; ``resume`` there is
refused until a backward seek.

Time: by default a background thread plays against ``time.monotonic``. For tests, pass
``clock=`` (a callable returning seconds): then no thread starts and ``poll()`` plays up to the
clock's current time, so tests drive playback without real time.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from bisect import bisect_right
from typing import Callable

from . import records as R
from .errors import CgwatchError
from .protocol import AGGREGATE
from .source import ENGINE_COMMANDS, Source, ack
from .trace import read_trace

SNAPSHOT_ROWS = 20_000    # a Parquet trace: a seek further than this many records goes by a snapshot

MIN_SPEED, MAX_SPEED = 0.25, 16.0
READ_ONLY = "replay is read-only"
STATUS_EVERY_S = 0.25     # on_status while playing (wall seconds)
MAX_WAIT_S = 0.05         # the playback thread re-checks at least this often
MIN_WAIT_S = 0.01         # ... and at most this often: records due meanwhile go out as one batch
                          # (a wake per record cost ~2,000 thread switches/s at x16; the TUI reads
                          # at 10 Hz, so batching by 10 ms changes nothing on screen)


def _noop(_: dict) -> None:
    pass


class ReplaySource(Source):
    def __init__(self, path: str | os.PathLike, speed: float = 1.0, start_paused: bool = False,
                 clock: Callable[[], float] | None = None, start=None):
        """``start``: a window.Window whose start the playback begins at (``--from T``, ``--last D``: D before
        the trace's latest t), the records before it shown at once, as a seek there shows them."""
        trace = read_trace(path)   # TraceError (a CgwatchError) for a missing or corrupt file
        self.path = trace.path     # the first file of a set of parts
        self.title = f"replay {os.path.basename(self.path)}"
        self.header = trace.header
        self._index = None
        if trace.compact is not None:
            # a compact trace plays from its row groups, never decoded as a whole (replay_index.py); the view
            # screens what it is given, as it does live
            from .replay_index import CompactRecords
            self._index = self.records = CompactRecords(trace)
            self.warnings = trace.warnings()
            self._tmax = self._index.tmax
            m = float(self._tmax[-1]) if len(self._tmax) else 0.0
        else:
            screened = trace.screened()   # the readers' one validation: what cannot be trusted is not played
            self.warnings = trace.warnings() + ([screened.warning] if screened.warning else [])
            self.records = screened.records + ([screened.end] if screened.end else [])
            if screened.warning:          # said in the TUI's log too, first thing
                self.records.insert(0, R.event(R.EV_INFO, 0.0, message=f"warning: {screened.warning}"))
            # running maximum of t: played records are records[:bisect_right(tmax, pos)]
            self._tmax: list[float] = []
            m = 0.0
            for rec in self.records:
                t = rec.get("t")
                if isinstance(t, (int, float)) and t > m:
                    m = float(t)
                self._tmax.append(m)
        self.duration_s = m
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise CgwatchError(f"replay speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, got {speed:g}")
        self.speed = float(speed)
        self.paused = start_paused
        self.pos = 0.0          # trace seconds played
        if start is not None:   # (clamped to the trace: a start past its end shows it all, at its end)
            self.pos = min(max(start.resolved(self.duration_s).lo, 0.0), self.duration_s)
        self._i = 0             # next record to emit
        self._partial: dict | None = None   # the last snapshot's aggregate counts fewer rows (indexing)
        self._at_end = False
        self._external_clock = clock is not None
        self._clock = clock or time.monotonic
        self._wall = 0.0        # clock reading that ``pos`` corresponds to
        self._last_status = float("-inf")
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_record = self._on_status = _noop

    # -- Source ------------------------------------------------------------------------------------
    def start(self, on_record, on_status) -> None:
        with self._lock:
            self._on_record, self._on_status = on_record, on_status
            self._wall = self._clock()
            self._on_record(self.header)
            self._emit_until(self.pos)
            self._status()
        if not self._external_clock:
            self._thread = threading.Thread(target=self._run, name="cgwatch-replay", daemon=True)
            self._thread.start()

    def send(self, cmd: str, value: object = None) -> int:
        req = next(self._ids)
        with self._lock:
            self._advance()
            reply = self._command(req, cmd, value)
            self._on_record(reply)
            self._status()
        self._wake.set()
        return req

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    # -- playback ----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Play everything due by the clock now; status ~4x/s while playing. The thread calls this;
        with ``clock=`` the caller does."""
        with self._lock:
            whole = self._partial is not None and self._index.covers(self._i)
            if whole:   # the index has passed the position of a partial snapshot: the whole aggregate now
                self._snapshot(self._i, wait=True)
            changed = self._advance() or whole
            now = self._clock()
            if changed or (not self.paused and now - self._last_status >= STATUS_EVERY_S):
                self._status()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            with self._lock:
                wait = MAX_WAIT_S
                if not self.paused and self._i < len(self.records):
                    wait = min(wait, max(MIN_WAIT_S, (self._tmax[self._i] - self.pos) / self.speed))
            self._wake.wait(wait)
            self._wake.clear()

    def _advance(self) -> bool:
        """Move ``pos`` to the clock, emit due records; True if playback just reached the end."""
        now = self._clock()
        if not self.paused:
            self.pos = min(self.duration_s, self.pos + (now - self._wall) * self.speed)
        self._wall = now
        self._emit_until(self.pos)
        if not self.paused and self._i >= len(self.records) and self.pos >= self.duration_s:
            self.paused = self._at_end = True
            return True
        return False

    def _due(self, pos: float) -> int:
        """Records due at ``pos``: records[:_due(pos)]."""
        if self._index is not None:
            return int(self._index.tmax.searchsorted(pos, side="right"))
        return bisect_right(self._tmax, pos)

    def _emit_until(self, pos: float) -> None:
        end = self._due(pos)
        if self._index is not None and (end < self._i or end - self._i > SNAPSHOT_ROWS):
            # far ahead or back: a snapshot of the aggregate up to there, as a late joiner gets it; at once,
            # even while the index is still being built (then partial, and the whole one follows: poll)
            self._snapshot(end, wait=False)
            return
        while self._i < end:
            self._on_record(self.records[self._i])
            self._i += 1

    def _snapshot(self, end: int, wait: bool) -> None:
        msgs = self._index.snapshot(end, wait=wait)
        for rec in msgs:
            self._on_record(rec)
        self._i = end
        self._partial = next((m["partial"] for m in msgs if m.get("type") == AGGREGATE and "partial" in m), None)

    def _seek_to(self, target: float) -> None:
        target = min(max(target, 0.0), self.duration_s)
        if target < self.pos and self._index is None:   # backward: the view resets on the header and rebuilds
            self._i = 0
            self._on_record(self.header)
        self.pos = target
        self._emit_until(target)
        self._at_end = self._i >= len(self.records) and target >= self.duration_s
        if self._at_end:
            self.paused = True

    def _playback(self) -> dict:
        return {"position_s": round(self.pos, 3), "duration_s": round(self.duration_s, 3),
                "speed": self.speed, "paused": self.paused}

    def _status(self) -> None:
        self._last_status = self._clock()
        text = f"{self.title} ×{self.speed:g} {self.pos:.1f}/{self.duration_s:.1f} s"
        if self._at_end:
            text += " end of trace"
        elif self.paused:
            text += " paused"
        if self._partial is not None:   # the totals are those of the index's progress, not yet of here
            text += f" · totals: indexing {100 * self._partial['records'] // max(1, self._partial['of'])}%"
        self._on_status({"connected": True, "text": text, "dropped": None, "read_only": READ_ONLY,
                         "ended": self._at_end, **self._playback()})

    # -- commands ----------------------------------------------------------------------------------
    def _command(self, req: int, cmd: str, value: object) -> dict:
        def ok() -> dict:
            return ack(req, cmd, True, playback=self._playback())

        def refuse(error: str) -> dict:
            return ack(req, cmd, False, error=error)

        if cmd in ENGINE_COMMANDS:
            return refuse(READ_ONLY)
        if cmd == "pause":
            self.paused = True
            return ok()
        if cmd == "resume":
            if self._at_end:
                return refuse("end of trace: seek back to play again")
            self.paused = False
            return ok()
        if cmd == "speed":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not MIN_SPEED <= value <= MAX_SPEED:
                return refuse(f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, got {value!r}")
            self.speed = float(value)
            return ok()
        if cmd == "seek":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return refuse(f"seek needs relative seconds, got {value!r}")
            self._seek_to(self.pos + value)
            return ok()
        if cmd == "next":
            kind = {"alert": R.EV_ALERT, "mark": R.EV_MARK}.get(value)  # type: ignore[arg-type]
            if kind is None:
                return refuse(f"next needs 'alert' or 'mark', got {value!r}")
            if self._index is not None:
                for k, ev in self._index.events:
                    if k >= self._i and ev == kind:
                        self._seek_to(float(self._tmax[k]))
                        return ok()
                return refuse(f"no further {value}")
            for k in range(self._i, len(self.records)):
                rec = self.records[k]
                if rec.get("type") == R.EVENT and rec.get("kind") == kind:
                    self._seek_to(self._tmax[k])
                    return ok()
            return refuse(f"no further {value}")
        return refuse(f"unknown command {cmd!r}")
