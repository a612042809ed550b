"""The trace file: versioned, streaming, append-only JSON Lines (docs/TRACE_FORMAT.md).

Line 1 is the header, then one compact JSON object per line (records.py), and on a clean close an
``end`` record. A file is readable while it is written: readers take whole lines only, and a
partial last line (crash, kill, or a writer still mid-flush) is a truncated tail, not an error.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from . import jsonl
from .errors import CgwatchError
from . import records as R
from .records import END, HEADER

FORMAT = "cgwatch-trace"
VERSION = 1             # the newest format version this code writes and reads
FLUSH_INTERVAL_S = 0.2  # write() flushes at most this often; flush()/close() flush at once
# A compact part records as an IPC stream of small batches and shrinks when its close compacts it: by this
# much on the benchmark's trace at 150 steps/s (149 -> 14 bytes a step as Parquet, -> 35 as IPC). Rotation by
# size compares the part's expected size on disk: its stream's bytes times this, or once a part has been
# compacted, the ratio that part shrank by.
FIRST_RATIO = {True: 0.1, False: 0.25}   # Parquet?


def _columnar():
    """columnar.py (pyarrow) only where a compact trace is written or read: JSON Lines needs none of it."""
    from . import columnar
    return columnar


def _sniff(path: str) -> str:
    """'parquet', 'ipc' or 'jsonl' by the file's first bytes (see columnar.py)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return "jsonl"
    return "parquet" if head == b"PAR1" else "ipc" if head == b"\xff\xff\xff\xff" else "jsonl"


class TraceError(CgwatchError):
    """A trace file that cannot be read: missing, not a trace, too new, or corrupt."""


_encode, _decode = jsonl.dumps, jsonl.loads


def _dumps(rec: dict) -> str:
    return _encode(rec) + "\n"


