"""``cgwatch export --format perfetto`` of a compact trace: the record path's events, without a dict per step.

export.py puts the records back in t order (``_InOrder``: a heap over a 10 s window) and writes each through
``_PerfettoWriter``. When no record comes more than that window late (``in_order``; every cgwatch trace: its
two writer threads are milliseconds apart), that order is a stable sort by t, which this module takes a column
batch at a time: the rows are sorted by (t, row) within the rows still pending, and those that no later row
can precede are written. One Python pass over them in that order runs the writer's state (where each slice
starts depends on the one before: the host and GPU tracks' ends) and writes every row that is not a columnar
step; the columnar steps' events are then built by column (``_step_text``: pyarrow joins of each field's
text), the very text json.dumps gives the record path's events (the same keys in the same order, ``str`` of
the same ints, ``repr`` of the same floats). Samples and prefills are written by ``sample_events`` and
``prefill_events`` (f-strings, no json.dumps); events, the steps kept as JSON and the tensor-parallel steps
and samples (decoded from their columns: per-rank and per-GPU tracks) go through the writer. A
trace with a record later than the window takes the record path (export.py).
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .export import GPU, HOST, REORDER_WINDOW_S, SAMPLE_COUNTERS

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


_INTS = ("i", "batch", "rows", "target", "bucket", "prompt_tokens", "tokens")   # -1: null (accepted steps)
_FLOATS = ("host_us", "gpu_ms", "gap_us")                                       # NaN: null
_STRS = ("runtime_mode", "phase", "reason")
_WORD_IDS: dict = {}
_WORD_LIST: list = []


def _word_id(word: str | None) -> int:
    k = _WORD_IDS.get(word)
    if k is None:
        k = _WORD_IDS[word] = len(_WORD_LIST)
        _WORD_LIST.append(word)
    return k


def export(trace, w, bad: np.ndarray) -> None:
    """All accepted rows through the writer ``w`` (export._PerfettoWriter), in _InOrder's order."""
    pend: dict | None = None
    newest, base = -math.inf, 0
    for b in trace.batches(dictionary=True):
        n = b.num_rows
        ok = np.flatnonzero(~bad[base:base + n])
        base += n
        if not len(ok):
            continue
        cols = _columns(b.take(A.indices(ok)) if len(ok) < n else b, newest)
        newest = max(newest, float(cols["key"].max()))
        pend = cols if pend is None else {k: np.concatenate([pend[k], cols[k]]) for k in cols}
        pend = _take(pend, np.argsort(pend["key"], kind="stable"))   # pending rows are in row order: ties keep it
        cut = int(np.searchsorted(pend["key"], newest - REORDER_WINDOW_S, side="left"))   # no later row is before
        _write(w, _take(pend, slice(0, cut)))
        pend = _take(pend, slice(cut, None))
    if pend is not None:
        _write(w, pend)


def _take(cols: dict, idx) -> dict:
    return {k: v[idx] for k, v in cols.items()}


def _columns(b, newest: float) -> dict:
    """One batch's rows: the sort key, whether a columnar step, its values; every other row decoded."""
    # rows kept as JSON, and tensor-parallel steps and samples (per-rank tracks), go through the record path
    code = np.where(A.null(b.column("json")) & ~C.later_rows(b),
                    A.codes_in(b.column("type"), [R.STEP, R.SAMPLE, R.PREFILL]), -1)
    is_step = code == 0
    out = {"key": _t_keys(_row_t(b), newest), "step": is_step, "t_us": A.ints(b.column("t_us"), 0), "code": code}
    for k in _INTS:
        out[k] = A.ints(b.column(k))
    for k in _FLOATS:
        out[k] = A.floats(b.column(k))
    for k in _STRS:   # as ids in _WORD_LIST: the same over batches
        codes, words = A.codes(b.column(k))
        out[k] = np.array([_word_id(x) for x in words] + [_word_id(None)], dtype=np.int64)[codes]
    rec = np.empty(b.num_rows, dtype=object)
    other = np.flatnonzero(~is_step)
    if len(other):
        js = b.column("json")
        col = [r for r in other.tolist() if not js[r].is_valid]   # samples, prefills, tensor-parallel steps
        dec = dict(zip(col, C.decode(b.take(A.indices(np.array(col, dtype=np.int64)))))) if col else {}
        for r in other.tolist():
            rec[r] = dec[r] if r in dec else C._decode_json(js[r].as_py())
    out["rec"] = rec
    return out


