"""``cgwatch export --format pftrace``: Perfetto's own protobuf trace, built by column (protowire.Rows).

The tracks, slices, counters and args of the JSON export (export.py's docstring) as TracePackets of
TrackEvents: a quarter of the JSON's size, written a column batch at a time, and Perfetto's own format (it
calls JSON a legacy one; the UI works in the browser's memory, typically ~2 GB). Where it differs from the
JSON:

- A slice is two events, SLICE_BEGIN and SLICE_END. Perfetto sorts all events by time (ties in file order),
  so the file is written a batch at a time, not in t order; but two slices of a track must never touch (an
  END and the next BEGIN at one time could close the wrong slice): a slice that would start where the
  previous one ended starts 1 ns later.
- A step's counters (host launch, GPU gap, batch rows / padded / requests, the ranks' step ms and skew) are
  extra counter values of its host slice's BEGIN: at the slice's start (t, unless shifted).
- A flow arrow joins each step's host slice to its GPU slice.
- Times are ns (t_us x 1000). The trace's facts (source, model, GPU, placement notes, counts) are the args
  of an "export info" instant at t = 0 on the events track.

Where each slice starts (export.py: host slices one after the other, a GPU slice no earlier than the end of
the one before plus the step's gap_us) is slice_placement.py's max-plus scan in integer ns. For a compact trace
written to a file, the export is one pass: each batch screened (fold.Screening), placed (slice_placement.Placer)
and written; where that pass meets what needs the whole trace (steps out of order, a slice sorting before an
earlier batch's), export.py starts the file again from the screen's passes and the whole trace's placement. A
JSON Lines trace is encoded into the same columns first (columnar.encode), so every trace takes this one path.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .event_text import event_text
from .fold import INERT as SCREEN_INERT
from .fold import _no_values, always, inert_to_both
from .export import (REORDER_WINDOW_S, ALERTS, CAPTURE_PLACEMENT, EVENTS, EXPORT_WINDOW, GPU, GPU_PLACEMENT,
                     GRAPH_EVENTS, GRAPHS, HOST, SAMPLE_COUNTERS, TRACKS, _args, _process_name, _short)
from .slice_placement import Placer, ns, placement
from .read_ahead import ahead
from .protowire import Rows, field_bytes, field_double, field_varint

SEQ = 1                                    # one packet sequence (trusted_packet_sequence_id)
SEQ_CLEARED, SEQ_NEEDS = 1, 2              # TracePacket.sequence_flags
BEGIN, END, INSTANT, COUNTER = 1, 2, 3, 4  # TrackEvent.type
NS, COUNT = 1, 2                           # CounterDescriptor.Unit: UNIT_TIME_NS, UNIT_COUNT
PROCESS = 1                                # the process track's uuid; a slice track's uuid is 1 + its tid
# debug annotation names, interned once (InternedData.debug_annotation_names): iid = index + 1
ARG_NAMES = ("i", "batch", "rows", "padded", "bucket", "target", "reason", "prompt_tokens", "tokens", "shifted_us",
             "plan_us", "skew_ms", "requests", "host_ms")
IID = {k: n + 1 for n, k in enumerate(ARG_NAMES)}


def _packet_head(seq_flags: int) -> bytes:
    return field_varint(10, SEQ) + (field_varint(13, seq_flags) if seq_flags else b"")


# ---- tracks and names ----

class Declared:
    """Track uuids and interned event names, and the packets that declare the ones not yet written (they go
    before any packet that uses them)."""

    def __init__(self, header: dict):
        self.uuid: dict[str, int] = {}
        self.iid: dict[str, int] = {}
        self.pending: list[bytes] = []
        proc = field_varint(1, 1) + field_bytes(6, _process_name(header))
        self._describe(PROCESS, field_bytes(3, proc) + field_varint(11, 3))   # children in explicit order

    def _describe(self, uuid: int, body: bytes) -> None:
        self.pending.append(field_bytes(1, field_varint(10, SEQ) + field_bytes(60, field_varint(1, uuid) + body)))

    def slices(self, tid: int) -> int:
        name = TRACKS[tid]
        if name not in self.uuid:
            self.uuid[name] = 1 + tid
            self._describe(1 + tid, field_varint(5, PROCESS) + field_bytes(2, name) + field_varint(12, tid))
        return self.uuid[name]

    def counter(self, name: str, unit: int = 0) -> int:
        """A counter track (unit: CounterDescriptor.Unit, 1 ns, 2 a count; 0: none, the name says)."""
        if name not in self.uuid:
            self.uuid[name] = uuid = 100 + len(self.uuid)
            desc = field_varint(3, unit) if unit else b""
            self._describe(uuid, field_varint(5, PROCESS) + field_bytes(2, name) + field_bytes(8, desc)
                           + field_varint(12, uuid))
        return self.uuid[name]

    def names(self, words: list[str]) -> np.ndarray:
        """The interned ids of event names (new ones declared)."""
        new = [w for w in dict.fromkeys(words) if w not in self.iid]
        if new:
            body = b""
            for w in new:
                self.iid[w] = len(self.iid) + 1
                body += field_bytes(2, field_varint(1, self.iid[w]) + field_bytes(2, w))
            self.pending.append(field_bytes(1, _packet_head(SEQ_NEEDS) + field_bytes(12, body)))
        return np.array([self.iid[w] for w in words], dtype=np.int64)

    def take(self) -> bytes:
        out, self.pending = b"".join(self.pending), []
        return out


class _Sel:
    """Some rows of a batch, a column at a time as numpy (arrow_np)."""

    def __init__(self, b: pa.RecordBatch, rows: np.ndarray):
        self.b, self.rows, self.n = b, rows, len(rows)

    def has(self, name: str) -> bool:
        return name in self.b.schema.names and self.b.column(name).null_count < self.b.num_rows

    def null(self, name: str) -> np.ndarray:
        return A.null(self.b.column(name))[self.rows]

    def ints(self, name: str, fill: int = -1) -> np.ndarray:
        return A.ints(self.b.column(name), fill)[self.rows]

    def floats(self, name: str) -> np.ndarray:
        return A.floats(self.b.column(name))[self.rows]

    def codes(self, name: str) -> tuple[np.ndarray, list]:
        c, words = A.codes(self.b.column(name))
        return c[self.rows], words

    def words(self, name: str, allowed, fallback: np.ndarray, extra: list[str]) -> tuple[np.ndarray, list[str]]:
        """A string column's codes, those not in ``allowed`` replaced by ``fallback`` (codes into ``extra``,
        appended to the words)."""
        codes, words = self.codes(name)
        ok = np.array([w in allowed for w in words] + [False], dtype=bool)[codes]
        return np.where(ok, codes, len(words) + fallback), words + extra


# ---- rows by column ----

def _event(n: int, typ: int, track: int | np.ndarray, name_iid=None) -> Rows:
    ev = Rows(n)
    ev.varint(9, typ)
    ev.varint(11, track)
    if name_iid is not None:
        ev.varint(10, name_iid)
    return ev


def _arg(ev: Rows, name: str, values, kind: str = "int", where=None, words=None) -> None:
    """A debug annotation (interned name): int, double or string (values: codes into ``words``)."""
    a = Rows(ev.n)
    a.varint(1, IID[name])
    if kind == "int":
        a.varint(4, values)
    elif kind == "double":
        a.double(5, values)
    else:
        a.string(6, values, words)
    ev.message(4, a, where)


def _count(ev: Rows, uuid: int, values: np.ndarray, where=None) -> int:
    """An extra (int) counter value of the event; returns how many rows have it."""
    ev.varint(31, uuid, where)
    ev.varint(12, values, where)
    return ev.n if where is None else int(where.sum())


def _packets(top: Rows, ts: np.ndarray, ev: Rows, where=None, flags: int = SEQ_NEEDS) -> None:
    p = Rows(top.n)
    p.varint(8, ts)
    p.raw(_packet_head(flags))
    p.message(11, ev)
    top.message(1, p, where)


def _name_ids(decl: Declared, key: np.ndarray, name_of) -> np.ndarray:
    """Interned name ids per row: one name per distinct ``key`` (int64), made by ``name_of(its first row)``."""
    u, first, inv = np.unique(key, return_index=True, return_inverse=True)
    return decl.names([name_of(k) for k in first.tolist()])[inv.reshape(-1)]


def steps(decl: Declared, c: _Sel, host_ts: np.ndarray, gpu_ts: np.ndarray, flow: np.ndarray,
          extra: list[bytes] | None, counts: Counter) -> list:
    """The packets of accepted step rows: a host slice with args and counters, a GPU slice, a flow."""
    n = c.n
    i, batch, target, bucket = (c.ints(k) for k in ("i", "batch", "target", "bucket"))
    rows = np.where(c.null("rows"), batch, c.ints("rows"))                                # records.step_rows
    graph = bucket >= 0
    padded = np.where(graph, bucket - rows, 0)
    mode, mode_w = c.words("runtime_mode", R.RUNTIME_MODES, np.where(graph, 1, 0),
                           [R.RUNTIME_NONE, R.RUNTIME_FULL])                               # step_runtime_mode
    phase, phase_w = c.words("phase", R.PHASES, np.zeros(n, np.int64), [R.PHASE_DECODE])  # step_phase
    reason, reason_w = c.codes("reason")
    pw = (np.array([w == R.RUNTIME_PIECEWISE for w in mode_w], dtype=bool)[mode] & graph).astype(np.int64)
    ph = np.array([R.PHASES.index(w) if w in R.PHASES else 0 for w in phase_w], dtype=np.int64)[phase]

    def name_of(k: int) -> str:                                                           # export.step_name
        tail = "" if ph[k] == 0 else f" {R.PHASES[ph[k]]}"
        if graph[k]:
            return f"graph b{bucket[k]}{' PIECEWISE' if pw[k] else ''}{tail}"
        why = reason_w[reason[k]] if reason[k] >= 0 else None
        return f"eager b{rows[k]}{tail}" + (f" ({why})" if why else "")
    key = (((np.where(graph, bucket, rows) * 2 + graph) * 2 + pw) * 4 + ph) * 1024 + np.where(graph, 0, reason + 1)
    name = _name_ids(decl, key, name_of)
    t_ns = c.ints("t_us", 0) * 1000
    host_us, gap_us = c.floats("host_us"), c.floats("gap_us")
    has_gpu, has_gap = gpu_ts >= 0, ~np.isnan(gap_us)
    prompt, tokens = c.ints("prompt_tokens", 0), c.ints("tokens")

    host = _event(n, BEGIN, decl.slices(HOST), name)
    host.fixed64(47, flow, has_gpu)
    _arg(host, "i", i)
    _arg(host, "batch", batch)
    _arg(host, "rows", rows)
    _arg(host, "padded", padded)
    _arg(host, "bucket", bucket, where=graph)
    _arg(host, "target", target, where=target >= 0)
    if reason_w:
        _arg(host, "reason", np.maximum(reason, 0), "str", where=reason >= 0, words=reason_w)
    _arg(host, "prompt_tokens", prompt, where=prompt > 0)
    _arg(host, "tokens", tokens, where=~c.null("tokens"))
    _arg(host, "shifted_us", (host_ts - t_ns) / 1e3, "double", where=host_ts > t_ns)
    for field in ("plan_us", "skew_ms"):   # tensor-parallel steps
        if c.has(field):
            v = c.floats(field)
            _arg(host, field, v, "double", where=~np.isnan(v))
    if extra is not None:
        host.rawrows(extra)
    values = _count(host, decl.counter("host launch", NS), ns(host_us))
    values += _count(host, decl.counter("GPU gap", NS), ns(gap_us), has_gap)
    for cname, v in (("batch rows", rows), ("batch padded", padded), ("batch requests", batch)):
        values += _count(host, decl.counter(cname, COUNT), v)
    if c.has("rank_ms"):
        off, vals, _ = A.list_floats(c.b.column("rank_ms"))
        per, _ = A.gather_lists(off, vals, c.rows)
        for r in range(per.shape[1]):
            values += _count(host, decl.counter(f"rank{r} step", NS), ns(per[:, r] * 1e3), np.isfinite(per[:, r]))
        skew = c.floats("skew_ms")
        values += _count(host, decl.counter("rank skew", NS), ns(skew * 1e3), ~np.isnan(skew))
    top = Rows(n)
    _packets(top, host_ts, host)
    _packets(top, host_ts + ns(host_us), _event(n, END, decl.slices(HOST)), flags=0)
    if has_gpu.any():
        gpu = _event(n, BEGIN, decl.slices(GPU), name)
        gpu.fixed64(48, flow)
        _arg(gpu, "i", i)
        _packets(top, gpu_ts, gpu, has_gpu)
        _packets(top, gpu_ts + ns(c.floats("gpu_ms") * 1e3), _event(n, END, decl.slices(GPU)), has_gpu, flags=0)
    ngpu = int(has_gpu.sum())
    counts["step"] += n
    counts["gpu"] += ngpu
    counts["counter"] += values
    counts["packets"] += 2 * n + 2 * ngpu
    return top.grouped()


def prefills(decl: Declared, c: _Sel, host_ts: np.ndarray, extra: list[bytes] | None, counts: Counter) -> list:
    """Host slices of prefill rows (those with one: host_ts >= 0)."""
    keep = host_ts >= 0
    if not keep.all():
        c, host_ts = _Sel(c.b, c.rows[keep]), host_ts[keep]
        extra = None if extra is None else [e for e, k in zip(extra, keep.tolist()) if k]
    n = c.n
    if not n:
        return []
    req = np.where(c.null("requests"), -1, c.ints("requests"))
    name = _name_ids(decl, req, lambda k: f"prefill {'None' if req[k] == -1 else req[k]} req")   # export.py's
    t_ns = c.ints("t_us", 0) * 1000
    ev = _event(n, BEGIN, decl.slices(HOST), name)
    for k in ("i", "requests", "tokens"):
        _arg(ev, k, c.ints(k), where=~c.null(k))
    host_ms = c.floats("host_ms")
    _arg(ev, "host_ms", host_ms, "double")
    _arg(ev, "shifted_us", (host_ts - t_ns) / 1e3, "double", where=host_ts > t_ns)
    if extra is not None:
        ev.rawrows(extra)
    top = Rows(n)
    _packets(top, host_ts, ev)
    _packets(top, host_ts + ns(host_ms * 1e3), _event(n, END, decl.slices(HOST)), flags=0)
    counts["prefill"] += n
    counts["packets"] += 2 * n
    return top.grouped()


def samples(decl: Declared, c: _Sel, counts: Counter) -> list:
    """Counter values of sample rows: one COUNTER event a measured field (per GPU where a tensor-parallel
    sample has ``gpus``: GPU 0 is the plain series)."""
    t_ns = c.ints("t_us", 0) * 1000
    ts, uuid, val = [], [], []
    for field, (name, unit, scale) in SAMPLE_COUNTERS.items():
        v = c.floats(field)
        ok = np.isfinite(v)
        if ok.any():
            ts.append(t_ns[ok])
            uuid.append(np.full(int(ok.sum()), decl.counter(f"{name} {unit}")))
            val.append(np.round(v[ok] * scale, 3) if scale != 1 else v[ok])
    if c.has("gpus"):
        col = c.b.column("gpus")
        off = A.list_offsets(col)
        lens = np.diff(off)[c.rows]
        items = A.list_items(off, c.rows)
        owner = np.repeat(np.arange(c.n), lens)
        gpu = A.ints(col.values.field("gpu"))[items]
        for field, (name, unit, scale) in SAMPLE_COUNTERS.items():
            if field not in C.GPU_KEYS:
                continue
            v = A.floats(col.values.field(field))[items]
            ok = np.isfinite(v) & (gpu > 0)
            for g in np.unique(gpu[ok]).tolist():
                sel = ok & (gpu == g)
                ts.append(t_ns[owner[sel]])
                uuid.append(np.full(int(sel.sum()), decl.counter(f"{name} gpu{g} {unit}")))
                val.append(np.round(v[sel] * scale, 3) if scale != 1 else v[sel])
    if not ts:
        return []
    ts, uuid, val = np.concatenate(ts), np.concatenate(uuid), np.concatenate(val)
    n = len(ts)
    ev = Rows(n)
    ev.varint(9, COUNTER)
    ev.varint(11, uuid)
    ev.double(44, val)
    top = Rows(n)
    _packets(top, ts, ev, flags=0)
    counts["counter"] += n
    counts["packets"] += n
    return top.grouped()


# ---- one record at a time: events, alerts, the end ----

def annotations(args: dict) -> bytes:
    """Debug annotations of a record's args (names as strings); null left out."""
    return b"".join(field_bytes(4, field_bytes(10, str(k)) + _annotation_value(v))
                    for k, v in args.items() if v is not None)


