"""``cgwatch export --format perfetto`` of a compact trace: the record path's events, built by column.

export.py puts the records back in t order (``_InOrder``: a heap over a 10 s window) and writes each through
``_PerfettoWriter``. When no record comes more than that window late (``in_order``; every cgwatch trace: its
two writer threads are milliseconds apart), that order is a stable sort by t, which this module takes a column
batch at a time: the rows are sorted by (t, row) within the rows still pending, and those that no later row
can precede are written, a chunk at a time (``_Chunks``):

- in order, on the calling thread (``_place``): where each host and GPU slice starts (it depends on the slice
  before on its track) is one scan over the chunk in integer ns (``slice_placement.starts_after``, the rule
  the writer applies a record at a time), and every row the columns do not word (events, rows kept as JSON)
  is decoded and goes through the writer, its track ends set to where the scan put them;
- in a pool of threads (``_build``): steps (one rank or tensor-parallel), prefills and samples (per-GPU
  fields too) become text by column (``_step_text``, ``_prefill_text``, ``_sample_text``: pyarrow joins of
  each field's text), the very text json.dumps gives the record path's events (the same keys in the same
  order, ``str`` of the same ints, ``repr`` of the same floats);
- in order, by a writer thread: the chunk's text as the bytes of one Arrow string array (export_columnar's
  writer of bytes; the export is ASCII: json.dumps escapes).

A trace with a record later than the window takes the record path (export.py).
"""
from __future__ import annotations

import io
import json
import math
from collections import Counter, deque

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .export import GPU, HOST, REORDER_WINDOW_S, SAMPLE_COUNTERS, _is_number
from .export_columnar import (BUILDERS, _bytes_writer, _column, _data, _encode, _float_words, _ints_text, _mask, _s,
                              strings)

_NAMES: dict[str, str] = {}


def _q(text: str) -> str:
    """A string as json.dumps writes it (cached: few distinct names)."""
    got = _NAMES.get(text)
    if got is None:
        got = _NAMES[text] = json.dumps(text)
    return got


def _t_keys(t: np.ndarray, newest: float) -> np.ndarray:
    """_InOrder's sort key: t, or for a row without a number t, max(the newest t before it, 0)."""
    missing = np.isnan(t)
    if not missing.any():
        return t
    key = t.copy()
    run = np.maximum.accumulate(np.concatenate([[newest], np.where(missing, -np.inf, t)]))[:-1]
    key[missing] = np.maximum(run[missing], 0.0)
    return key


def in_order(trace, bad: np.ndarray) -> bool:
    """Whether no accepted record comes more than the window after a later one (then _InOrder's order is the
    stable sort by t, and nothing is late). Reads t_us, type and json."""
    newest, base = -math.inf, 0
    for b in trace.batches(["t_us", "json"]):
        n = b.num_rows
        t = _row_t(b)[~bad[base:base + n]]
        base += n
        if not len(t):
            continue
        key = _t_keys(t, newest)
        run = np.maximum.accumulate(np.concatenate([[newest], key]))
        if bool((key < run[:-1] - REORDER_WINDOW_S).any()):
            return False
        newest = float(run[-1])
    return True


def _row_t(b) -> np.ndarray:
    """t per row: t_us / 1e6, a JSON row's t where it is a finite number, else NaN."""
    t = A.ints(b.column("t_us"), 0) / 1e6
    js = b.column("json")
    null_t = A.null(b.column("t_us"))
    t[null_t] = np.nan
    for r in np.flatnonzero(~A.null(js)).tolist():
        v = C._decode_json(js[r].as_py()).get("t")
        t[r] = v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else np.nan
    return t


# what a row becomes: text built by column (a step, a prefill, a sample), or a record through the writer
V_STEP, V_PREFILL, V_SAMPLE, WRITER = 0, 1, 2, 3
_INTS = ("i", "batch", "rows", "target", "bucket", "prompt_tokens", "tokens", "requests")   # -1: null
_FLOATS = ("host_us", "gpu_ms", "gap_us", "host_ms")                                         # NaN: null
_STRS = ("runtime_mode", "phase", "reason")
_WORD_IDS: dict = {}    # a string column's words, numbered the same over batches (added to by _columns only:
_WORD_LIST: list = []   # the builder threads read it, and the words they look up are there from the start)


