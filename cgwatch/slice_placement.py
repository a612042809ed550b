"""Where each slice of a timeline export starts (``cgwatch export --format pftrace``), in integer ns.

export.py's rule: a track's slices go one after the other in t order (a host slice starts at max(t, the end
of the one before); a GPU slice at max(t, the end of the one before plus its step's gap_us)), and two slices of
a track never touch (pftrace: a slice that would start where the previous one ended starts 1 ns later). In
ns that is a max-plus prefix scan (``_starts``), exact in int64.

Two ways to run it over a trace: ``placement`` (the whole trace in t order: one pass over t and the four
durations, then one sort) and ``Placer`` (a batch at a time, in the export's own pass: each batch sorted by t
on its own, each track carried over from the batch before; it gives up, returning None, where a batch's slice
sorts before an earlier batch's, and the caller takes ``placement``). Both give the same starts.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .export import MAX_NS
from .perfetto_columnar import _t_keys
COLUMNS = ["type", "t_us", "json", "host_us", "host_ms", "gpu_ms", "gap_us"]   # what placement reads


def ns(us: np.ndarray) -> np.ndarray:
    """µs (NaN: 0) as integer ns, at most MAX_NS (export.slice_ns: one value)."""
    x = np.round(np.minimum(us, MAX_NS / 1e3) * 1e3)
    x[np.isnan(x)] = 0
    return x.astype(np.int64)


def _starts(t: np.ndarray, dur: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Slice starts on one track, its slices in t order: s_k = max(t_k, s_(k-1) + dur_(k-1) + gap_k), as
    S_k + max over j <= k of (t_j - S_j), S the prefix sums of dur_(k-1) + gap_k (int64 ns: exact). Works in
    place: ``t`` (a copy) becomes the result."""
    if not len(t):
        return t
    s = np.zeros(len(t), dtype=np.int64)
    np.add(dur[:-1], gap[1:], out=s[1:])
    np.cumsum(s, out=s)
    t -= s
    np.maximum.accumulate(t, out=t)
    t += s
    return t


def starts_after(t: np.ndarray, dur: np.ndarray, gap: np.ndarray, end: int | None) -> np.ndarray:
    """``_starts`` of slices that follow a track's earlier ones, ``end`` being where the last of those ended
    (None: no slice before): the first starts no earlier than end + its gap."""
    t = t.copy()
    if end is not None and len(t):
        t[0] = max(int(t[0]), end + int(gap[0]))
    return _starts(t, dur, gap)


def _row_values(b: pa.RecordBatch) -> dict:
    """t (s, NaN where none), and host_us / host_ms / gpu_ms / gap_us (NaN where none) of a batch's rows, a
    JSON row's from its text."""
    out = {"t": A.ints(b.column("t_us"), 0) / 1e6}
    out["t"][A.null(b.column("t_us"))] = np.nan
    for k in ("host_us", "host_ms", "gpu_ms", "gap_us"):
        out[k] = A.floats(b.column(k))
    js = b.column("json")
    for r in np.flatnonzero(~A.null(js)).tolist():
        rec = C._decode_json(js[r].as_py())
        for k in out:
            v = rec.get(k)
            out[k][r] = v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else np.nan
    return out


def _rows(b: pa.RecordBatch, ok: np.ndarray, newest: float):
    """One batch's sort keys (export.py's: t, or the newest t before a row without one), its host and GPU
    slice durations (ns; -1: no slice, or a row left out) and the gaps before its GPU slices (ns, >= 1)."""
    v = _row_values(b)
    key = _t_keys(v["t"], newest)
    kind = A.codes_in(b.column("type"), [R.STEP, R.PREFILL])
    host_us = np.where(kind == 0, v["host_us"], v["host_ms"] * 1e3)
    host = np.where(ok & (kind >= 0) & np.isfinite(host_us), ns(host_us), -1)
    gpu = np.where(ok & (kind == 0) & np.isfinite(v["gpu_ms"]), ns(v["gpu_ms"] * 1e3), -1)
    return key, host, gpu, np.maximum(ns(v["gap_us"]), 1)