def _annotation_value(v) -> bytes:
    """A DebugAnnotation's value: bool, int, double, string; a dict as its entries, a list as its items
    (Perfetto shows both as a tree); anything else as its text."""
    if isinstance(v, bool):
        return field_varint(2, int(v))
    if isinstance(v, int) and -(1 << 63) <= v < 1 << 63:
        return field_varint(4, v)
    if isinstance(v, float):
        return field_double(5, v)
    if isinstance(v, (dict, list, tuple)) and not v:
        return field_bytes(6, "{}" if isinstance(v, dict) else "[]")   # (no entries would read as no value)
    if isinstance(v, dict):
        return b"".join(field_bytes(11, field_bytes(10, str(k)) + _annotation_value(x)) for k, x in v.items()
                        if x is not None)
    if isinstance(v, (list, tuple)):
        return b"".join(field_bytes(12, _annotation_value(x)) for x in v)
    return field_bytes(6, v if isinstance(v, str) else json.dumps(v, default=str))


def _one(ts: int, typ: int, track: int, name: str | None = None, args: dict | None = None) -> bytes:
    ev = field_varint(9, typ) + field_varint(11, track)
    if name is not None:
        ev += field_bytes(23, name)
    if args:
        ev += annotations(args)
    return field_bytes(1, field_varint(8, max(ts, 0)) + _packet_head(0) + field_bytes(11, ev))