def _word_id(word: str | None) -> int:
    k = _WORD_IDS.get(word)
    if k is None:
        k = _WORD_IDS[word] = len(_WORD_LIST)
        _WORD_LIST.append(word)
    return k


for _w in (None, *R.RUNTIME_MODES, *R.PHASES):
    _word_id(_w)


def export(trace, w, bad: np.ndarray) -> None:
    """All accepted rows through the writer ``w`` (export._PerfettoWriter), in _InOrder's order: each chunk's
    slices placed and its writer rows written here, in order; its text built in a pool of BUILDERS threads
    (pyarrow's kernels run without the GIL) and written by another, in order; the batches read in another
    (read_ahead)."""
    from concurrent.futures import ThreadPoolExecutor

    from .read_ahead import ahead
    pend: dict | None = None
    newest, base = -math.inf, 0
    with ThreadPoolExecutor(BUILDERS) as builders, ThreadPoolExecutor(1) as writer:
        out = _Chunks(w, builders, writer, _bytes_writer(w.out))   # the text as bytes, past the text layer
        for b in ahead(trace.batches(dictionary=True)):
            n = b.num_rows
            ok = np.flatnonzero(~bad[base:base + n])
            base += n
            if not len(ok):
                continue
            cols = _columns(b.take(A.indices(ok)) if len(ok) < n else b, newest)
            newest = max(newest, float(cols["key"].max()))
            pend = cols if pend is None else {k: _cat(pend[k], cols[k]) for k in cols}
            pend = _take(pend, np.argsort(pend["key"], kind="stable"))   # pending rows are in row order: ties keep it
            cut = int(np.searchsorted(pend["key"], newest - REORDER_WINDOW_S, side="left"))   # no later row is before
            out.add(_take(pend, slice(0, cut)))
            pend = _take(pend, slice(cut, None))
        if pend is not None:
            out.add(pend)
        out.finish()


class _Chunks:
    """Rows in output order, CHUNK at a time: placed (``_place``, in order), their text built in the pool
    ``builders`` (``_build``), the bytes written in order by ``writer``; at most BUILDERS + 1 chunks in flight."""

    def __init__(self, w, builders, writer, sink):
        self.w, self.builders, self.writer, self.sink = w, builders, writer, sink
        self.building: deque = deque()
        self.writing = None

    def add(self, cols: dict) -> None:
        for a in range(0, len(cols["key"]), CHUNK):
            job = _place(self.w, _take(cols, slice(a, a + CHUNK)))
            if job is not None:
                self.building.append(self.builders.submit(_build, *job))
            while len(self.building) > BUILDERS:
                self._write_one()

    def finish(self) -> None:
        while self.building:
            self._write_one()
        if self.writing is not None:
            self.writing.result()

    def _write_one(self) -> None:
        data, tally = self.building.popleft().result()
        self.w.events += tally.pop("events", 0)
        self.w.counts.update(tally)
        if self.writing is not None:
            self.writing.result()
        self.writing = self.writer.submit(self.sink, data)


def _take(cols: dict, idx) -> dict:
    return {k: v[idx] for k, v in cols.items()}