CHUNK = 8192   # rows whose text is built at once (the text of a step is ~1 KB)


def _write(w, cols: dict) -> None:
    for a in range(0, len(cols["key"]), CHUNK):
        _write_rows(w, _take(cols, slice(a, a + CHUNK)))


def _write_rows(w, cols: dict) -> None:
    """Rows in output order. One pass in order runs the writer's state (where each slice starts) and writes every
    row that is not a columnar step through the writer, into a buffer; the steps' text is then built by column
    (``_step_text``) and everything written at once, in order."""
    m = len(cols["key"])
    if not m:
        return
    step, rec, code = cols["step"].tolist(), cols["rec"].tolist(), cols["code"].tolist()
    T, H = cols["t_us"].astype(np.float64).tolist(), cols["host_us"].tolist()
    G, P = cols["gpu_ms"].tolist(), cols["gap_us"].tolist()
    ts, dur, gts, gdur = [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m
    vec = np.zeros(m, dtype=bool)
    pieces: list = []
    where = np.zeros(m, dtype=np.int64)        # a vector step's place in pieces
    real, buf = w.out, io.StringIO()
    he, ge = w.host_end, w.gpu_end
    scalar = None
    fast = int(cols["t_us"].max()) < 1 << 39   # else round(t * 1e6, 3) may not be t_us: a row at a time
    try:
        w.out = buf
        for k in range(m):
            if step[k] and fast and HOST in w.named and (GPU in w.named or G[k] != G[k]):
                tu = T[k]                      # round(t * 1e6, 3) for t = t_us / 1e6 (checked in _step_text)
                x = he if he > tu else tu      # max(t_us, host_end)
                d = round(H[k], 3)
                ts[k], dur[k], he = x, d, x + d
                g = G[k]
                if g == g:                     # _PerfettoWriter._gpu_step
                    p = P[k]
                    y = ge + (p if p == p else 0.0)
                    y = y if y > tu else tu
                    gd = round(g * 1000, 3)
                    gts[k], gdur[k], ge = y, gd, y + gd
                vec[k] = True
                where[k] = len(pieces)
                pieces.append(None)
                continue
            w.host_end, w.gpu_end = he, ge
            if step[k]:                        # a track named by this step: the record path's text, one row
                if scalar is None:
                    scalar = {k2: v.tolist() for k2, v in cols.items() if k2 not in ("key", "rec")}
                    for k2 in _STRS:
                        scalar[k2] = [_WORD_LIST[x] for x in scalar[k2]]
                step_events(w, scalar, k)
            elif code[k] == 1:
                sample_events(w, rec[k])
            elif code[k] == 2 and HOST in w.named and type(rec[k].get("host_ms")) is float and "requests" in rec[k]:
                prefill_events(w, rec[k])
            else:
                w.add(rec[k])
            he, ge = w.host_end, w.gpu_end
            pieces.append(buf.getvalue())
            buf.seek(0)
            buf.truncate()
    finally:
        w.out = real
    w.host_end, w.gpu_end = he, ge
    idx = np.flatnonzero(vec)
    if len(idx):
        pick = lambda xs: [xs[k] for k in idx.tolist()]   # noqa: E731
        text = _step_text(w, {k: v[idx] for k, v in cols.items() if k not in ("key", "rec")},
                          pick(ts), pick(dur), pick(gts), pick(gdur))
        for k, piece in zip(where[idx].tolist(), text):
            pieces[k] = piece
    w.out.write("".join(pieces))


def _step_text(w, c: dict, ts: list, dur: list, gts: list, gdur: list) -> list[str]:
    """Each columnar step's events (",\n" before each), as step_events writes them, built by column; counts
    them in the writer."""
    import pyarrow.compute as pc

    from .export_columnar import _column, _ints_text, _numbers, _s, strings
    n = len(ts)
    t_us = c["t_us"]
    none = np.zeros(n, dtype=bool)
    batch, bucket, target = c["batch"], c["bucket"], c["target"]
    rows = np.where(c["rows"] < 0, batch, c["rows"])
    graph = bucket >= 0
    padded = np.where(graph, bucket - rows, 0)
    mode, phase, reason = c["runtime_mode"], c["phase"], c["reason"]   # ids in _WORD_LIST
    ok_mode = np.isin(mode, [_word_id(x) for x in R.RUNTIME_MODES])
    mode = np.where(ok_mode, mode, np.where(graph, _word_id(R.RUNTIME_FULL), _word_id(R.RUNTIME_NONE)))
    phase = np.where(np.isin(phase, [_word_id(x) for x in R.PHASES]), phase, _word_id(R.PHASE_DECODE))
    pw = mode == _word_id(R.RUNTIME_PIECEWISE)
    has_gap, has_gpu = ~np.isnan(c["gap_us"]), ~np.isnan(c["gpu_ms"])

    def ints(x, null=none, fmt=str):
        return _column(*_numbers(x, null, fmt))

    def words(x, fmt):   # word ids -> the cells
        u, inv = np.unique(x, return_inverse=True)
        return _column(inv.reshape(-1), [fmt(_WORD_LIST[v]) for v in u.tolist()])

    def reprs(xs):
        return strings(list(map(float.__repr__, xs)))

    name_key = np.stack([np.where(graph, bucket, -1), pw & graph, phase, np.where(graph, 0, rows),
                         np.where(graph, -1, reason)], 1)
    _, first, inv = np.unique(name_key, axis=0, return_index=True, return_inverse=True)
    names = []
    for k in first.tolist():
        ph, why = _WORD_LIST[phase[k]], _WORD_LIST[reason[k]]
        tail = "" if ph == R.PHASE_DECODE else f" {ph}"
        if graph[k]:
            nm = f"graph b{bucket[k]}{' PIECEWISE' if pw[k] else ''}{tail}"
        else:
            nm = f"eager b{rows[k]}{tail}" + (f" ({why})" if why else "")
        names.append(_q(nm))
    name = _column(inv.reshape(-1), names)
    tus = pc.binary_join_element_wise(_ints_text(t_us, none), _s(".0"), _s(""))   # repr of a whole float
    host = ints(c["host_us"], fmt=float.__repr__)
    gpu_ms = ints(c["gpu_ms"], ~has_gpu, float.__repr__)
    i_s, batch_s, rows_s = _ints_text(c["i"], none), ints(batch), ints(rows)
    bucket_f = ints(bucket, ~graph, lambda v: f',"bucket":{v}')
    target_f = ints(target, target < 0, lambda v: f',"target":{v}')
    mode_s, phase_s = words(mode, _q), words(phase, _q)
    reason_f = words(reason, lambda v: "" if v is None else f',"reason":{_q(v)}')
    gap_f = ints(c["gap_us"], ~has_gap, lambda v: f',"gap_us":{v!r}')
    gpu_f = ints(c["gpu_ms"], ~has_gpu, lambda v: f',"gpu_ms":{v!r}')
    ts_s, dur_s = reprs(ts), reprs(dur)
    t_f = np.array(t_us, dtype=np.float64)
    shifted = np.array(ts) > t_f
    shift_f = strings([f',"shifted_us":{round(x - t, 3)!r}' if s else "" for x, t, s in
                       zip(ts, t_f.tolist(), shifted.tolist())])
    j = lambda *parts: pc.binary_join_element_wise(*parts, _s(""))   # noqa: E731
    common = j(_s(',"args":{"i":'), i_s, _s(',"batch":'), batch_s, _s(',"rows":'), rows_s, bucket_f)
    host_line = j(_s(',\n{"ph":"X","cat":"step","name":'), name, _s(f',"pid":1,"tid":{HOST},"ts":'), ts_s,
                  _s(',"dur":'), dur_s, common, target_f, _s(',"runtime_mode":'), mode_s, _s(',"phase":'), phase_s,
                  _s(',"prompt_tokens":'), ints(np.maximum(c["prompt_tokens"], 0)), _s(',"padded":'), ints(padded),
                  reason_f, _s(',"tokens":'), ints(c["tokens"]), _s(',"host_us":'), host, gpu_f, gap_f, shift_f,
                  _s("}}"))
    counter = _s(f',\n{{"ph":"C","name":"host launch","pid":1,"tid":{HOST},"ts":')
    launch = j(counter, tus, _s(',"args":{"us":'), host, _s("}}"))
    gap_line = j(_s(f',\n{{"ph":"C","name":"GPU gap","pid":1,"tid":{HOST},"ts":'), tus, _s(',"args":{"us":'),
                 ints(c["gap_us"], ~has_gap, float.__repr__), _s("}}"))
    gap_line = pc.if_else(_mask(has_gap), gap_line, _s(""))
    batch_line = j(_s(f',\n{{"ph":"C","name":"batch","pid":1,"tid":{HOST},"ts":'), tus, _s(',"args":{"rows":'),
                   rows_s, _s(',"padded":'), ints(padded), _s(',"requests":'), batch_s, _s("}}"))
    q = [f"{round(g - t, 3)!r}" for g, t in zip(gts, t_f.tolist())]
    gpu_line = j(_s(',\n{"ph":"X","cat":"gpu","name":'), name, _s(f',"pid":1,"tid":{GPU},"ts":'), reprs(gts),
                 _s(',"dur":'), reprs(gdur), common, _s(',"runtime_mode":'), mode_s, _s(',"phase":'), phase_s,
                 _s(',"gpu_ms":'), gpu_ms, gap_f, _s(',"start":"lower bound","enqueued_us":'), tus,
                 _s(',"queued_us":'), strings(q), _s("}}"))
    gpu_line = pc.if_else(_mask(has_gpu), gpu_line, _s(""))
    text = j(host_line, launch, gap_line, batch_line, gpu_line)
    ngap, ngpu = int(has_gap.sum()), int(has_gpu.sum())
    w.events += 3 * n + ngap + ngpu
    w.counts["step"] += n
    w.counts["gpu"] += ngpu
    w.counts["counter"] += 4 * n + ngap
    return text.to_pylist()


def _mask(x: np.ndarray):
    return pa.Array.from_buffers(pa.bool_(), len(x), [None, pa.py_buffer(np.packbits(x, bitorder="little"))])


def step_events(w, c: dict, k: int) -> None:
    """One columnar step's events: what _PerfettoWriter._step writes for its record (export.with_derived's
    fields; keys in the same order; ints as str, floats as repr: json.dumps' text)."""
    t = c["t_us"][k] / 1e6
    i, batch, rows, target, bucket = c["i"][k], c["batch"][k], c["rows"][k], c["target"][k], c["bucket"][k]
    prompt, tokens = c["prompt_tokens"][k], c["tokens"][k]
    host_us, gpu_ms, gap_us = c["host_us"][k], c["gpu_ms"][k], c["gap_us"][k]
    mode, phase, reason = c["runtime_mode"][k], c["phase"][k], c["reason"][k]
    if rows < 0:
        rows = batch                                              # records.step_rows
    if mode not in R.RUNTIME_MODES:                               # records.step_runtime_mode
        mode = R.RUNTIME_NONE if bucket < 0 else R.RUNTIME_FULL
    if phase not in R.PHASES:                                     # records.step_phase
        phase = R.PHASE_DECODE
    prompt = max(prompt, 0)                                       # null: 0
    padded = 0 if bucket < 0 else bucket - rows
    tail = "" if phase == R.PHASE_DECODE else f" {phase}"        # export.step_name
    if bucket >= 0:
        name = f"graph b{bucket}{' PIECEWISE' if mode == R.RUNTIME_PIECEWISE else ''}{tail}"
    else:
        name = f"eager b{rows}{tail}" + (f" ({reason})" if reason else "")
    name = _q(name)
    t_us = round(t * 1e6, 3)
    ts = max(t_us, w.host_end)
    has_gap = gap_us == gap_us
    args = (f'"i":{i},"batch":{batch},"rows":{rows}' + (f',"bucket":{bucket}' if bucket >= 0 else "")
            + (f',"target":{target}' if target >= 0 else "")
            + f',"runtime_mode":{_q(mode)},"phase":{_q(phase)},"prompt_tokens":{prompt},"padded":{padded}'
            + ("" if reason is None else f',"reason":{_q(reason)}')
            + f',"tokens":{tokens},"host_us":{host_us!r}' + (f',"gpu_ms":{gpu_ms!r}' if gpu_ms == gpu_ms else "")
            + (f',"gap_us":{gap_us!r}' if has_gap else "")
            + (f',"shifted_us":{round(ts - t_us, 3)!r}' if ts > t_us else ""))
    dur = round(host_us, 3)
    w._track(HOST)
    emit = w._line
    emit(f'{{"ph":"X","cat":"step","name":{name},"pid":1,"tid":{HOST},"ts":{ts!r},"dur":{dur!r},"args":{{{args}}}}}')
    w.counts["step"] += 1
    w.host_end = ts + dur
    emit(f'{{"ph":"C","name":"host launch","pid":1,"tid":{HOST},"ts":{t_us!r},"args":{{"us":{host_us!r}}}}}')
    n = 4
    if has_gap:
        emit(f'{{"ph":"C","name":"GPU gap","pid":1,"tid":{HOST},"ts":{t_us!r},"args":{{"us":{gap_us!r}}}}}')
        n += 1
    emit(f'{{"ph":"C","name":"batch","pid":1,"tid":{HOST},"ts":{t_us!r},'
         f'"args":{{"rows":{rows},"padded":{padded},"requests":{batch}}}}}')
    w.counts["counter"] += n
    if gpu_ms == gpu_ms:                                          # _PerfettoWriter._gpu_step
        gts = max(t_us, w.gpu_end + (gap_us if has_gap else 0.0))
        gdur = round(gpu_ms * 1000, 3)
        gargs = (f'"i":{i},"batch":{batch},"rows":{rows}' + (f',"bucket":{bucket}' if bucket >= 0 else "")
                 + f',"runtime_mode":{_q(mode)},"phase":{_q(phase)},"gpu_ms":{gpu_ms!r}'
                 + (f',"gap_us":{gap_us!r}' if has_gap else "")
                 + f',"start":"lower bound","enqueued_us":{t_us!r},"queued_us":{round(gts - t_us, 3)!r}')
        w._track(GPU)
        emit(f'{{"ph":"X","cat":"gpu","name":{name},"pid":1,"tid":{GPU},"ts":{gts!r},"dur":{gdur!r},'
             f'"args":{{{gargs}}}}}')
        w.counts["gpu"] += 1
        w.gpu_end = gts + gdur


_COUNTERS = [(f, _q(name), _q(key), scale) for f, (name, key, scale) in SAMPLE_COUNTERS.items()]


def sample_events(w, rec: dict) -> None:
    """A columnar sample's counters, as _PerfettoWriter._sample writes them (its fields are numbers or null)."""
    ts = repr(round(rec["t"] * 1e6, 3))
    n = 0
    for field, name, key, scale in _COUNTERS:
        v = rec.get(field)
        if v is None or v != v or v in (math.inf, -math.inf):
            continue
        w._line(f'{{"ph":"C","name":{name},"pid":1,"tid":{HOST},"ts":{ts},"args":{{{key}:'
                f'{(round(v * scale, 3) if scale != 1 else v)!r}}}}}')
        n += 1
    w.counts["counter"] += n


def prefill_events(w, rec: dict) -> None:
    """A columnar prefill's slice, as _PerfettoWriter._prefill writes it (t, i, requests, tokens: numbers or
    null; host_ms a float; its host track named)."""
    t_us = round(rec["t"] * 1e6, 3)
    ts = max(t_us, w.host_end)
    args = ",".join(f'"{k}":{v!r}' for k, v in rec.items() if k not in ("type", "t") and v is not None)
    if ts > t_us:
        args += ("," if args else "") + f'"shifted_us":{round(ts - t_us, 3)!r}'
    dur = round(rec["host_ms"] * 1000, 3)
    name = _q(f"prefill {rec['requests']} req")
    w._line(f'{{"ph":"X","cat":"prefill","name":{name},"pid":1,"tid":{HOST},"ts":{ts!r},"dur":{dur!r},'
            f'"args":{{{args}}}}}')
    w.counts["prefill"] += 1
    w.host_end = ts + dur