class Events:
    """Events, alerts and the end record, as export._PerfettoWriter draws them: captures as slices on the CUDA
    graphs track (ending at their t), the rest as instants."""

    def __init__(self, decl: Declared, counts: Counter):
        self.decl, self.counts = decl, counts
        self.graphs_end = -(1 << 62)   # ns, the end of the last capture slice
        self.end: dict | None = None

    def add(self, rec: dict) -> bytes:
        typ = rec.get("type")
        t = rec.get("t")
        if typ not in (R.EVENT, R.END) or not isinstance(t, (int, float)) or not math.isfinite(t):
            self.counts["skipped"] += 1            # a record type this version does not know
            return b""
        t_ns = round(t * 1e9)
        if typ == R.END:
            self.end = rec
            return self._instant(EVENTS, "end", t_ns,
                                 f"end ({rec.get('outcome') or rec.get('error') or 'closed'})", _args(rec))
        kind = rec.get("kind")
        if kind == R.EV_CAPTURE:
            return self._capture(rec, t_ns)
        tid = ALERTS if kind == R.EV_ALERT else GRAPHS if kind in GRAPH_EVENTS else EVENTS
        return self._instant(tid, "alert" if kind == R.EV_ALERT else str(kind), t_ns, event_text(rec), _args(rec))

    def _instant(self, tid: int, cat: str, t_ns: int, name: str, args: dict) -> bytes:
        self.counts["instant"] += 1
        self.counts[f"instant {cat}"] += 1
        self.counts["packets"] += 1
        return _one(t_ns, INSTANT, self.decl.slices(tid), _short(name), args)

    def _capture(self, rec: dict, t_ns: int) -> bytes:
        s = rec.get("capture_s")
        dur = round(s * 1e9) if isinstance(s, (int, float)) and math.isfinite(s) and s > 0 else 0
        ts = max(t_ns - dur, self.graphs_end + 1)
        self.graphs_end = end = ts + dur
        name = f"capture b{rec.get('bucket')}"
        if not rec.get("ok", True):
            name += f" failed ({rec.get('cause') or 'error'})"
        track = self.decl.slices(GRAPHS)
        self.counts["capture"] += 1
        self.counts["packets"] += 2
        return (_one(max(ts, 0), BEGIN, track, _short(name), _args(rec) | {"placed": CAPTURE_PLACEMENT})
                + _one(max(end, 0), END, track))   # a capture before the run's t = 0: cut at 0


