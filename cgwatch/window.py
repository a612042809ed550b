"""A time window of a trace (``cgwatch export --from T --to T``, or ``--last D``: from D before the latest
step, prefill or sample on): the records whose time falls in it.

A record's time is its ``t`` (seconds since the run's start); one without a number t takes the newest t
before it (the timeline exports' sort key: perfetto_columnar._t_keys). The window keeps the records with
``lo <= time <= hi``; the trace's header always comes along. A compact trace is filtered as it is read
(``Window.batches``: every pass of a command sees the same rows): a Parquet row group whose t statistics lie
more than MARGIN_S outside the window is not read at all, nor is such a batch of an Arrow IPC stream (the
stream indexed once: where each batch starts, its t range); a JSON Lines trace by its line numbers
(``Window.outside``). So a minute of a day-long trace exports in about the time a minute-long trace takes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from . import records as R
from .errors import CgwatchError

# a row group is skipped only when its t statistics are this far outside the window: a record's t may come
# a few seconds out of order (a step's record waits for its GPU time), and rows kept as JSON carry their t in
# the JSON, not in the statistics
MARGIN_S = 60.0
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)?")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, None: 1.0}


def parse_time(text: str, flag: str) -> float:
    """Seconds from "90", "90s", "1.5m", "2h", "1h30m", "250ms" (a time since the run's start)."""
    s = text.strip().lower().replace(" ", "")
    pos, total, units = 0, 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or (m.group(2) is None and (pos or m.end() != len(s))):   # a bare number: the whole text
            raise CgwatchError(f"{flag} {text!r}: not a time (seconds, or like 90s, 15m, 1h30m)")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos, units = m.end(), units + 1
    if not units or not math.isfinite(total):
        raise CgwatchError(f"{flag} {text!r}: not a time (seconds, or like 90s, 15m, 1h30m)")
    return total


@dataclass(frozen=True)
class Window:
    lo: float = -math.inf   # s, inclusive
    hi: float = math.inf
    last: float | None = None   # ``--last``: the span before the trace's latest t (``resolved`` sets lo, hi)

    @classmethod
    def of(cls, start: str | None, end: str | None, last: str | None = None) -> "Window | None":
        """The window of ``--from`` / ``--to``, or of ``--last`` (None: none given)."""
        if last is not None:
            if start is not None or end is not None:
                raise CgwatchError("--last goes alone, not with --from or --to")
            span = parse_time(last, "--last")
            if not span > 0:
                raise CgwatchError(f"--last {last!r}: must be more than 0 s")
            return cls(last=span)
        if start is None and end is None:
            return None
        w = cls(-math.inf if start is None else parse_time(start, "--from"),
                math.inf if end is None else parse_time(end, "--to"))
        if w.lo > w.hi:
            raise CgwatchError(f"--from {start} is after --to {end}")
        return w

    def resolved(self, latest: float | None) -> "Window":
        """``--last`` made a span: from ``last`` seconds before ``latest`` (the trace's latest step, prefill or
        sample) to the end, the end record and any later event included; all of a shorter run (or of one
        with no t)."""
        if self.last is None:
            return self
        if latest is None or latest - self.last <= 0:
            return Window(last=self.last)
        return Window(latest - self.last, math.inf, self.last)

    def label(self) -> str:
        """"120-180 s", "from 120 s", "to 180 s", "last 60 s (120-180 s)"."""
        def num(x: float) -> str:
            return f"{round(x, 6):.6f}".rstrip("0").rstrip(".")
        if self.last is not None:
            whole = Window(self.lo).label() if math.isfinite(self.lo) else "all"
            return f"last {num(self.last)} s ({whole})"
        if self.lo == -math.inf:
            return f"to {num(self.hi)} s"
        if self.hi == math.inf:
            return f"from {num(self.lo)} s"
        return f"{num(self.lo)}-{num(self.hi)} s"

    def keep(self, key: np.ndarray) -> np.ndarray:
        return (key >= self.lo) & (key <= self.hi)

    # -- a compact trace ------------------------------------------------------------------------------
    def batches(self, reader, columns: list[str] | None, dictionary: bool, inert: dict | None, newest: list):
        """``reader.batches(...)`` (columnar.Reader: one part of a run; Trace.batches) with only the window's
        rows; row groups well outside it are not read. ``newest``: [the newest t before], carried over the
        parts."""
        from .export_columnar import _mask
        from .perfetto_columnar import _row_t, _t_keys
        want = None if columns is None else list(dict.fromkeys([*columns, "t_us", "json"]))

        def near(lo_hi) -> bool:   # read a group of this t range? (skipped ones still move ``newest`` on)
            if lo_hi is None:
                return True
            t0, t1 = lo_hi
            if t1 < self.lo - MARGIN_S or t0 > self.hi + MARGIN_S:
                newest[0] = max(newest[0], t1)
                return False
            return True

        if reader.kind == "parquet":
            read = _parquet_batches(reader, want, dictionary, inert, near)
        else:
            read = _stream_batches(reader, want, near)
        for b in read:
            key = _t_keys(_row_t(b), newest[0])   # (a row kept as JSON has its t in the JSON)
            if len(key):
                newest[0] = max(newest[0], float(key.max()))
            ok = self.keep(key)
            if not ok.any():
                continue
            if not ok.all():
                b = b.filter(_mask(ok))
            yield b if columns is None else b.select(columns)

    # -- a JSON Lines trace ---------------------------------------------------------------------------
    @staticmethod
    def latest_of(numbered: Iterable[tuple[int, dict]]) -> float | None:
        """The latest t of the steps, prefills and samples (latest_t's, which a compact trace's statistics
        give: not the end record's, a moment after the last step); None: none has one."""
        from .columnar import KEYS
        from .export import _is_number
        ts = [rec["t"] for _, rec in numbered if rec.get("type") in KEYS and _is_number(rec.get("t"))]
        return float(max(ts)) if ts else None

    def inside(self, numbered: Iterable[tuple[int, dict]], outside: list) -> Iterator[tuple[int, dict]]:
        """The (line, record) pairs in the window; the others' line numbers go to ``outside`` (the header is
        never one of them)."""
        from .export import _is_number
        newest = -math.inf
        for n, rec in numbered:
            t = rec.get("t")
            if _is_number(t):
                newest = max(newest, float(t))
            else:
                t = max(newest, 0.0)
            if self.lo <= t <= self.hi:
                yield n, rec
            else:
                outside.append(n)


# ---- a window of a trace as a Trace: report and recommend -------------------------------------------------

# the events whose state outlives them: the capture size lists (epochs), each bucket's capture and graph memory,
# the padding ratio in force
STATE_EVENTS = (R.EV_CAPTURE, R.EV_CAPTURE_DONE, R.EV_RECAPTURE, R.EV_PADDING)


def add_arguments(p, what: str = "records") -> None:
    """``--from``, ``--to`` and ``--last`` on a command's parser (export, report, recommend)."""
    p.add_argument("--from", dest="start", metavar="T",
                   help=f"only the {what} from this time of the run on (seconds since its start, or like 90s, "
                        "15m, 1h30m)")
    p.add_argument("--to", dest="end", metavar="T", help=f"only the {what} up to this time of the run")
    p.add_argument("--last", metavar="D", help=f"only the run's last D (like 10m): the {what} from D before its "
                                               "latest step on")


def of_args(a) -> "Window | None":
    """The window of a command's ``--from`` / ``--to`` / ``--last`` (not resolved yet); None: none given."""
    return Window.of(getattr(a, "start", None), getattr(a, "end", None), getattr(a, "last", None))


def windowed(trace, window: Window):
    """``trace`` cut to ``window`` (``--last`` resolved here), for a command that counts: a Trace of the records
    in it (the header always; the end record where the window reaches it), screened on their own, whose
    ``opening`` holds the events before the window that set the state it opens under (STATE_EVENTS: which
    size list is in force, which buckets are captured and their graph memory, the padding ratio) and ``window``
    the window."""
    from .trace import Trace

    latest = latest_t(trace.compact) if trace.compact is not None else Window.latest_of(enumerate(trace.records))
    window = window.resolved(latest)
    if trace.compact is not None:
        out = Trace(trace.header, path=trace.path, compact=trace.compact, notes=trace.notes)
        before = list(_compact_before(trace, window.lo))   # (the events of the groups before it)
    else:
        outside: list = []
        every = [*trace.records, *([trace.end] if trace.end is not None else [])]
        keep = {k for k, _ in window.inside(enumerate(every), outside)}
        records = [rec for k, rec in enumerate(trace.records) if k in keep]
        lines = [x for k, x in enumerate(trace.lines or ()) if k in keep] or None
        end = trace.end if trace.end is not None and len(trace.records) in keep else None
        out = Trace(trace.header, records, end, trace.truncated_at, trace.path, lines,
                    trace.end_line if end else None, notes=trace.notes)
        out.file_records = len(trace.records)
        before = trace.records
    out.window = window
    out.past_end = latest if latest is not None and window.lo > latest else None
    out.opening = [rec for rec in _records_before(before, window.lo) if R.check_record(rec) is None]
    return out


def _is_state(rec: dict) -> bool:
    return rec.get("type") == R.EVENT and rec.get("kind") in STATE_EVENTS


def _records_before(records: list[dict], lo: float) -> list[dict]:
    """The state events before ``lo`` (an event has a number t, or the screen leaves it out)."""
    from .export import _is_number
    return [rec for rec in records if _is_state(rec) and _is_number(rec.get("t")) and rec["t"] < lo]


def _compact_before(trace, lo: float):
    """The state events of a compact trace before ``lo``: only the row groups (stream batches) that start
    before it are read, and of them only the type and JSON columns (events are kept as JSON, t inside)."""
    if lo == -math.inf:
        return
    from . import arrow_np as A
    from .columnar import _decode_json
    from .fold import _is

    def early(lo_hi) -> bool:
        return lo_hi is None or lo_hi[0] < lo

    for r in trace.compact:
        if r.kind == "parquet":
            read = r.batches(["type", "json"], True, None, group=lambda pf, k: early(_t_range(pf, k)))
        else:
            read = _stream_batches(r, ["type", "json"], early)
        for b in read:
            js = b.column("json")
            for k in np.flatnonzero(_is(b.column("type"), R.EVENT) & ~A.null(js)).tolist():
                yield _decode_json(js[k].as_py())


def latest_t(readers) -> float | None:
    """The latest t (s) of a compact trace's parts by what their index says: a Parquet file's t statistics,
    an IPC stream's batches (indexed once, as windows read them). None: none has a t."""
    best = None
    for r in readers:
        if r.kind == "parquet":
            pf = r._pf
            ranges = [_t_range(pf, k) for k in range(pf.num_row_groups)]
        else:
            ranges = [lo_hi for _, lo_hi in _stream_index_of(r)[0]]
        for lo_hi in ranges:
            if lo_hi is not None:
                best = lo_hi[1] if best is None else max(best, lo_hi[1])
    return best


def _parquet_batches(reader, columns: list[str] | None, dictionary: bool, inert: dict | None, near):
    """A Parquet file's row groups for which ``near(their t range)`` holds; a damaged one ends the read with
    the reader's ``rows`` those of the groups before it, as its own read counts them."""
    at = [0]

    def group(pf, k: int) -> bool:
        at[0] = k
        return near(_t_range(pf, k))
    yield from reader.batches(columns, dictionary, inert, group=group)
    if reader.damage:
        md = reader._pf.metadata
        reader.rows = sum(md.row_group(k).num_rows for k in range(at[0]))


def _stream_index_of(reader) -> tuple[list, str | None, int]:
    """An IPC stream's (offset, t range or None) per batch, what cut it short (None), its rows: read once,
    decoding only t_us, and kept on the reader."""
    index = getattr(reader, "_t_index", None)
    if index is None:
        from . import arrow_np as A
        from .row_groups import _stream_index
        ranges = []

        def found(pos, b) -> None:
            t = A.ints(b.column("t_us"), 0)[~A.null(b.column("t_us"))]
            ranges.append((pos, (t.min() / 1e6, t.max() / 1e6) if len(t) else None))
        batches, damage = _stream_index(reader.path, found, ["t_us"])
        index = reader._t_index = (ranges, damage, sum(rows for _, rows in batches))
    return index


def _stream_batches(reader, columns: list[str] | None, near):
    """An Arrow IPC stream's batches for which ``near(their t range)`` holds, read by seeking to them: the
    stream is indexed once (where each batch starts, its least and greatest t: only t_us decoded) and kept
    on the reader; a damaged or truncated stream ends at its last whole batch, with the reader's ``damage``
    set as its own read sets it. Given ``columns`` (and the current layout), only their buffers are decoded:
    the batch's message is read as a stream of its own behind the schema's, with ``included_fields``."""
    import pyarrow as pa

    ranges, damage, rows = _stream_index_of(reader)
    src = pa.memory_map(reader.path)
    schema = pa.ipc.open_stream(src).schema
    head = src.read_at(src.tell(), 0)   # the schema's message: where the stream reader left off
    options = None
    if columns is not None and not reader.old:
        options = pa.ipc.IpcReadOptions(included_fields=sorted({schema.names.index(c) for c in columns}))
    for pos, lo_hi in ranges:
        if near(lo_hi):
            src.seek(pos)
            msg = pa.ipc.read_message(src)
            if options is None:
                yield reader._fit(pa.ipc.read_record_batch(msg, schema), columns)
            else:
                one = pa.ipc.open_stream(pa.py_buffer(head + src.read_at(src.tell() - pos, pos)), options=options)
                yield one.read_next_batch().select(columns)
    reader.damage, reader.rows = damage, rows   # the stream's, as a whole read says them


def _t_range(pf, k: int) -> tuple[float, float] | None:
    """Row group k's least and greatest t (s) by its statistics, None where they say nothing."""
    from .columnar import first_leaf
    leaf = first_leaf(pf).get("t_us")
    if leaf is None:
        return None
    st = pf.metadata.row_group(k).column(leaf).statistics
    if st is None or not st.has_min_max:
        return None
    return st.min / 1e6, st.max / 1e6
