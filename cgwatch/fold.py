"""A compact trace through the readers' validation and the accumulator, a column batch at a time.

The vectorized twin of ``Trace.screened()`` + ``RunStats.add`` for a compact trace (columnar.py), with the
same rules and the same results (tests/test_fold.py asserts equality with the record-by-record path):

- ``screen(trace)``: records.screen's decisions. A step, sample or prefill row whose columns pass the
  checks of records.check_record (tested on whole columns: present, non-negative, finite, graph >= rows,
  padded = bucket - rows, ...) is accepted without decoding it; any other row is decoded and judged by
  records.check_record itself, so a vector test that is too strict only costs time, never a different
  answer. Duplicates of ``i`` (the first in file order counts) and the longest run of steps whose ``t``
  never decreases with ``i`` are found over all accepted steps (records._longest_nondecreasing when the
  run is not already in order). The warning line names the first records by row, as records.Screen does.
- ``fold(trace, stats, on_record)``: every accepted record into ``stats``. Columnar steps go in through
  ``RunStats.add_steps`` between the records that change the epochs (capture, capture_done, recapture)
  or that are not columnar, which go through ``RunStats.add`` at their place in file order, as do all
  records given to ``on_record`` (the non-step, non-sample, non-prefill records: events, end, unknown).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import columnar as C
from . import records as R
from .aggregate import RunStats

STEP_BITS = {k: 1 << n for n, k in enumerate(C.STEP_KEYS)}
STEP_REQUIRED_MASK = sum(STEP_BITS[k] for k in R.STEP_REQUIRED)
PREFILL_BITS = {k: 1 << n for n, k in enumerate(C.PREFILL_KEYS)}
EPOCH_EVENTS = (R.EV_CAPTURE, R.EV_CAPTURE_DONE, R.EV_RECAPTURE)
_SAMPLE_INT = [k for k in R.SAMPLE_NUMBERS if C.COLUMNS[k][2] != "f"]
_SAMPLE_FLOAT = [k for k in R.SAMPLE_NUMBERS if C.COLUMNS[k][2] == "f"]


# Columns to numpy without pyarrow's conversions of Python values (pa.scalar, pa.array of a list: pyarrow
# then imports pandas, if installed, 0.25 s of a 1 s report): raw buffers, null masks, dictionary codes.
def _null(col) -> np.ndarray:
    n = len(col)
    if not col.null_count:
        return np.zeros(n, dtype=bool)
    bits = col.is_null().buffers()[1]   # a boolean array without nulls: its bit-packed values
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")[:n].view(bool)


def _raw(col, dtype) -> np.ndarray:
    """The values buffer (whatever sits in a null slot)."""
    buf = col.buffers()[1]
    return np.frombuffer(buf, dtype=dtype, count=col.offset + len(col))[col.offset:]


def _ints(col, fill: int = -1) -> np.ndarray:
    v = _raw(col, col.type.to_pandas_dtype()).astype(np.int64)
    return np.where(_null(col), fill, v) if col.null_count else v


def _floats(col) -> np.ndarray:
    """float64 with NaN for null (a columnar value is never NaN where this is used: fine rows exclude it)."""
    v = _raw(col, col.type.to_pandas_dtype()).astype(np.float64)
    return np.where(_null(col), np.nan, v) if col.null_count else v


def _codes(col, names) -> np.ndarray:
    """Per row: the index of its string in ``names``, -1 for null or any other string."""
    enc = pc.dictionary_encode(col)
    words = enc.dictionary.to_pylist()
    table = np.array([names.index(w) if w in names else -1 for w in words] + [-1], dtype=np.int64)
    return table[_ints(enc.indices, len(words))]


def _is(col, value: str) -> np.ndarray:
    return _codes(col, [value]) == 0


def indices(rows: np.ndarray) -> pa.Array:
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def _nonneg(x: np.ndarray, null: np.ndarray) -> np.ndarray:
    """null, or finite and >= 0."""
    with np.errstate(invalid="ignore"):
        return null | (np.isfinite(x) & (x >= 0))


def _fine(b: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (columnar step, columnar sample, columnar prefill, fine): ``fine`` = passes every check of
    records.check_record (on its own, before duplicates and order)."""
    js = _null(b.column("json"))
    step, sample, prefill = (_is(b.column("type"), t) & js for t in (R.STEP, R.SAMPLE, R.PREFILL))
    absent = _ints(b.column("absent"), 0)
    t_ok = ~_null(b.column("t_us"))
    fine = np.zeros(b.num_rows, dtype=bool)
    if step.any():
        n = {k: _null(b.column(k)) for k in ("i", "batch", "rows", "target", "bucket", "padded", "host_us", "gpu_ms",
                                              "gap_us", "tokens", "prompt_tokens")}
        v = {k: _ints(b.column(k)) for k in ("i", "batch", "rows", "target", "bucket", "padded", "tokens",
                                             "prompt_tokens")}
        host, gpu, gap = (_floats(b.column(k)) for k in ("host_us", "gpu_ms", "gap_us"))
        rows = np.where(n["rows"], v["batch"], v["rows"])
        want = np.where(n["bucket"], 0, v["bucket"] - rows)
        ok = ((absent & STEP_REQUIRED_MASK) == 0) & t_ok & ~n["i"] & ~n["batch"] & ~n["host_us"] & ~n["tokens"]
        ok &= (v["i"] >= 0) & (v["batch"] >= 0) & (v["tokens"] >= 0) & (n["rows"] | (v["rows"] >= 0))
        ok &= n["prompt_tokens"] | (v["prompt_tokens"] >= 0)
        ok &= _nonneg(host, n["host_us"]) & _nonneg(gpu, n["gpu_ms"]) & _nonneg(gap, n["gap_us"])
        for k in ("target", "bucket"):
            ok &= n[k] | ((v[k] >= 1) & (v[k] >= rows))
        ok &= n["padded"] | (v["padded"] == want)
        fine |= step & ok
    if sample.any():
        ok = t_ok.copy()
        for k in _SAMPLE_INT:
            ok &= _null(b.column(k)) | (_ints(b.column(k), 0) >= 0)
        for k in _SAMPLE_FLOAT:
            ok &= _nonneg(_floats(b.column(k)), _null(b.column(k)))
        fine |= sample & ok
    if prefill.any():
        ok = t_ok.copy()
        for k in ("requests", "tokens", "host_ms"):
            missing = (absent & PREFILL_BITS[k]) != 0
            x = _floats(b.column(k))
            ok &= missing | (~_null(b.column(k)) & _nonneg(x, np.zeros(len(x), bool)))
        fine |= prefill & ok
    return step, sample, prefill, fine