# ---- the trace ----

class RecordTable:
    """Records (a JSON Lines trace's) as the columns of a compact trace: ``batches()`` as columnar.Reader's."""

    def __init__(self, records, chunk: int = C.COMPACT_ROWS):
        self._batches, part = [], []
        for rec in records:
            part.append(rec)
            if len(part) == chunk:
                self._batches.append(C.encode(part))
                part = []
        if part:
            self._batches.append(C.encode(part))
        self.rows = sum(b.num_rows for b in self._batches)

    def batches(self, columns: list[str] | None = None, dictionary: bool = False, inert: dict | None = None):
        for b in self._batches:
            yield b if columns is None else b.select(columns)


def _split(b: pa.RecordBatch, ok: np.ndarray) -> dict:
    """A batch's accepted rows by what draws them: columnar steps, prefills and samples (row numbers), and
    the decoded rest (row, record)."""
    code = A.codes_in(b.column("type"), [R.STEP, R.PREFILL, R.SAMPLE])
    js = ~A.null(b.column("json"))
    out = {typ: np.flatnonzero(ok & ~js & (code == k)) for k, typ in enumerate((R.STEP, R.PREFILL, R.SAMPLE))}
    rest = np.flatnonzero(ok & (js | (code < 0)))
    from .fold import _decode_rows
    out["rest"] = list(zip(rest.tolist(), _decode_rows(b, rest)))
    return out