def _columns(b, newest: float) -> dict:
    """One batch's rows: the sort key, what each becomes, its slices' durations (ns, -1: none), the values its
    text is built from; the rows that go through the writer decoded."""
    n = b.num_rows
    code = np.where(A.null(b.column("json")), A.codes_in(b.column("type"), [R.STEP, R.PREFILL, R.SAMPLE]), -1)
    out = {"key": _t_keys(_row_t(b), newest), "t_us": A.ints(b.column("t_us"), 0)}
    for k in _INTS:
        out[k] = A.ints(b.column(k))
    for k in _FLOATS:
        out[k] = A.floats(b.column(k))
    for k in _STRS:   # as ids in _WORD_LIST: the same over batches
        codes, words = A.codes(b.column(k))
        out[k] = np.array([_word_id(x) for x in words] + [_word_id(None)], dtype=np.int64)[codes]
    # a prefill by column: every field there (a record with a field absent or null words its args otherwise)
    # (a row whose record the writer refuses, such as one without a number t, goes there for its message)
    has_t = ~A.null(b.column("t_us"))
    whole = (A.ints(b.column("absent"), 0) == 0) & (out["i"] >= 0) & (out["requests"] >= 0) & (out["tokens"] >= 0)
    kind = np.full(n, WRITER, dtype=np.int8)
    kind[(code == 0) & has_t & (out["i"] >= 0) & (out["batch"] >= 0) & (out["tokens"] >= 0)
         & np.isfinite(out["host_us"])] = V_STEP
    kind[(code == 1) & has_t & whole & np.isfinite(out["host_ms"])] = V_PREFILL
    kind[(code == 2) & has_t] = V_SAMPLE
    out["kind"] = kind
    _list_columns(b, out)
    _sample_columns(b, out)
    host_us, host_ms, gpu_ms, gap_us = out["host_us"], out["host_ms"] * 1e3, out["gpu_ms"] * 1e3, out["gap_us"]
    rec = np.empty(n, dtype=object)
    other = np.flatnonzero(kind == WRITER)
    if len(other):   # decoded: events, rows kept as JSON, prefills and samples the columns do not word
        host_us, host_ms, gpu_ms, gap_us = host_us.copy(), host_ms.copy(), gpu_ms.copy(), gap_us.copy()
        for r, record in zip(other.tolist(), C.decode(b.take(A.indices(other)))):
            rec[r] = record
            for arr, k, scale in ((host_us, "host_us", 1), (host_ms, "host_ms", 1e3), (gpu_ms, "gpu_ms", 1e3),
                                  (gap_us, "gap_us", 1)):
                v = record.get(k)
                arr[r] = v * scale if _is_number(v) else np.nan
    out["rec"] = rec
    typ = A.codes_in(b.column("type"), [R.STEP, R.PREFILL])
    for r in other.tolist():   # a JSON row's type is in its text
        typ[r] = {R.STEP: 0, R.PREFILL: 1}.get(rec[r].get("type"), -1)
    from .slice_placement import ns
    # the writer's slices: a step's host slice (host_us) and GPU slice (gpu_ms, where a number), a prefill's
    # host slice (host_ms); a value that is not a number fails the record in the writer, with its own message
    out["host_dur"] = np.where(typ == 0, np.where(np.isfinite(host_us), ns(host_us), -1),
                               np.where((typ == 1) & np.isfinite(host_ms), ns(host_ms), -1))
    out["gpu_dur"] = np.where((typ == 0) & np.isfinite(gpu_ms), ns(gpu_ms), -1)
    out["gap"] = np.where(np.isfinite(gap_us), ns(gap_us), 0)
    return out


_SAMPLE_FIELDS = tuple(SAMPLE_COUNTERS)


def _sample_columns(b, out: dict) -> None:
    """A sample's counter values: s:<field> (int64 or float64 as stored), n:<field> (no number: skipped)."""
    for f in _SAMPLE_FIELDS:
        col = b.column(f)
        if pa.types.is_floating(col.type):
            v = A.floats(col)
            out[f"s:{f}"], out[f"n:{f}"] = v, ~np.isfinite(v)
        else:
            out[f"s:{f}"], out[f"n:{f}"] = A.ints(col, 0), A.null(col)


def _matrix(off: np.ndarray, items: np.ndarray, fill) -> np.ndarray:
    """Per row its list's items (``off``: the n + 1 offsets into ``items``), as a row of a matrix as wide as the
    longest list, ``fill`` past each list's end."""
    n = len(off) - 1
    lens = off[1:] - off[:-1]
    width = int(lens.max()) if n else 0
    col = np.arange(width)
    inside = col[None, :] < lens[:, None]
    pos = np.where(inside, off[:-1, None] + col[None, :], 0)
    return np.where(inside, items[pos] if len(items) else fill, fill)