def _decode_rows(b: pa.RecordBatch, rows: np.ndarray) -> list[dict]:
    return C.decode(b.take(indices(rows))) if len(rows) else []


class Screened:
    """What ``screen`` found: ``bad`` (bool per row), ``fine`` (columnar rows accepted without decoding) and
    the Screen with the count and the one warning line."""

    def __init__(self, bad: np.ndarray, fine: np.ndarray, sc: R.Screen):
        self.bad, self.fine, self.screen = bad, fine, sc

    @property
    def warning(self) -> str | None:
        return self.screen.warning()

    @property
    def skipped(self) -> int:
        return self.screen.count


def screen(trace) -> Screened:
    bads, fines = [], []
    why: dict[int, str] = {}                       # row -> why, for rows records.check_record rejected
    cand_row, cand_i, cand_t = [], [], []          # accepted steps: row, i, t
    base = 0
    for b in trace.batches():
        n = b.num_rows
        step, _, _, fine = _fine(b)
        bad = np.zeros(n, dtype=bool)
        rest = np.flatnonzero(~fine)
        for r, rec in zip(rest, _decode_rows(b, rest)):
            w = R.check_record(rec)
            if w is not None:
                bad[r] = True
                why[base + int(r)] = w
            elif rec.get("type") == R.STEP:
                cand_row.append(np.array([base + r], dtype=np.int64))
                cand_i.append(np.array([rec["i"]], dtype=np.int64))
                cand_t.append(np.array([rec["t"]], dtype=np.float64))
        fs = np.flatnonzero(step & fine)
        cand_row.append(fs.astype(np.int64) + base)
        cand_i.append(_ints(b.column("i"))[fs])
        cand_t.append(_ints(b.column("t_us"))[fs] / 1e6)
        bads.append(bad)
        fines.append(fine)
        base += n
    bad = np.concatenate(bads) if bads else np.zeros(0, bool)
    fine = np.concatenate(fines) if fines else np.zeros(0, bool)
    rows = np.concatenate(cand_row) if cand_row else np.zeros(0, np.int64)
    ii = np.concatenate(cand_i) if cand_i else np.zeros(0, np.int64)
    tt = np.concatenate(cand_t) if cand_t else np.zeros(0)
    order = np.argsort(rows, kind="stable")        # file order
    rows, ii, tt = rows[order], ii[order], tt[order]
    by_i = np.argsort(ii, kind="stable")           # by i; the first in file order first
    si = ii[by_i]
    dup = np.zeros(len(si), dtype=bool)
    dup[1:] = si[1:] == si[:-1]
    dup_rows = rows[by_i[dup]]
    keep = by_i[~dup]                              # accepted steps by i
    kt = tt[keep]
    if len(kt) < 2 or bool(np.all(kt[1:] >= kt[:-1])):
        kept = None
    else:
        kept = R._longest_nondecreasing(kt.tolist())
    order_bad = np.zeros(0, np.int64) if kept is None else \
        np.array([p for p in range(len(keep)) if p not in kept], dtype=np.int64)
    bad[dup_rows] = True
    bad[rows[keep[order_bad]]] = True
    sc = R.Screen()
    sc.count = int(bad.sum())
    for r in np.flatnonzero(bad)[:R.Screen.SHOW]:
        r = int(r)
        if r in why:
            w = why[r]
        else:
            pos = int(np.flatnonzero(rows == r)[0])
            if r in set(dup_rows.tolist()):
                w = f"a duplicate of step i={int(ii[pos])}"
            else:
                p = int(np.flatnonzero(keep == pos)[0])
                kp = sorted(kept)   # positions (in keep) of the kept steps
                j = np.searchsorted(kp, p)
                before = None if j == 0 else (int(ii[keep[kp[j - 1]]]), float(kt[kp[j - 1]]))
                after = None if j >= len(kp) else (int(ii[keep[kp[j]]]), float(kt[kp[j]]))
                w = R._out_of_order(float(kt[p]), before, after)
        sc.first.append((trace.where(r), w))
    return Screened(bad, fine, sc)


