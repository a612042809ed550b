"""The trace file: versioned, streaming, append-only JSON Lines (docs/TRACE_FORMAT.md).

Line 1 is the header, then one compact JSON object per line (records.py), and on a clean close an
``end`` record. A file is readable while it is written: readers take whole lines only, and a
partial last line (crash, kill, or a writer still mid-flush) is a truncated tail, not an error.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import jsonl
from .errors import CgwatchError
from . import records as R
from .records import END, HEADER

FORMAT = "cgwatch-trace"
VERSION = 1             # the newest format version this code writes and reads
FLUSH_INTERVAL_S = 0.2  # write() flushes at most this often; flush()/close() flush at once


class TraceError(CgwatchError):
    """A trace file that cannot be read: missing, not a trace, too new, or corrupt."""


_encode, _decode = jsonl.dumps, jsonl.loads


def _dumps(rec: dict) -> str:
    return _encode(rec) + "\n"


class TraceWriter:
    """Writes one trace file. Thread-safe; ``write`` is cheap enough for the per-step hot path.

    ``t0`` is the run's time origin on the ``time.perf_counter()`` clock (the engine's; default:
    now); it only sets the end record's ``t`` when the summary gives none. A write after close is dropped silently
    (a sampler thread may race the close).
    """

    def __init__(self, path: str | os.PathLike, header: dict, t0: float | None = None):
        self.path = os.fspath(path)
        self._t0 = time.perf_counter() if t0 is None else t0
        self._lock = threading.Lock()
        self._closed = False
        self._last_flush = 0.0
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise CgwatchError(f"cannot write trace {self.path}: directory {parent} does not exist")
        try:
            self._f = open(self.path, "w", encoding="utf-8", newline="", buffering=1 << 16)
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None
        # type/format/version come first and cannot be overridden by the metadata
        head = {"type": HEADER, "format": FORMAT, "version": VERSION}
        head.update((k, v) for k, v in header.items() if k not in head)
        self._put(_dumps(head))
        self.flush()

    def _put(self, line: str) -> None:
        try:
            self._f.write(line)
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None

    def write(self, rec: dict) -> None:
        line = _dumps(rec)  # serialize outside the lock
        with self._lock:
            if self._closed:
                return
            self._put(line)
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_INTERVAL_S:
                self._flush_locked(now)

    def _flush_locked(self, now: float) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise CgwatchError(f"cannot write trace {self.path}: {e.strerror or e}") from None
        self._last_flush = now

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush_locked(time.monotonic())

    def close(self, summary: dict | None = None) -> None:
        """Write the end record (``t`` plus ``summary``), flush, fsync, close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                end = {"type": END, "t": round(time.perf_counter() - self._t0, 6)}
                end.update((k, v) for k, v in (summary or {}).items() if k != "type")
                self._put(_dumps(end))
                self._flush_locked(time.monotonic())
                try:
                    os.fsync(self._f.fileno())
                except OSError as e:  # e.g. a pipe or /dev/null: nothing to sync
                    if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
                        raise CgwatchError(f"cannot write trace {self.path}: {e.strerror}") from None
            finally:
                self._f.close()

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


# ---- reading ----

@dataclass
class Trace:
    header: dict
    records: list[dict]               # everything after the header, the end record excluded
    end: dict | None = None           # the end record; None if the run did not close the trace
    truncated_at: int | None = None   # byte offset of a partial last line, if any
    path: str = ""
    lines: list[int] | None = None    # the line number of each record (None: not read from a file)
    end_line: int | None = None       # the end record's line number
    _screened: "Screened | None" = field(default=None, init=False, repr=False, compare=False)

    def warnings(self) -> list[str]:
        out = []
        if self.truncated_at is not None:
            out.append(f"trace truncated at byte {self.truncated_at} after {len(self.records)} "
                       "records (the run did not close it: crash or kill?)")
        elif self.end is None:
            out.append("no end record: the run did not finish cleanly")
        if self.end is not None and self.end.get("error"):
            out.append(f"the run ended on an error: {self.end['error']}")
        return out

    def numbered(self) -> Iterator[tuple[int, str, dict]]:
        """(key, where, record) for every record and the end record, in file order: what records.screen takes
        (where: "line N" for a file, "record N" (1-based, after the header) for a Trace built in memory)."""
        for k, rec in enumerate(self.records):
            yield k, (f"line {self.lines[k]}" if self.lines else f"record {k + 1}"), rec
        if self.end is not None:
            n = len(self.records)
            yield n, (f"line {self.end_line}" if self.end_line else f"record {n + 1}"), self.end

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
    if (not isinstance(head, dict) or head.get("type") != HEADER or head.get("format") != FORMAT
            or not isinstance(head.get("version"), int) or head["version"] < 1):
        raise TraceError(f"{path} is not a cgwatch trace (bad header at byte 0)")
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


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a whole trace. Unknown record types are kept; a truncated tail sets ``truncated_at``."""
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
    path = os.fspath(path)
    scan = _scan(path)
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
    tail is skipped silently."""
    scan = _scan(os.fspath(path))
    next(scan)
    for _, lineno, rec in scan:
        if rec is not None:
            yield lineno, rec


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