class TraceWriter:
    """Writes one trace: JSON Lines for a name ending in ``.jsonl``, else the compact format (columnar.py:
    an Arrow IPC stream while recording, compacted on close; Parquet for ``*.parquet``). Thread-safe;
    ``write`` is cheap enough for the per-step hot path.

    ``t0`` is the run's time origin on the ``time.perf_counter()`` clock (the engine's; default: now); it only
    sets the end record's ``t`` when the summary gives none. A write after close is dropped silently (a
    sampler thread may race the close). ``rotate_bytes`` / ``rotate_s``: start a new part file when the
    part reaches that size or age (``part_path``: run.000.jsonl, run.001.jsonl, ...); each part begins with
    the header (with ``part``: its number), the last one ends with the end record, and no record is lost
    or doubled at a boundary.
    """

    def __init__(self, path: str | os.PathLike, header: dict, t0: float | None = None,
                 rotate_bytes: int | None = None, rotate_s: float | None = None):
        self.path = os.fspath(path)
        self._t0 = time.perf_counter() if t0 is None else t0
        self._lock = threading.Lock()
        self._closed = False
        self.compact = not self.path.endswith(".jsonl")
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.rotating = bool(rotate_bytes or rotate_s)
        self.parts: list[str] = []
        self._compacting: list[threading.Thread] = []
        # a part's size on disk / the bytes written to it while it records
        self.ratio = FIRST_RATIO[self.path.endswith(".parquet")] if self.compact else 1.0
        _check_directory(self.path)
        # type/format/version come first and cannot be overridden by the metadata
        head = {"type": HEADER, "format": FORMAT, "version": VERSION}
        head.update((k, v) for k, v in header.items() if k not in head)
        self._head = head
        self._open_part()

    def _open_part(self) -> None:
        k = len(self.parts)
        path = part_path(self.path, k) if self.rotating else self.path
        head = {**self._head, "part": k} if self.rotating else self._head
        try:
            self._part = _CompactPart(path, head, k) if self.compact else _JsonlPart(path, head)
        except OSError as e:
            raise CgwatchError(f"cannot write trace {path}: {e.strerror or e}") from None
        self.parts.append(path)
        self._part_t = time.monotonic()
        self._part_base = self._part.bytes   # the header's bytes: a part holds at least one record

    def _rotate_locked(self) -> None:
        old = self._part
        old.close(None, compact=False)
        if self.compact:   # compacting the part it closed is not the loop's work
            th = threading.Thread(target=self._compact, args=(old.path, old.bytes), name="cgwatch-compact",
                                  daemon=True)
            th.start()
            self._compacting.append(th)
        self._open_part()

    def _compact(self, path: str, written: int) -> None:
        try:
            _columnar().compact_file(path)
            self.ratio = os.path.getsize(path) / max(written, 1)   # the next parts' estimate
        except Exception:   # the part stays a readable stream; convert compacts it later
            pass

    def write(self, rec: dict) -> None:
        part = self._part
        line = None if self.compact else _dumps(rec)  # serialize outside the lock
        with self._lock:
            if self._closed:
                return
            if self.rotating and ((self.rotate_bytes
                                   and (self._part.bytes - self._part_base) * self.ratio >= self.rotate_bytes)
                                  or (self.rotate_s and time.monotonic() - self._part_t >= self.rotate_s)):
                self._rotate_locked()
                part = self._part
            part.write(rec if line is None else line)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._part.flush()

    def close(self, summary: dict | None = None) -> None:
        """Write the end record (``t`` plus ``summary``), flush, fsync, close (compact). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            end = {"type": END, "t": round(time.perf_counter() - self._t0, 6)}
            end.update((k, v) for k, v in (summary or {}).items() if k != "type")
            try:
                self._part.close(end)
            finally:
                for th in self._compacting:
                    th.join()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A body that raised still gets an end record, marked with the error (Ctrl-C included).
        if exc_type is None:
            self.close()
        else:
            self.close({"error": f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__})


def check_record_path(path: str | None, overwrite: bool = False) -> None:
    """What ``--record PATH`` may name, checked before a run starts: a file name ('' and '-' are none: a
    trace does not go to stdout), in a directory that exists, and no trace already there (nor the first
    part of a rotated one) unless ``overwrite`` (an empty file holds nothing: it is replaced)."""
    if path is None:
        return
    if path in ("", "-"):
        raise CgwatchError(f"--record needs a file name, not {path!r} (a trace is not written to stdout)")
    _check_directory(path)
    for p in (path, part_path(path, 0)):
        if os.path.isdir(p):
            raise CgwatchError(f"cannot write trace {p}: it is a directory")
        if not overwrite and os.path.isfile(p) and os.path.getsize(p) > 0:
            raise CgwatchError(f"{p} exists: record to another name, or add --overwrite to replace it")


def _check_directory(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CgwatchError(f"cannot write trace {path}: directory {parent} does not exist")


def part_path(path: str, k: int) -> str:
    """The k-th part of a rotated trace: run.jsonl -> run.000.jsonl, run.parquet -> run.000.parquet."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.{k:03d}{ext}"


class _JsonlPart:
    """One JSON Lines file: header line, records, flushed at most every FLUSH_INTERVAL_S."""

    def __init__(self, path: str, head: dict):
        self.path = path
        self._f = open(path, "w", encoding="utf-8", newline="", buffering=1 << 16)
        self._last_flush = 0.0
        self.bytes = 0
        self.write(_dumps(head))
        self.flush()

    def write(self, line: str) -> None:
        try:
            self._f.write(line)
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None
        self.bytes += len(line)
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None
        self._last_flush = time.monotonic() if now is None else now

    def close(self, end: dict | None, compact: bool = True) -> None:
        try:
            if end is not None:
                self.write(_dumps(end))
            self.flush()
            try:
                os.fsync(self._f.fileno())
            except OSError as e:  # e.g. a pipe or /dev/null: nothing to sync
                if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
                    raise CgwatchError(f"cannot write trace {self.path}: {e.strerror}") from None
        finally:
            self._f.close()


class _CompactPart:
    """One compact file (columnar.StreamWriter): records buffered, a batch written every 0.25 s."""

    def __init__(self, path: str, head: dict, k: int):
        self.path = path
        self._w = _columnar().StreamWriter(path, head, part=k)

    @property
    def bytes(self) -> int:
        return self._w.bytes

    def write(self, rec: dict) -> None:
        self._w.write(rec)

    def flush(self) -> None:
        self._w.flush()

    def close(self, end: dict | None, compact: bool = True) -> None:
        if end is not None:
            self._w.write(end)
        try:
            self._w.close(compact=compact)
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None


