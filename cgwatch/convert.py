"""``cgwatch convert IN OUT``: a trace from one format to the other, losslessly (docs/TRACE_FORMAT.md).

OUT ending in ``.jsonl`` gets JSON Lines; any other name the compact format (Parquet for ``*.parquet``, an
Arrow IPC stream otherwise). IN is any trace: either format, the parts of a rotated run (they become one
file), or sample:NAME. Every record is written as it was read, those the readers' validation would skip
included; a damaged or truncated IN is converted up to its last whole record, with its one warning line.
"""

from __future__ import annotations

import os
import sys

from cgwatch.errors import CgwatchError
from cgwatch.records import END
from cgwatch.trace import (Trace, _dumps, _earlier_parts_missing, _scan, _sniff, iter_numbered, open_trace,
                           read_header, trace_files)

CHUNK = 1 << 16


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="a trace to JSON Lines (OUT.jsonl) or the compact format (any other name)")
    p.add_argument("trace", help="a trace (either format; a rotated run's parts, a glob) or sample:NAME")
    p.add_argument("output", help="OUT.jsonl: JSON Lines; OUT.parquet: Parquet; any other name: Arrow IPC stream")
    p.set_defaults(func=run)


def convert(src, out: str) -> tuple[int, list[str]]:
    """Write ``src`` (open_trace's argument) to ``out``; (records written after the header, warnings)."""
    paths = trace_files(src)
    if any(os.path.exists(out) and os.path.samefile(out, p) for p in paths):
        raise CgwatchError(f"output {out} is one of the input files; choose another name")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CgwatchError(f"cannot write {out}: directory {parent} does not exist")
    if len(paths) == 1 and _sniff(paths[0]) == "jsonl":
        tr = None                    # JSON Lines: streamed, never held whole
        header, state = read_header(paths[0]), {}
        records = _jsonl_records(paths[0], state)
    else:
        tr = open_trace(paths)
        header = dict(tr.header)
        records = (rec for _, rec in iter_numbered(paths))
    if len(paths) > 1:
        header.pop("part", None)     # the parts become one file
    n = 0
    if out.endswith(".jsonl"):
        tmp = f"{out}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(_dumps(header))
                for rec in records:
                    f.write(_dumps(rec))
                    n += 1
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    elif tr is not None and tr.compact is not None:   # compact to compact: the batches as they are, no record decoded
        from cgwatch import columnar
        n = columnar.write_table(out, header, tr.batches())
    else:
        def chunks():
            buf = []
            for rec in records:
                buf.append(rec)
                if len(buf) >= CHUNK:
                    yield buf
                    buf = []
            if buf:
                yield buf
        from cgwatch import columnar
        n = columnar.write_table(out, header, chunks())
    if tr is None:   # what the streamed file's Trace would say
        tr = Trace(header, [], state["end"], state.get("truncated_at"), paths[0],
                   notes=_earlier_parts_missing(paths[0], header))
        tr.file_records = state["n"]
    return n, tr.warnings()


def _jsonl_records(path: str, state: dict):
    """A JSON Lines trace's records after the header, streamed; ``state`` gets its end record, truncation and
    the records after the header (``n``)."""
    scan = _scan(path)
    next(scan)
    n, state["end"] = 0, None
    for offset, _, rec in scan:
        if rec is None:
            state["truncated_at"] = offset
        else:
            n += 1
            if rec["type"] == END:
                state["end"] = rec
            yield rec
    state["n"] = n


# names of what export writes, not a trace: convert would write a trace under them
_EXPORTS = {".csv": "csv", ".json": "perfetto", ".pftrace": "pftrace", ".perfetto-trace": "pftrace"}


def run(a) -> int:
    if a.output in ("", "-"):
        raise CgwatchError(f"convert needs a file name for OUT, not {a.output!r} (a trace is not written to stdout)")
    ext = os.path.splitext(a.output)[1].lower()
    if ext in _EXPORTS:
        raise CgwatchError(f"{a.output}: convert writes traces (.jsonl, .parquet, or another name: Arrow IPC); "
                           f"for {ext} use cgwatch export --format {_EXPORTS[ext]}")
    try:
        n, warnings = convert(a.trace, a.output)
    except OSError as e:
        raise CgwatchError(f"cannot write {a.output}: {e.strerror or e}") from None
    for w in warnings:
        print(f"cgwatch: warning: {w}", file=sys.stderr)
    kind = "JSON Lines" if a.output.endswith(".jsonl") else "Parquet" if a.output.endswith(".parquet") \
        else "Arrow IPC stream"
    print(f"{a.output}: {n:,} records after the header ({kind}, {os.path.getsize(a.output):,} bytes)")
    return 0