def fold(trace, stats: RunStats, screened: Screened | None = None, on_record=None) -> Screened:
    """Every record ``screened`` accepts into ``stats`` (header first); ``on_record(rec)`` gets each decoded
    record (all but the columnar steps, samples and prefills) in file order."""
    screened = screened or screen(trace)
    stats.add(trace.header)
    base = 0
    for b in trace.batches():
        n = b.num_rows
        ok = ~screened.bad[base:base + n]
        fine = screened.fine[base:base + n]
        js = _null(b.column("json"))
        step, sample, prefill = (_is(b.column("type"), t) & js for t in (R.STEP, R.SAMPLE, R.PREFILL))
        special = np.flatnonzero(ok & ~fine)
        decoded = _decode_rows(b, special)
        vec_steps = step & fine & ok
        cols = _step_columns(b) if vec_steps.any() else None
        start = 0
        for r, rec in zip(special, decoded):
            typ = rec.get("type")
            if typ == R.STEP or (typ == R.EVENT and rec.get("kind") in EPOCH_EVENTS):
                if cols is not None:
                    _add_steps(stats, cols, vec_steps, start, int(r))
                start = int(r)
            stats.add(rec)
            if on_record is not None and typ not in (R.STEP, R.SAMPLE, R.PREFILL):
                on_record(rec)
        if cols is not None:
            _add_steps(stats, cols, vec_steps, start, n)
        _add_samples(stats, b, sample & fine & ok)
        _add_prefills(stats, b, prefill & fine & ok)
        base += n
    return screened


def _step_columns(b: pa.RecordBatch) -> dict:
    batch = _ints(b.column("batch"))
    rows_null = _null(b.column("rows"))
    phase = np.maximum(_codes(b.column("phase"), list(R.PHASES)), 0)   # decode for any other
    reason = pc.dictionary_encode(b.column("reason"))
    return {
        "t": _ints(b.column("t_us")) / 1e6, "batch": batch,
        "rows": np.where(rows_null, batch, _ints(b.column("rows"))),
        "target": _ints(b.column("target")), "bucket": _ints(b.column("bucket")),
        "prompt": _ints(b.column("prompt_tokens"), 0), "tokens": _ints(b.column("tokens")),
        "phase": phase.astype(np.int8),
        "piecewise": _is(b.column("runtime_mode"), R.RUNTIME_PIECEWISE),
        "reason": _ints(reason.indices), "reasons": reason.dictionary.to_pylist(),
        "host_us": _floats(b.column("host_us")), "gpu_ms": _floats(b.column("gpu_ms")),
        "gap_us": _floats(b.column("gap_us")),
    }


def _add_steps(stats: RunStats, cols: dict, mask: np.ndarray, a: int, z: int) -> None:
    idx = np.flatnonzero(mask[a:z]) + a
    if len(idx):
        stats.add_steps({k: (v if k == "reasons" else v[idx]) for k, v in cols.items()})


def _add_samples(stats: RunStats, b: pa.RecordBatch, mask: np.ndarray) -> None:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    util = b.column("gpu_util").take(indices(idx))
    u = _raw(util.drop_null(), np.int64)
    if len(u):
        stats.util_sum = float(np.add.accumulate(np.concatenate([[stats.util_sum], u.astype(np.float64)]))[-1])
        stats.util_n += len(u)
    stats._seen(float(_ints(b.column("t_us"))[idx].max() / 1e6))


def _add_prefills(stats: RunStats, b: pa.RecordBatch, mask: np.ndarray) -> None:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    stats.prefills += len(idx)
    stats.prefill_tokens += int(_ints(b.column("tokens"), 0)[idx].sum())
    stats._seen(float(_ints(b.column("t_us"))[idx].max() / 1e6))