# ---- reading ----

class Trace:
    """A read trace (one file or the parts of one run). ``records``: everything after the header, the end
    record excluded, in file order (decoded on first use for a compact trace); ``end``: the end record, None
    if the run did not close the trace. ``compact``: the compact readers (columnar.Reader, one per part) that
    ``batches()`` reads a column batch at a time, for the vectorized readers (fold.py); None for JSON Lines."""

    def __init__(self, header: dict, records: list[dict] | None = None, end: dict | None = None,
                 truncated_at: int | None = None, path: str = "", lines: list | None = None,
                 end_line: int | str | None = None, *, compact: list | None = None, notes: list[str] | None = None):
        self.header = header
        self._records = records
        self._end = end
        self.truncated_at = truncated_at    # JSON Lines: byte offset of a partial last line, if any
        self.path = path
        self.lines = lines                  # each record's line number (or "FILE line N" over parts)
        self.end_line = end_line
        self.compact = compact
        self.notes = notes or []            # one-line warnings about the set of parts
        self._screened: Screened | None = None
        self._loaded = compact is None
        self.window = None                  # window.Window: a compact trace's, the rows batches() yields; a
        #                                     window's trace (window.windowed): the window it holds
        self.opening: list[dict] | None = None   # a window's trace: the events before it that set its state
        self.file_records: int | None = None   # a window's trace: the records in the file (warnings count them)
        self.past_end: float | None = None   # a window's trace that starts after the run's latest t: that t

    @property
    def opened_window(self):
        """The window this trace was cut to for counting (window.windowed), None for a whole trace (or an
        export's filtered read, which sets ``window`` but no ``opening``)."""
        return None if self.opening is None else self.window

    # -- compact traces: decoded on first use ---------------------------------------------------------
    def batches(self, columns: list[str] | None = None, dictionary: bool = False, inert: dict | None = None):
        """The table's record batches over all parts, in order (compact traces only); ``dictionary``: string
        columns as dictionary arrays where the file stores them so; ``inert``: columns read as all null where
        a Parquet row group's statistics allow (columnar.Reader.batches)."""
        newest = [float("-inf")]   # a window's: the newest t before, over the parts
        for r in self.compact or ():
            r.rows = 0
            r.damage = None
            if self.window is None:
                yield from r.batches(columns, dictionary, inert)
            else:   # only the window's rows (window.py)
                yield from self.window.batches(r, columns, dictionary, inert, newest)

    def rows(self) -> Iterator[tuple[int, dict]]:
        """(row, record) for the records after the header, the end record included: a compact trace's rows
        as ``batches()`` yields them (its window's only, where it has one), decoded a batch at a time."""
        if self.compact is not None:
            row = 0
            for b in self.batches():
                for rec in _columnar().decode(b):
                    yield row, rec
                    row += 1
            return
        yield from enumerate(self.records + ([self.end] if self.end is not None else []))

    def _load(self) -> None:
        if self._loaded:
            return
        records: list[dict] = []
        end = end_row = None
        row = 0
        for b in self.batches():
            for rec in _columnar().decode(b):
                if rec.get("type") == END:
                    end, end_row = rec, row
                else:
                    records.append(rec)
                row += 1
        self._records, self._end, self.end_line, self._loaded = records, end, end_row, True

    @property
    def records(self) -> list[dict]:
        self._load()
        return self._records   # type: ignore[return-value]

    def cache_end(self, end: dict | None) -> None:
        """The end record, found by a reader's pass over a compact trace (fold.py)."""
        if not self._loaded:
            self._end, self._end_scanned = end, True

    @property
    def end(self) -> dict | None:
        if not self._loaded and not hasattr(self, "_end_scanned"):   # a compact trace: the end rows only
            import numpy as np

            from .fold import _is
            end = None
            for b in self.batches(["type", "json"], dictionary=True):
                rows = [r for r in np.flatnonzero(_is(b.column("type"), END)) if b.column("json")[int(r)].is_valid]
                if rows:
                    end = _decode(b.column("json")[int(rows[-1])].as_py())
            self._end, self._end_scanned = end, True
        if not self._loaded:
            return self._end
        self._load()
        return self._end

    def damage(self) -> list[str]:
        """Compact parts read only up to a damaged or truncated batch: one phrase each."""
        if self.compact and not hasattr(self, "_end_scanned") and not self._loaded:
            self.end   # noqa: B018 -- one pass over the parts finds the end record and any damage
        return [f"{r.path}: {r.damage}; read up to the last whole batch ({r.rows:,} records)"
                for r in self.compact or () if r.damage]

    def window_past_end(self) -> str | None:
        """A window with nothing of the run in it: the phrase that says so, else None."""
        if self.past_end is None or self.end is not None:
            return None
        return f"the window ({self.window.label()}) lies past the trace's end: its records end at {self.past_end:.3f} s"

    def warnings(self) -> list[str]:
        out = list(self.notes)
        hurt, past = self.damage(), self.window_past_end()
        if past:
            out.append(past)
        if self.truncated_at is not None:
            n = len(self.records) if self.file_records is None else self.file_records
            out.append(f"trace truncated at byte {self.truncated_at} after {n} "
                       "records (the run did not close it: crash or kill?)")
        elif hurt:
            out.append("; ".join(hurt) + " (the run did not close it: crash or kill?)")
        elif self.end is None and not past and (self.window is None or self.window.hi == math.inf):   # reaches it
            out.append("no end record: the run did not finish cleanly")
        if self.end is not None and self.end.get("error"):
            out.append(f"the run ended on an error: {self.end['error']}")
        return out

    def where(self, k: int) -> str:
        """How a warning names record k (the end record: k = len(records))."""
        if self.compact is not None:
            return f"row {k}"
        if k == len(self.records) and self.end is not None:
            x = self.end_line
        else:
            x = self.lines[k] if self.lines else None
        if x is None:
            return f"record {k + 1}"
        return f"line {x}" if isinstance(x, int) else str(x)

    def numbered(self) -> Iterator[tuple[int, str, dict]]:
        """(key, where, record) for every record and the end record, in file order: what records.screen takes
        (where: "line N" for a file, "row N" for a compact one, "record N" (1-based, after the header) for a
        Trace built in memory)."""
        for k, rec in enumerate(self.records):
            yield k, self.where(k), rec
        if self.end is not None:
            n = len(self.records)
            yield n, self.where(n), self.end

    def screened(self) -> "Screened":
        """The records every reader counts: the trace through records.screen (computed once)."""
        if self._screened is None:
            bad, sc = R.screen(self.numbered())
            records = [rec for k, rec in enumerate(self.records) if k not in bad]
            end = None if self.end is None or len(self.records) in bad else self.end
            self._screened = Screened(records, end, sc)
        return self._screened


