"""``cgwatch export --format perfetto`` of a compact trace: the record path's events, without a dict per step.

export.py puts the records back in t order (``_InOrder``: a heap over a 10 s window) and writes each through
``_PerfettoWriter``. When no record comes more than that window late (every cgwatch trace: the two writer
threads are milliseconds apart), that order is a stable sort by t, which this module takes a column batch at
a time: the rows are sorted by (t, row) within the rows still pending, and those that no later row can
precede are written. A columnar step is written from its column values by ``step_events``, the very text
json.dumps gives the record path's events (the same keys in the same order, ``repr`` of the same floats);
every other row (samples, prefills, events, steps kept as JSON) is decoded and goes through the writer as
before. A trace with a record later than the window: None, and the caller takes the record path.
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .export import GPU, HOST, REORDER_WINDOW_S

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
    is_step = (A.codes_in(b.column("type"), [R.STEP]) == 0) & A.null(b.column("json"))
    out = {"key": _t_keys(_row_t(b), newest), "step": is_step, "t_us": A.ints(b.column("t_us"), 0)}
    for k in _INTS:
        out[k] = A.ints(b.column(k))
    for k in _FLOATS:
        out[k] = A.floats(b.column(k))
    for k in _STRS:
        codes, words = A.codes(b.column(k))
        out[k] = np.array(words + [None], dtype=object)[codes]
    rec = np.empty(b.num_rows, dtype=object)
    other = np.flatnonzero(~is_step)
    if len(other):
        js = b.column("json")
        col = [r for r in other.tolist() if not js[r].is_valid]   # samples and prefills
        dec = dict(zip(col, C.decode(b.take(A.indices(np.array(col, dtype=np.int64)))))) if col else {}
        for r in other.tolist():
            rec[r] = dec[r] if r in dec else C._decode_json(js[r].as_py())
    out["rec"] = rec
    return out


def _write(w, cols: dict) -> None:
    if not len(cols["key"]):
        return
    c = {k: v.tolist() for k, v in cols.items() if k != "key"}
    step, rec = c["step"], c["rec"]
    for k in range(len(step)):
        if step[k]:
            step_events(w, c, k)
        else:
            w.add(rec[k])


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