def _list_columns(b, out: dict) -> None:
    """A tensor-parallel step's lists as matrices: rank_ms (NaN: no number; rank_n: the list's length, -1: no
    list) and skew_ms; a sample's ``gpus`` items' fields (g:gpu and g:<field>, with gn:<field> where null)."""
    n = b.num_rows
    names = b.schema.names
    if "rank_ms" in names:
        col = b.column("rank_ms")
        off, vals, _ = A.list_floats(col)
        out["rank_ms"] = _matrix(off, vals, np.nan)
        out["rank_n"] = np.where(A.null(col), -1, off[1:] - off[:-1])
        out["skew_ms"] = A.floats(b.column("skew_ms"))
    else:
        out["rank_ms"], out["rank_n"], out["skew_ms"] = np.zeros((n, 0)), np.full(n, -1), np.full(n, np.nan)
    if "gpus" in names:
        col = b.column("gpus")
        off = A.list_offsets(col)
        fields = dict(zip([f.name for f in col.type.value_type], col.values.flatten()))   # struct nulls: nulls
    else:
        off, fields = np.zeros(n + 1, np.int64), {}
    for f in ("gpu",) + _GPU_FIELDS:
        arr = fields.get(f)
        if arr is None or not pa.types.is_floating(arr.type):
            v, none = (A.ints(arr, 0), A.null(arr)) if arr is not None else (np.zeros(0, np.int64), np.zeros(0, bool))
            out[f"g:{f}"], out[f"gn:{f}"] = _matrix(off, v, 0), _matrix(off, none, True)
        else:
            v = A.floats(arr)
            out[f"g:{f}"], out[f"gn:{f}"] = _matrix(off, v, np.nan), _matrix(off, ~np.isfinite(v), True)


_GPU_FIELDS = tuple(f for f in SAMPLE_COUNTERS if f in C.GPU_KEYS)


def _cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two batches' column, one after the other; matrices padded to the wider (NaN, 0, or True: null)."""
    if a.ndim == 2 and a.shape[1] != b.shape[1]:
        fill = np.nan if a.dtype.kind == "f" else True if a.dtype == bool else 0
        w = max(a.shape[1], b.shape[1])
        a, b = (np.pad(x, ((0, 0), (0, w - x.shape[1])), constant_values=fill) for x in (a, b))
    return np.concatenate([a, b])


CHUNK = 16384   # rows whose text is built at once (the text of a step is ~1 KB)


def _place(w, cols: dict) -> tuple[list, list] | None:
    """A chunk of rows in output order: their slices placed in one scan, the tracks named, the rows the columns
    do not word written through the writer (its state is the chunk's start: this runs in order); what
    ``_build`` needs to word the rest: (parts, jobs)."""
    from .slice_placement import ns, starts_after
    m = len(cols["key"])
    if not m:
        return None
    t_ns = ns(cols["key"] * 1e6)
    hd, gd = cols["host_dur"], cols["gpu_dur"]
    H, G = np.flatnonzero(hd >= 0), np.flatnonzero(gd >= 0)
    hs, gs = np.full(m, -1, np.int64), np.full(m, -1, np.int64)
    hs[H] = starts_after(t_ns[H], hd[H], np.zeros(len(H), np.int64), w.host_end)
    gs[G] = starts_after(t_ns[G], gd[G], cols["gap"][G], w.gpu_end)
    kind = cols["kind"]
    parts: list = []          # (positions, text): position 2k + 1 is row k's text, 2k the tracks it names
    names = []
    for rows, tid in ((H, HOST), (G, GPU)):
        if len(rows) and tid not in w.named:   # named before the row's events, as the writer does
            names.append((int(rows[0]), _captured(w, lambda tid=tid: w._track(tid))))
    if names:
        parts.append((np.array([2 * k for k, _ in names]), strings([text for _, text in names])))
    W = np.flatnonzero(kind == WRITER)
    if len(W):
        texts = []
        ph, pg = np.searchsorted(H, W) - 1, np.searchsorted(G, W) - 1   # the track's slice before each
        rec = cols["rec"]
        end0 = w.host_end, w.gpu_end
        for k, a, g in zip(W.tolist(), ph.tolist(), pg.tolist()):
            w.host_end = end0[0] if a < 0 else int(hs[H[a]] + hd[H[a]])
            w.gpu_end = end0[1] if g < 0 else int(gs[G[g]] + gd[G[g]])
            texts.append(_captured(w, lambda k=k: w.add(rec[k])))
        parts.append((2 * W + 1, strings(texts)))
    if len(H):
        w.host_end = int(hs[H[-1]] + hd[H[-1]])
    if len(G):
        w.gpu_end = int(gs[G[-1]] + gd[G[-1]])
    jobs = []
    for v, build in ((V_STEP, _step_text), (V_PREFILL, _prefill_text), (V_SAMPLE, _sample_text)):
        rows = np.flatnonzero(kind == v)
        if len(rows):
            jobs.append((2 * rows + 1, build, _take(cols, rows), t_ns[rows], hs[rows], gs[rows]))
    return parts, jobs