def placement(trace, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the whole trace: the start (ns) of its host slice and of its GPU slice, -1 where it has
    none. Reads COLUMNS; keeps 32 bytes a row."""
    keys, host, gpu, gaps = [], [], [], []
    newest, base = -math.inf, 0
    for b in trace.batches(COLUMNS, dictionary=True):
        key, h, g, gap = _rows(b, ~bad[base:base + b.num_rows], newest)
        base += b.num_rows
        if len(key):
            newest = max(newest, float(key.max()))
        keys.append(key)
        host.append(h)
        gpu.append(g)
        gaps.append(gap)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    key = np.concatenate(keys)
    keys.clear()
    order = np.argsort(key, kind="stable")
    t_ns = ns(key * 1e6)
    del key
    out = []
    for parts, gap in ((host, None), (gpu, gaps)):
        dur = np.concatenate(parts)
        parts.clear()
        rows = order[dur[order] >= 0]
        step = np.ones(len(rows), np.int64) if gap is None else np.concatenate(gap)[rows]
        starts = np.full(len(dur), -1, dtype=np.int64)
        starts[rows] = _starts(t_ns[rows], dur[rows], step)
        out.append(starts)
        del dur, rows, step
    return out[0], out[1]


class Placer:
    """``placement`` a batch at a time, for an export's single pass over the trace. A slice is placed once the
    trace has moved ``window_s`` past it (its key): rows come in t order but for a few late ones (a step's
    record waits for its GPU time, so a prefill after it may be written first), and a later batch may hold a
    slice that sorts before one of this batch's. ``batch`` hands out the rows whose placement is final, as
    units (batch, its first row's number in the trace, rows of it, host starts, GPU starts: -1 where none),
    the rows without a slice of a batch with the batch's first unit; ``flush`` the rest at the end. It gives up
    (None) when a slice sorts before one already placed: then only ``placement`` is right."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.newest = -math.inf
        self.placed_key = -math.inf             # the newest key placed
        self.end: list = [None, None]           # per track (host, GPU): where its last slice placed ends
        self.pending: list[dict] = []           # per batch with slices not yet placed: its arrays
        self.batches: dict[int, pa.RecordBatch] = {}

    def batch(self, b: pa.RecordBatch, ok: np.ndarray, base: int) -> list | None:
        key, host, gpu, gap = _rows(b, ok, self.newest)
        n = len(key)
        if not n:
            return [(b, base, np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64))]
        self.newest = max(self.newest, float(key.max()))
        sliced = (host >= 0) | (gpu >= 0)
        rows = np.flatnonzero(sliced)
        if len(rows) and float(key[rows].min()) < self.placed_key:
            return None                          # sorts before a slice already placed
        self.batches[base] = b
        self.pending.append({"key": key[rows], "row": rows, "base": np.full(len(rows), base, np.int64),
                             "t": ns(key[rows] * 1e6), "host": host[rows], "gpu": gpu[rows], "gap": gap[rows]})
        units = self._place(self.newest - self.window_s)
        first = ~sliced & ok                     # the batch's (accepted) rows without a slice go now
        mine = next((k for k, u in enumerate(units) if u[1] == base), None)
        if mine is None:
            units.append((b, base, first, np.full(n, -1, np.int64), np.full(n, -1, np.int64)))
        else:
            u = units[mine]
            units[mine] = (b, base, u[2] | first, u[3], u[4])
        return units

    def flush(self) -> list:
        """The slices still pending, placed (the end of the trace)."""
        return self._place(math.inf)

    def _place(self, cut: float) -> list:
        """Place the pending slices with keys up to ``cut`` (in (key, row) order); their units."""
        if not self.pending:
            return []
        p = {k: np.concatenate([x[k] for x in self.pending]) for k in self.pending[0]} if len(self.pending) > 1 \
            else self.pending[0]
        order = np.argsort(p["key"], kind="stable")   # pending rows are in (base, row) order: ties keep it
        done = order[:int(np.searchsorted(p["key"][order], cut, side="right"))]
        keep = np.ones(len(order), bool)
        keep[done] = False
        self.pending = [{k: v[keep] for k, v in p.items()}] if keep.any() else []
        if not len(done):
            return []
        self.placed_key = max(self.placed_key, float(p["key"][done[-1]]))
        starts = []
        for track, name in enumerate(("host", "gpu")):
            sel = done[p[name][done] >= 0]
            out = np.full(len(p["key"]), -1, np.int64)
            starts.append(out)
            if not len(sel):
                continue
            d = p[name][sel]
            g = np.ones(len(sel), np.int64) if name == "host" else p["gap"][sel]
            s = starts_after(p["t"][sel], d, g, self.end[track])
            out[sel] = s
            self.end[track] = int(s[-1] + d[-1])
        units = []
        for base in np.unique(p["base"][done]).tolist():
            sel = done[p["base"][done] == base]
            b = self.batches[base]
            n = b.num_rows
            mask, host, gpu = np.zeros(n, bool), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
            r = p["row"][sel]
            mask[r], host[r], gpu[r] = True, starts[0][sel], starts[1][sel]
            units.append((b, base, mask, host, gpu))
        live = set(np.unique(np.concatenate([x["base"] for x in self.pending])).tolist()) if self.pending else set()
        self.batches = {k: v for k, v in self.batches.items() if k in live}
        return units