@dataclass
class Screened:
    """A trace's records that can be trusted (records.screen); ``warning``: the one line that says what
    was skipped (None if nothing)."""
    records: list[dict]
    end: dict | None
    screen: R.Screen

    @property
    def skipped(self) -> int:
        return self.screen.count

    @property
    def warning(self) -> str | None:
        return self.screen.warning()


def _short(reason: str, limit: int = 80) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _corrupt(path: str, offset: int, lineno: int, reason: str) -> TraceError:
    return TraceError(f"{path}: corrupt record at byte {offset} (line {lineno}): {_short(reason)}")


def _parse_record(path: str, raw: bytes, offset: int, lineno: int) -> dict | None:
    """One whole line -> its record; None for a blank line; TraceError if corrupt."""
    if not raw.strip():
        return None
    try:
        obj = _decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _corrupt(path, offset, lineno, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _corrupt(path, offset, lineno, f"invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, offset, lineno, f"not a JSON object ({type(obj).__name__})")
    if not isinstance(obj.get("type"), str):
        raise _corrupt(path, offset, lineno, "object has no 'type'")
    return obj


def _parse_header(path: str, raw: bytes) -> dict:
    try:
        head = _decode(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        head = None
    if not isinstance(head, dict) or head.get("type") != HEADER or head.get("format") != FORMAT:
        raise TraceError(f"{path} is not a cgwatch trace (bad header at byte 0)")
    if "version" not in head:
        raise TraceError(f"{path}: bad trace header: it has no format version")
    if type(head["version"]) is not int or head["version"] < 1:
        raise TraceError(f"{path}: bad trace header: its format version {_encode(head['version'])} is not a "
                         "whole number >= 1")
    if head["version"] > VERSION:
        raise TraceError(f"{path}: trace format version {head['version']} is newer than this "
                         f"cgwatch reads (version {VERSION}); upgrade cgwatch")
    return head


def _open(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise TraceError(f"no such trace file: {path}") from None
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror or e}") from None


def _scan(path: str) -> Iterator[tuple[int, int, dict | None]]:
    """Yield (byte offset, line number, record): the header first, then each record; a partial
    last line (no trailing newline) yields record None and ends the scan."""
    with _open(path) as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                yield 0, 1, _parse_header(path, raw)
            elif not raw.endswith(b"\n"):
                yield offset, lineno, None
                return
            else:
                rec = _parse_record(path, raw, offset, lineno)
                if rec is not None:
                    yield offset, lineno, rec
            offset += len(raw)
        if offset == 0:
            raise TraceError(f"{path} is not a cgwatch trace (bad header at byte 0)")


def trace_files(arg) -> list[str]:
    """The files of one trace: a path, several paths, a glob, or a rotated run (its first part run.000.EXT,
    or run.EXT when only its parts exist: every run.NNN.EXT in order). TraceError if there are none."""
    if isinstance(arg, (list, tuple)) and len(arg) == 1:   # one file: as if given alone (a first part: the run)
        return trace_files(arg[0])
    if isinstance(arg, (list, tuple)):   # files given one by one: each as it is (a glob expanded)
        out = [p for a in arg for p in ([os.fspath(a)] if os.path.exists(a) else trace_files(a))]
        if not out:
            raise TraceError("no trace file given")
        return out
    path = os.fspath(arg)
    if not os.path.exists(path):
        if any(c in path for c in "*?["):
            found = sorted(glob.glob(path))
            if found:
                return found
        elif os.path.exists(part_path(path, 0)):
            return _parts_from(part_path(path, 0))
        raise TraceError(f"no such trace file: {path}")
    m = _PART.match(path)
    if m and m.group(2) == "000":
        return _parts_from(path)
    return [path]


_PART = re.compile(r"^(.*)\.(\d{3})(\.[^./]+)?$")


def _parts_from(first: str) -> list[str]:
    m = _PART.match(first)
    stem, ext = m.group(1), m.group(3) or ""
    out, k = [], 0
    while os.path.exists(f"{stem}.{k:03d}{ext}"):
        out.append(f"{stem}.{k:03d}{ext}")
        k += 1
    return out


def open_trace(arg) -> Trace:
    """The one way in: any trace (JSON Lines or compact; a file, several parts of one run, a glob, the first
    part) as a Trace. TraceError (one line) for a missing, unreadable, foreign or too new file."""
    paths = trace_files(arg)
    traces = [_read_one(p) for p in paths]
    if all(isinstance(t.header.get("part"), int) for t in traces):   # parts given in any order: the run's
        paths, traces = map(list, zip(*sorted(zip(paths, traces), key=lambda pt: pt[1].header["part"])))
    first = traces[0]
    notes = _earlier_parts_missing(paths[0], first.header)
    if len(paths) == 1:
        first.notes += notes
        return first
    base = {k: v for k, v in first.header.items() if k != "part"}
    for k, (p, t) in enumerate(zip(paths, traces)):
        if {a: v for a, v in t.header.items() if a != "part"} != base:
            raise TraceError(f"{p} is not a part of the same run as {paths[0]} (its header differs)")
        if t.header.get("part", k) != k + first.header.get("part", 0):
            notes.append(f"{p} is part {t.header.get('part')}, not part {k + first.header.get('part', 0)}: "
                         "a part of the run is missing")
            break
    if all(t.compact is not None for t in traces):
        return Trace(first.header, path=paths[0], compact=[r for t in traces for r in t.compact], notes=notes)
    records: list[dict] = []
    lines: list = []
    end = end_line = None
    for p, t in zip(paths, traces):
        name = os.path.basename(p)
        for k, rec in enumerate(t.records):
            records.append(rec)
            lines.append(f"{name} {t.where(k)}")
        if t.end is not None:
            end, end_line = t.end, f"{name} {t.where(len(t.records))}"
        notes += [f"{name}: {w}" for w in t.warnings() if not w.startswith("no end record")
                  and not w.startswith("the run ended")] if t is not traces[-1] else []
    last = traces[-1]
    return Trace(first.header, records, end, last.truncated_at, paths[0], lines, end_line, notes=notes)


def _earlier_parts_missing(path: str, header: dict) -> list[str]:
    """The note for a set of parts that starts after its run's first part (none for a whole run)."""
    k = header.get("part")
    if not isinstance(k, int) or k < 1:
        return []
    which = "part 0 is" if k == 1 else f"parts 0-{k - 1} are"
    return [f"{path} is part {k} of a rotated run: {which} missing (give its first part for the whole run)"]


def _read_one(path: str) -> Trace:
    kind = _sniff(path) if os.path.isfile(path) else "jsonl"
    if kind == "jsonl":
        return _read_jsonl(path)
    r = _columnar().Reader(path, kind)
    return Trace(r.header, path=path, compact=[r])


def read_trace(path) -> Trace:
    """Read a whole trace (open_trace). Unknown record types are kept; a truncated tail sets ``truncated_at``."""
    return open_trace(path)


def _read_jsonl(path: str | os.PathLike) -> Trace:
    path = os.fspath(path)
    scan = _scan(path)
    _, _, header = next(scan)
    records: list[dict] = []
    lines: list[int] = []
    end = truncated_at = end_line = None
    for offset, lineno, rec in scan:
        if rec is None:
            truncated_at = offset
        elif rec["type"] == END:
            end, end_line = rec, lineno
        else:
            records.append(rec)
            lines.append(lineno)
    return Trace(header=header, records=records, end=end, truncated_at=truncated_at, path=path, lines=lines,
                 end_line=end_line)


def read_header(path: str | os.PathLike) -> dict:
    """Just the header (validated)."""
    paths = trace_files(path)
    if _sniff(paths[0]) != "jsonl":
        return _columnar().Reader(paths[0]).header
    scan = _scan(paths[0])
    try:
        return next(scan)[2]
    finally:
        scan.close()


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the records after the header (the end record included) without loading the file;
    a truncated tail is skipped silently (read_trace reports it)."""
    for _, rec in iter_numbered(path):
        yield rec


def iter_numbered(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) for the records after the header, the end record included; a truncated
    tail is skipped silently. Compact traces and parts: (the record's 0-based row over the set, record)."""
    paths = trace_files(path)
    if len(paths) == 1 and _sniff(paths[0]) == "jsonl":
        scan = _scan(paths[0])
        next(scan)
        for _, lineno, rec in scan:
            if rec is not None:
                yield lineno, rec
        return
    yield from open_trace(paths).rows()


def follow_trace(path: str | os.PathLike, poll_s: float = 0.1,
                 stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Yield records as another process appends them: the header first, then each whole line as
    it lands. Ends after yielding the end record, or when ``stop()`` returns true (checked on
    every poll). A file that exists but has no header line yet is waited for."""
    path = os.fspath(path)
    with _open(path) as f:
        buf = b""
        offset = 0   # file offset of buf[0]
        lineno = 0
        while True:
            chunk = f.read(1 << 20)
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    lineno += 1
                    if lineno == 1:
                        rec = _parse_header(path, raw)
                    else:
                        rec = _parse_record(path, raw, offset, lineno)
                    offset += len(raw) + 1
                    if rec is None:
                        continue
                    yield rec
                    if rec["type"] == END:
                        return
            if stop is not None and stop():
                return
            if not chunk:
                time.sleep(poll_s)