def _build(parts: list, jobs: list) -> tuple[memoryview, Counter]:
    """A placed chunk's text, in order, as bytes, and the events and counts it holds beyond the writer's."""
    tally: Counter = Counter()
    parts = parts + [(pos, build(tally, c, t_ns, ts, gts)) for pos, build, c, t_ns, ts, gts in jobs]
    pos = np.concatenate([p for p, _ in parts])
    text = pa.concat_arrays([t for _, t in parts]).take(A.indices(np.argsort(pos, kind="stable")))
    return _data(text, 0, len(text)), tally


def _captured(w, write) -> str:
    """What ``write()`` writes through the writer, as text."""
    real, w.out = w.out, io.StringIO()
    try:
        write()
        return w.out.getvalue()
    finally:
        w.out = real


# ---- text by column ----

_FRAC = strings([".0"] + ["." + f"{r:03d}".rstrip("0") for r in range(1, 1000)])   # ns % 1000: repr's decimals


def _us_text(x: np.ndarray) -> pa.Array:
    """repr(x / 1000) of each ns (µs with up to 3 decimals); from the integers below 1e15 ns (15 digits: repr
    gives those decimals, trailing zeros cut), by repr above."""
    import pyarrow.compute as pc
    x = np.ascontiguousarray(x, np.int64)
    if len(x) and (int(x.max()) >= 10 ** 15 or int(x.min()) < 0):
        return strings([repr(v / 1000) for v in x.tolist()])
    q, r = np.divmod(x, 1000)
    return pc.binary_join_element_wise(_ints_text(q, np.zeros(len(x), bool)), _column(r, _FRAC), _s(""))


def _t_text(t_us: np.ndarray) -> pa.Array:
    """The writer's ``_us(t)`` of each row's t (t = t_us / 1e6): repr(round(t * 1e6, 3)); below 2**39 µs that
    is the integer and ".0" (checked by the tests at the edges), else by repr."""
    import pyarrow.compute as pc
    if len(t_us) and int(t_us.max()) >= 1 << 39:
        return strings([repr(round(v / 1e6 * 1e6, 3)) for v in t_us.tolist()])
    return pc.binary_join_element_wise(_ints_text(t_us, np.zeros(len(t_us), bool)), _s(".0"), _s(""))


def _floats_text(x: np.ndarray) -> pa.Array:
    """repr of each float (NaN: "")."""
    return _float_words(np.ascontiguousarray(x, np.float64))


def _ints(x: np.ndarray) -> pa.Array:
    return _ints_text(x, np.zeros(len(x), bool))


def _opt(text, present: np.ndarray, before: str, after: str = "") -> list:
    """Parts of a join: before + text + after where ``present``, else nothing. ``text``: an array, or a
    function of the rows (an index array) that words only those (for a field few rows have)."""
    if present.all():
        return [before, text if isinstance(text, pa.Array) else text(slice(None)), after]
    if not present.any():
        return []
    import pyarrow.compute as pc
    if isinstance(text, pa.Array):
        return [pc.if_else(_mask(present), pc.binary_join_element_wise(_s(before), text, _s(after), _s("")), _s(""))]
    n = len(present)
    empty = pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(np.zeros(n + 1, np.int64)),
                                                         pa.py_buffer(b"")])
    return [pc.replace_with_mask(empty, _mask(present), _join(before, text(np.flatnonzero(present)), after))]