def _columnize(recs: list[tuple[int, dict]]) -> tuple[dict, list]:
    """Steps, prefills and samples kept as JSON (fields beyond the schema) as columns: (type -> (rows, batch,
    extra args as annotation bytes)); the records that are none of these, or do not fit, as they are."""
    by_type: dict = {}
    rest = []
    for row, rec in recs:
        if rec.get("type") in C.KEYS:
            by_type.setdefault(rec["type"], []).append((row, rec))
        else:
            rest.append((row, rec))
    out = {}
    for typ, items in by_type.items():
        keys = C.KEYS[typ]
        b = C.encode([_coerced(typ, rec) for _, rec in items])
        fits = A.null(b.column("json")).tolist()
        rest += [item for item, f in zip(items, fits) if not f]
        keep = [item for item, f in zip(items, fits) if f]
        if keep:
            out[typ] = (np.array([row for row, _ in keep], dtype=np.int64),
                        b.take(A.indices(np.flatnonzero(fits))),
                        [annotations({k: v for k, v in rec.items() if k != "type" and k not in keys})
                         for _, rec in keep])
    return out, rest


def _num(v, kind: str):
    """A number as a column of ``kind`` holds it ("f": float, else int), or v (not a number: it won't fit)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    return float(v) if kind == "f" else int(v) if isinstance(v, float) and v.is_integer() else v


def _coerced(typ: str, rec: dict) -> dict:
    """The schema's fields of a record, as its columns take them (key order, ints as floats where the column is
    float, t to the µs, a ``gpus`` item's keys filled): what the JSON drew from a record the columns could not
    hold exactly."""
    out = {"type": typ}
    for k in C.KEYS[typ]:
        if k not in rec:
            continue
        v, kind = rec[k], C.COLUMNS[k][2]
        if kind == "t":
            v = round(float(v), 6) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        elif kind == "lf" and isinstance(v, list):
            v = [_num(x, "f") if isinstance(x, (int, float)) else None for x in v]
        elif kind == "gpus" and isinstance(v, list):
            v = [{g: _num(item.get(g), "f" if g == "power_w" else "i") for g in C.GPU_KEYS}
                 if isinstance(item, dict) else item for item in v]
        elif kind in ("f", "i32", "i64"):
            v = _num(v, kind)
        out[k] = v
    return out


# Columns a Parquet row group need not decode (columnar.Reader.batches reads them as all null): a step's mode
# and padded (drawn from its bucket and rows) and a sample's total memory are not drawn; all-null
# tensor-parallel columns draw nothing.
INERT = {**dict.fromkeys(("mode", "padded", "mem_total_bytes"), always),
         **dict.fromkeys(("gpus", "plan_us", "rank_ms", "skew_ms"), _no_values)}


class Fallback(Exception):
    """The single pass (``export`` with a screening) met what only the whole trace settles: steps out of i or t
    order (the screen's second pass), or a slice that sorts before an earlier batch's (``placement``)."""


def export(trace, out, header: dict, bad: np.ndarray | None, source: str, screening=None) -> tuple[Counter, bool]:
    """Write the whole trace (``bad``: rows left out) to the binary stream ``out``; returns the counts and
    whether it has an end record. ``bad`` None: ``screening`` (fold.Screening) screens each batch in this
    same pass and the slices are placed a batch at a time; raises Fallback where that cannot be right."""
    counts: Counter = Counter()
    decl = Declared(header)
    names = b"".join(field_bytes(3, field_varint(1, IID[k]) + field_bytes(2, k)) for k in ARG_NAMES)
    out.write(field_bytes(1, _packet_head(SEQ_CLEARED) + field_bytes(12, names)))
    events = Events(decl, counts)
    for b, base, ok, host_ts, gpu_ts in ahead(_placed(trace, bad, screening)):
        parts = _split(b, ok)
        extra_cols, rest = _columnize(parts.pop("rest"))
        chunks = []
        for typ in (R.STEP, R.PREFILL, R.SAMPLE):
            pieces = [(_Sel(b, parts[typ]), None)]
            if typ in extra_cols:
                rows, sub, extra = extra_cols[typ]
                pieces.append((_Sel(sub, np.arange(sub.num_rows)), extra, rows))
            for piece in pieces:
                c, extra = piece[0], piece[1]
                if not c.n:
                    continue
                at = piece[2] if len(piece) > 2 else c.rows   # rows of this batch
                if typ == R.STEP:
                    chunks += steps(decl, c, host_ts[at], gpu_ts[at], (base + at + 1).astype(np.uint64), extra,
                                    counts)
                elif typ == R.PREFILL:
                    chunks += prefills(decl, c, host_ts[at], extra, counts)
                else:
                    chunks += samples(decl, c, counts)
        rest.sort(key=lambda x: (_t_of(x[1]), x[0]))
        chunks.extend(events.add(rec) for _, rec in rest)
        out.write(decl.take())   # the tracks and names these packets use, before them
        for chunk in chunks:
            out.write(chunk)
    meta = {"source": os.path.abspath(source), "format": header.get("format"), "version": header.get("version"),
            **{k: header.get(k) for k in ("cgwatch", "started", "gpu", "dtype", "torch", "device")},
            "model": (header.get("model") or {}).get("name"), "complete": events.end is not None,
            "outcome": (events.end or {}).get("outcome"), "time_origin": "ts 0 = the run's t = 0",
            "gpu_placement": GPU_PLACEMENT, "capture_placement": CAPTURE_PLACEMENT,
            "slices_touching": "a slice that would start where the previous one on its track ended starts 1 ns later",
            **({"window": header[EXPORT_WINDOW]} if header.get(EXPORT_WINDOW) else {}),
            "counts": json.dumps(dict(counts), separators=(",", ":"), sort_keys=True)}
    info = _one(0, INSTANT, decl.slices(EVENTS), "export info", meta)
    out.write(decl.take() + info)
    counts["packets"] += 1
    return counts, events.end is not None


def _placed(trace, bad: np.ndarray | None, screening):
    """(batch, its first row's number, the rows of it to write now, their host and GPU slice starts) in turn
    (export's arguments): each batch whole, or with a screening, the rows the Placer has placed."""
    if screening is None:
        host_ts, gpu_ts = placement(trace, bad)
        base = 0
        for b in trace.batches(dictionary=True, inert=INERT):
            n = b.num_rows
            yield b, base, ~bad[base:base + n], host_ts[base:base + n], gpu_ts[base:base + n]
            base += n
        return
    placer, base = Placer(REORDER_WINDOW_S), 0
    for b in trace.batches(dictionary=True, inert=inert_to_both(INERT, SCREEN_INERT)):
        ok = ~screening.batch(b)
        if not screening.trusted:
            raise Fallback("steps out of order")
        units = placer.batch(b, ok, base)
        if units is None:
            raise Fallback("a slice before one already placed")
        yield from units
        base += b.num_rows
    yield from placer.flush()


def _t_of(rec: dict) -> float:
    t = rec.get("t")
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) else math.inf