def _patched(text: pa.Array, differ: np.ndarray, make) -> pa.Array:
    """``text`` but where ``differ``, there ``make(rows)`` (an index array: the text of those rows)."""
    if not differ.any():
        return text
    import pyarrow.compute as pc
    return pc.replace_with_mask(text, _mask(differ), make(np.flatnonzero(differ)))


def _join(*parts) -> pa.Array:
    """The parts (str: the same text on every row; lists: flattened) joined row by row, in one kernel call."""
    import pyarrow.compute as pc
    flat: list = []

    def add(p) -> None:
        if isinstance(p, list):
            for q in p:
                add(q)
        elif not isinstance(p, str):
            flat.append(p)
        elif flat and isinstance(flat[-1], str):
            flat[-1] += p
        elif p:
            flat.append(p)
    add(list(parts))
    return pc.binary_join_element_wise(*(_s(q) if isinstance(q, str) else q for q in flat), _s(""))


def _first_rows(codes: np.ndarray, k: int) -> np.ndarray:
    """The first row of each of ``k`` codes."""
    first = np.zeros(k, np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    return first


def _step_text(tally: Counter, c: dict, t_ns: np.ndarray, ts: np.ndarray, gts: np.ndarray) -> pa.Array:
    """Each columnar step's events (",\n" before each), as the writer's _step writes them for its record,
    built by column (one join of every field's text); counts them in ``tally``."""
    has_gpu = gts >= 0
    if has_gpu.any() and not has_gpu.all():   # the steps with a GPU slice, then the others, each one join
        parts = [np.flatnonzero(x) for x in (has_gpu, ~has_gpu)]
        texts = [_step_text(tally, _take(c, r), t_ns[r], ts[r], gts[r]) for r in parts]
        return pa.concat_arrays(texts).take(A.indices(np.argsort(np.concatenate(parts), kind="stable")))
    gpu = bool(has_gpu.all())
    n = len(ts)
    batch, bucket, target = c["batch"], c["bucket"], c["target"]
    rows = np.where(c["rows"] < 0, batch, c["rows"])                             # records.step_rows
    graph = bucket >= 0
    padded = np.where(graph, bucket - rows, 0)
    mode, phase, reason = c["runtime_mode"], c["phase"], c["reason"]   # ids in _WORD_LIST
    ok_mode = np.isin(mode, [_word_id(x) for x in R.RUNTIME_MODES])              # records.step_runtime_mode
    mode = np.where(ok_mode, mode, np.where(graph, _word_id(R.RUNTIME_FULL), _word_id(R.RUNTIME_NONE)))
    phase = np.where(np.isin(phase, [_word_id(x) for x in R.PHASES]), phase, _word_id(R.PHASE_DECODE))
    pw = mode == _word_id(R.RUNTIME_PIECEWISE)
    has_gap = ~np.isnan(c["gap_us"])

    def words(x, fmt):   # word ids -> the cells
        return _column(x, [fmt(v) for v in _WORD_LIST])

    nw = len(_WORD_LIST)   # export.step_name: per distinct (bucket, PIECEWISE, phase) or (rows, phase, reason)
    key = np.where(graph, ((bucket * 2 + pw) * nw + phase) * 2 + 1, ((rows * nw + phase) * nw + reason) * 2)
    codes, u = _encode(key)
    names = []
    for k in _first_rows(codes, len(u)).tolist():
        ph, why = _WORD_LIST[phase[k]], _WORD_LIST[reason[k]]
        tail = "" if ph == R.PHASE_DECODE else f" {ph}"
        if graph[k]:
            nm = f"graph b{bucket[k]}{' PIECEWISE' if pw[k] else ''}{tail}"
        else:
            nm = f"eager b{rows[k]}{tail}" + (f" ({why})" if why else "")
        names.append(_q(nm))
    name = _column(codes, names)
    tus = _t_text(c["t_us"])
    host, gap = _floats_text(c["host_us"]), _floats_text(c["gap_us"])
    # the same numbers worded once: t in ns is t_us * 1000 (below 2**39 µs, where tus is its integer and ".0"),
    # a slice starts at its t unless shifted, and host_us has at most 3 decimals (its ns / 1000 is host_us)
    t_exact = bool((t_ns == c["t_us"] * 1000).all()) and int(c["t_us"].max()) < 1 << 39
    enq = tus if t_exact else _us_text(t_ns)
    shifted = ts > t_ns
    ts_s = _patched(enq, shifted, lambda r: _us_text(ts[r]))
    dur_s = _patched(host, (c["host_dur"] / 1000 != c["host_us"]) | np.signbit(c["host_us"]),   # -0.0: "0.0"
                     lambda r: _us_text(c["host_dur"][r]))
    rows_s, batch_s, padded_s, i_s = _ints(rows), _ints(batch), _ints(padded), _ints(c["i"])
    bucket_f = _opt(_ints(bucket), graph, ',"bucket":')
    mode_s, phase_s = words(mode, _q), words(phase, _q)
    gap_f = _opt(gap, has_gap, ',"gap_us":')
    common = [',"args":{"i":', i_s, ',"batch":', batch_s, ',"rows":', rows_s, bucket_f]
    parts = [',\n{"ph":"X","cat":"step","name":', name, f',"pid":1,"tid":{HOST},"ts":', ts_s,
             ',"dur":', dur_s, common, _opt(_ints(target), target >= 0, ',"target":'),
             ',"runtime_mode":', mode_s, ',"phase":', phase_s,
             ',"prompt_tokens":', _ints(np.maximum(c["prompt_tokens"], 0)), ',"padded":', padded_s,
             words(reason, lambda v: "" if v is None else f',"reason":{_q(v)}'), ',"tokens":', _ints(c["tokens"]),
             ',"host_us":', host]
    if gpu:
        gpu_ms = _floats_text(c["gpu_ms"])
        parts += [',"gpu_ms":', gpu_ms]
    parts += [gap_f, _opt(lambda r: _us_text(ts[r] - t_ns[r]), shifted, ',"shifted_us":'), "}}",
              f',\n{{"ph":"C","name":"host launch","pid":1,"tid":{HOST},"ts":', tus, ',"args":{"us":', host, "}}",
              _opt(_join(tus, ',"args":{"us":', gap), has_gap,
                   f',\n{{"ph":"C","name":"GPU gap","pid":1,"tid":{HOST},"ts":', "}}"),
              f',\n{{"ph":"C","name":"batch","pid":1,"tid":{HOST},"ts":', tus, ',"args":{"rows":', rows_s,
              ',"padded":', padded_s, ',"requests":', batch_s, "}}"]
    if gpu:
        parts += [',\n{"ph":"X","cat":"gpu","name":', name, f',"pid":1,"tid":{GPU},"ts":', _us_text(gts),
                  ',"dur":', _us_text(c["gpu_dur"]), common, ',"runtime_mode":', mode_s, ',"phase":', phase_s,
                  ',"gpu_ms":', gpu_ms, gap_f, ',"start":"lower bound","enqueued_us":', _us_text(t_ns),
                  ',"queued_us":', _us_text(gts - t_ns), "}}"]
    parts += _rank_lines(tally, c, tus)
    ngap = int(has_gap.sum())
    tally["events"] += 3 * n + ngap + (n if gpu else 0)
    tally["step"] += n
    tally["gpu"] += n if gpu else 0
    tally["counter"] += 4 * n + ngap
    return _join(*parts)


def _rank_lines(tally: Counter, c: dict, tus: pa.Array) -> list:
    """A tensor-parallel step's counters, as the writer's _step writes them after its slices: "rank step ms"
    (each rank's number, where its list has one) and "rank skew" (where its list is there and skew_ms a number)."""
    import pyarrow.compute as pc
    listed = c["rank_n"] >= 0
    if not listed.any():
        return []
    rm = c["rank_ms"]
    entries, count = [], np.zeros(len(listed), np.int64)
    for j in range(rm.shape[1]):
        ok = listed & np.isfinite(rm[:, j])
        count += ok
        entries += _opt(_floats_text(rm[:, j]), ok, f',"rank{j}":')
    per = count > 0
    skew = listed & np.isfinite(c["skew_ms"])
    tally["events"] += int(per.sum() + skew.sum())
    tally["counter"] += int(count.sum() + skew.sum())
    lines = []
    if per.any():
        text = pc.utf8_slice_codeunits(_join(*entries), 1)   # less the first entry's comma
        lines += _opt(_join(tus, ',"args":{', text, "}}"), per,
                      f',\n{{"ph":"C","name":"rank step ms","pid":1,"tid":{HOST},"ts":')
    lines += _opt(_join(tus, ',"args":{"ms":', _floats_text(c["skew_ms"]), "}}"), skew,
                  f',\n{{"ph":"C","name":"rank skew","pid":1,"tid":{HOST},"ts":')
    return lines


def _prefill_text(tally: Counter, c: dict, t_ns: np.ndarray, ts: np.ndarray, gts: np.ndarray) -> pa.Array:
    """Each columnar prefill's slice, as the writer's _prefill writes it (every field a number)."""
    n = len(ts)
    req = c["requests"]
    codes, u = _encode(req)
    name = _column(codes, [_q(f"prefill {v} req") for v in u.tolist()])
    shifted = ts > t_ns
    tally["events"] += n
    tally["prefill"] += n
    return _join(',\n{"ph":"X","cat":"prefill","name":', name, f',"pid":1,"tid":{HOST},"ts":', _us_text(ts),
                 ',"dur":', _us_text(c["host_dur"]), ',"args":{"i":', _ints(c["i"]), ',"requests":', _ints(req),
                 ',"tokens":', _ints(c["tokens"]), ',"host_ms":', _floats_text(c["host_ms"]),
                 _opt(lambda r: _us_text(ts[r] - t_ns[r]), shifted, ',"shifted_us":'), "}}")


def _counter_values(v: np.ndarray, none: np.ndarray, scale: float) -> tuple[pa.Array | None, np.ndarray]:
    """A sample counter's values as text (scaled: value * scale to 3 decimals) and where there is none; (None,
    all True) when no row has one."""
    if none.all():
        return None, none
    if scale != 1:   # export.round3 (numpy's rounding, as the pftrace export's samples)
        v = np.round(v.astype(np.float64) * scale, 3)
        none = none | ~np.isfinite(v)
    return (_floats_text(np.where(none, np.nan, v)) if v.dtype == np.float64 else _ints(v)), none


def _sample_text(tally: Counter, c: dict, t_ns: np.ndarray, ts: np.ndarray, gts: np.ndarray) -> pa.Array:
    """Each columnar sample's counters, as the writer's _sample writes them (no per-GPU fields)."""
    n = len(ts)
    tus = _t_text(c["t_us"])
    lines: list = []
    count = 0
    for f, (name, key, scale) in SAMPLE_COUNTERS.items():
        text, none = _counter_values(c[f"s:{f}"], c[f"n:{f}"], scale)
        if none.all():
            continue
        lines.append(_opt(_join(tus, f',"args":{{{_q(key)}:', text), ~none,
                          f',\n{{"ph":"C","name":{_q(name)},"pid":1,"tid":{HOST},"ts":', "}}"))
        count += int((~none).sum())
    gid, gnone = c["g:gpu"], c["gn:gpu"]
    for j in range(gid.shape[1]):   # each GPU of the sample's list (GPU 0 is the plain series above)
        on = ~gnone[:, j] & (gid[:, j] != 0)
        if not on.any():
            continue
        g_s = _ints(gid[:, j])
        for f in _GPU_FIELDS:
            name, key, scale = SAMPLE_COUNTERS[f]
            v, none = _counter_values(c[f"g:{f}"][:, j], c[f"gn:{f}"][:, j] | ~on, scale)
            if none.all():
                continue
            lines += _opt(_join(f',\n{{"ph":"C","name":"{name} gpu', g_s, f'","pid":1,"tid":{HOST},"ts":', tus,
                                f',"args":{{{_q(key)}:', v), ~none, "", "}}")
            count += int((~none).sum())
    tally["events"] += count
    tally["counter"] += count
    if not count:
        return strings([""] * n)
    return _join(*lines)
