"""A compact trace through the readers' validation and the accumulator, a column batch at a time.

The vectorized twin of ``Trace.screened()`` + ``RunStats.add`` for a compact trace (columnar.py), with the
same rules and the same results (tests/test_fold.py asserts equality with the record-by-record path):

- the screen: records.screen's decisions. A step, sample or prefill row whose columns pass the
  checks of records.check_record (tested on whole columns: present, non-negative, finite, graph >= rows,
  padded = bucket - rows, ...) is accepted without decoding it; any other row is decoded and judged by
  records.check_record itself, so a vector test that is too strict only costs time, never a different
  answer. Duplicates of ``i`` (the first in file order counts) and the longest run of steps whose ``t``
  never decreases with ``i`` are found over all accepted steps (records._longest_nondecreasing when the
  run is not already in order). The warning line names the first records by row, as records.Screen does.
- the fold (``fold(trace)``, one pass with the screen): every accepted record into a RunStats. Columnar steps go in through
  ``RunStats.add_steps`` between the records that change the epochs (capture, capture_done, recapture)
  or that are not columnar, which go through ``RunStats.add`` at their place in file order, as do all
  records given to ``on_record`` (the non-step, non-sample, non-prefill records: events, end, unknown).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import records as R
from .aggregate import RunStats
from .read_ahead import ahead

STEP_BITS = {k: 1 << n for n, k in enumerate(C.STEP_KEYS)}
STEP_REQUIRED_MASK = sum(STEP_BITS[k] for k in R.STEP_REQUIRED)
PREFILL_BITS = {k: 1 << n for n, k in enumerate(C.PREFILL_KEYS)}
EPOCH_EVENTS = (R.EV_CAPTURE, R.EV_CAPTURE_DONE, R.EV_RECAPTURE)
_SAMPLE_CHECKS = [(k, "null") for k in R.SAMPLE_NUMBERS]                         # null, or finite and >= 0
_PREFILL_CHECKS = [(k, "missing") for k in ("requests", "tokens", "host_ms")]    # missing, or finite and >= 0


def always(st, n: int) -> bool:
    return True   # a column no reader of the pass looks at


def _no_values(st, n: int) -> bool:
    return st.null_count == n      # all null (a list column's first leaf: no item has that field)


def _not_negative(st, n: int) -> bool:
    return st.null_count == n or (st.has_min_max and st.min >= 0)


# Columns a Parquet row group need not decode when its statistics pass these tests (columnar.Reader.batches
# reads them as all null): the screen's verdicts and the numbers come out the same. mode: no check or count
# reads a step's mode; gpus with no GPU number: no rank's NVML numbers; the tensor-parallel step times all
# null; a sample's integer fields but gpu_util (counted) when none is negative (each passes its check).
INERT = {"mode": always, "gpus": _no_values, "plan_us": _no_values, "skew_ms": _no_values,
         **dict.fromkeys(("mem_util", "mem_used_bytes", "mem_total_bytes", "sm_clock_mhz", "rss_bytes",
                          "torch_allocated_bytes", "torch_reserved_bytes"), _not_negative)}


# Columns to numpy from their buffers (arrow_np.py: no pyarrow.compute, no pandas).
_null, _raw, _ints, _floats = A.null, A.raw, A.ints, A.floats


class _Cols:
    """One batch's columns as numpy arrays, each converted once."""

    def __init__(self, b: pa.RecordBatch):
        self.b = b
        self._memo: dict = {}

    def _get(self, kind, name, arg=None):
        key = (kind, name, arg)
        v = self._memo.get(key)
        if v is None:
            col = self.b.column(name)
            v = self._memo[key] = (_null(col) if kind == "null" else _ints(col, arg) if kind == "ints"
                                   else _floats(col) if kind == "floats" else _raw(col, A._NP[col.type]))
        return v

    def raw(self, name: str) -> np.ndarray:
        """The values as stored (int32, int64 or float64; a null slot holds any value): no conversion."""
        return self._get("raw", name)

    def at(self, name: str, idx: np.ndarray, fill=np.nan) -> np.ndarray:
        """``ints(name, fill)[idx]`` (``floats(name)[idx]`` for a float column), converting only those rows;
        ``fill`` None: no row of ``idx`` is null (a field the screen requires)."""
        v = self.raw(name)[idx]
        v = v.astype(np.float64 if v.dtype.kind == "f" else np.int64, copy=False)   # a copy already: ours
        if fill is not None and self.b.column(name).null_count:
            nul = self.null(name)[idx]
            if nul.any():
                v[nul] = fill
        return v

    def null(self, name: str) -> np.ndarray:
        return self._get("null", name)

    def ints(self, name: str, fill: int = -1) -> np.ndarray:
        return self._get("ints", name, fill)

    def floats(self, name: str) -> np.ndarray:
        return self._get("floats", name)


_codes = A.codes_in


def _is(col, value: str) -> np.ndarray:
    return _codes(col, [value]) == 0


indices = C.indices


def _nonneg(x: np.ndarray, null: np.ndarray) -> np.ndarray:
    """null, or finite and >= 0."""
    with np.errstate(invalid="ignore"):
        return null | (np.isfinite(x) & (x >= 0))


def _fine(c: _Cols) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (columnar step, columnar sample, columnar prefill, fine): ``fine`` = passes every check of
    records.check_record (on its own, before duplicates and order)."""
    b = c.b
    js = c.null("json")
    code = _codes(b.column("type"), [R.STEP, R.SAMPLE, R.PREFILL])
    step, sample, prefill = (code == 0) & js, (code == 1) & js, (code == 2) & js
    absent = c.ints("absent", 0)
    t_ok = ~c.null("t_us")
    fine = np.zeros(b.num_rows, dtype=bool)
    if step.any():
        # the stored values, unconverted: a null slot's value never decides (each test has its null mask;
        # int32 differences cannot overflow on a row that passes the other tests)
        keys = ("i", "batch", "rows", "target", "bucket", "padded", "host_us", "gpu_ms", "gap_us", "tokens",
                "prompt_tokens")
        n = {k: c.null(k) for k in keys}
        v = {k: c.raw(k) for k in keys}
        rows = np.where(n["rows"], v["batch"], v["rows"])
        want = np.where(n["bucket"], 0, v["bucket"] - rows)
        ok = ((absent & STEP_REQUIRED_MASK) == 0) & t_ok & ~n["i"] & ~n["batch"] & ~n["host_us"] & ~n["tokens"]
        ok &= (v["i"] >= 0) & (v["batch"] >= 0) & (v["tokens"] >= 0) & (n["rows"] | (v["rows"] >= 0))
        ok &= n["prompt_tokens"] | (v["prompt_tokens"] >= 0)
        for k in ("host_us", "gpu_ms", "gap_us"):
            ok &= _nonneg(v[k], n[k])
        for k in ("target", "bucket"):
            ok &= n[k] | ((v[k] >= 1) & (v[k] >= rows))
        ok &= n["padded"] | (v["padded"] == want)
        for k in ("skew_ms", "plan_us"):   # tensor parallelism's (all null in a one-GPU trace)
            if not _all_null(b.column(k)):
                ok &= _nonneg(c.floats(k), c.null(k))
        if not _all_null(b.column("rank_ms")):
            ok &= _ranks_fine(b.column("rank_ms"))
        fine |= step & ok
    for rows, checks in ((sample, _SAMPLE_CHECKS), (prefill, _PREFILL_CHECKS)):   # on their rows only
        idx = np.flatnonzero(rows)
        if not len(idx):
            continue
        ok = t_ok[idx]
        for k, optional in checks:
            col = b.column(k)
            if optional == "null" and _all_null(col):
                continue   # null passes
            x = A.floats_at(col, idx)
            with np.errstate(invalid="ignore"):
                good = np.isfinite(x) & (x >= 0)      # null: NaN here
            if optional == "null":
                good |= A.null_at(col, idx)
            else:                                     # a prefill's field: missing, or a number
                good |= (absent[idx] & PREFILL_BITS[k]) != 0
            ok &= good
        fine[idx[ok]] = True
    return step, sample, prefill, fine


def _all_null(col) -> bool:
    return col.null_count == len(col)


def _ranks_fine(col) -> np.ndarray:
    """Per row: rank_ms null, or each of its items null or finite and >= 0 (records.check_step)."""
    off, vals, vnull = A.list_floats(col)
    with np.errstate(invalid="ignore"):
        bad = ~vnull & ~(np.isfinite(vals) & (vals >= 0))
    cum = np.concatenate([[0], np.cumsum(bad)])
    return cum[off[1:]] == cum[off[:-1]]


def _decode_rows(b: pa.RecordBatch, rows: np.ndarray) -> list[dict]:
    """The records of a few rows: JSON rows from their text, the rest a row at a time (no pyarrow.compute)."""
    if not len(rows):
        return []
    js = b.column("json")
    out = []
    for r in rows.tolist():
        text = js[r].as_py()
        out.append(C._decode_json(text) if text is not None else C.decode(b.slice(r, 1))[0])
    return out


class Screened:
    """What the screen found: ``bad`` (bool per row) and the Screen with the count and the one warning line."""

    def __init__(self, bad: np.ndarray, sc: R.Screen):
        self.bad, self.screen = bad, sc

    @property
    def warning(self) -> str | None:
        return self.screen.warning()

    @property
    def skipped(self) -> int:
        return self.screen.count


def screen(trace) -> Screened:
    """Only what ``fold`` finds to skip (``bad`` per row, the warning line), counting nothing: the exports."""
    return fold(trace, window=0, bucket_values=False, count=False)[1]


def fold(trace, window: int | None = None, on_record=None, steps: bool = False,
         bucket_values: bool = True, count: bool = True) -> tuple[RunStats, Screened]:
    """The trace's accepted records in a ``RunStats(window)`` (header first), and what was skipped.
    ``on_record(rec)`` gets each decoded record (all but the columnar steps, samples and prefills) that is
    accepted, in file order. One pass, which screens each row and counts it; only if that pass finds
    duplicates or steps out of order (which need all the steps) does a second one count without them.
    ``steps``: also keep the accepted steps' ``batch``, ``bucket`` (-1: None) and ``ms`` (records.step_ms) as
    numpy arrays in file order, in the returned Screened's ``steps`` (recommend.py's input).
    ``bucket_values``: as RunStats'. ``count``: False leaves the stats empty (screens, and keeps ``steps``)."""
    mk = (lambda: RunStats(window, bucket_values))  # noqa: E731
    stats, bad, why, ordered, end, later, kept = _pass(trace, mk, None, steps, count)
    cand = extra = None
    if not ordered:   # the accepted steps are not in i order: find duplicates and steps out of order
        cand = _collect(trace, bad)
        extra = _order_bad(cand)
        if len(extra[0]) + len(extra[1]):
            bad = bad.copy()
            bad[extra[0]] = True
            bad[extra[1]] = True
            if count or steps:
                stats, _, _, _, end, later, kept = _pass(trace, mk, bad, steps, count)
    sc = _screen_line(trace, bad, why, cand, extra)
    trace.cache_end(end)   # read on the way: warnings() need no pass of their own
    if on_record is not None:
        for rec in later:
            on_record(rec)
    out = Screened(bad, sc)
    if steps:
        out.steps = {}
        for k in list(kept):
            v = kept.pop(k)   # each list freed as it is joined
            out.steps[k] = np.concatenate(v) if v else np.zeros(0)
    return stats, out


def _pass(trace, make_stats, known_bad, keep_steps=False, count=True):
    """One pass over the trace (``_Pass``): (stats, bad rows, why per rejected row, whether the accepted steps
    came in i order with non-decreasing t, the end record, the decoded records to hand on, the kept step
    columns). ``known_bad``: the rows to leave out (a second pass)."""
    p = _Pass(trace.header, make_stats, known_bad, keep_steps, count, trace.opened_window, trace.opening)
    for b in ahead(trace.batches(dictionary=True, inert=INERT)):
        p.batch(b)
    return p.result()


class _Pass:
    """fold's pass, fed a batch at a time. ``batch(b)`` screens and counts one batch and returns its rows to
    leave out; ``ordered`` stays True while the accepted steps come in i order with non-decreasing t (then
    there is no duplicate and none out of order, and no later batch changes an earlier one's verdicts)."""

    def __init__(self, header: dict, make_stats, known_bad, keep_steps: bool = False, count: bool = True,
                 opened=None, opening: list[dict] | None = None):
        self.stats = make_stats()
        self.stats.add(header)
        if opened is not None:   # a window of the run (window.windowed): the state it opens under
            self.stats.open_window(opening, opened.lo)
        self.known_bad, self.keep_steps, self.count = known_bad, keep_steps, count
        self.bads: list[np.ndarray] = []
        self.why: dict[int, str] = {}
        self.last = (-1, -np.inf)    # (i, t) of the last accepted step
        self.ordered = True
        self.later: list[dict] = []
        self.kept: dict[str, list] = {"batch": [], "bucket": [], "ms": []}
        self.end = None
        self.base = 0

    def batch(self, b: pa.RecordBatch) -> np.ndarray:
        n, base, known_bad, count, stats = b.num_rows, self.base, self.known_bad, self.count, self.stats
        kept = self.kept if self.keep_steps else None
        c = _Cols(b)
        step, sample, prefill, fine = _fine(c)
        bad = np.zeros(n, dtype=bool) if known_bad is None else known_bad[base:base + n].copy()
        rest = np.flatnonzero(~fine & ~bad)
        specials: list[tuple[int, dict]] = []
        for r, rec in zip(rest, _decode_rows(b, rest)):
            w = R.check_record(rec) if known_bad is None else None
            if w is not None:
                bad[r] = True
                self.why[base + int(r)] = w
                continue
            specials.append((int(r), rec))
        ok = fine & ~bad
        vec_steps = step & ok
        if known_bad is None and self.ordered:
            rows, ii, tt = _accepted(c, vec_steps, specials)
            if len(ii):
                last = self.last
                self.ordered = (ii[0] > last[0] and tt[0] >= last[1] and bool(np.all(ii[1:] > ii[:-1]))
                                and bool(np.all(tt[1:] >= tt[:-1])))
                self.last = (int(ii[-1]), float(tt[-1]))
        cols = _step_columns(c, vec_steps, count) if (count or kept is not None) and vec_steps.any() else None
        start = 0
        for r, rec in specials:   # the records that are not columnar steps, at their place in file order
            typ = rec.get("type")
            if typ == R.STEP or (typ == R.EVENT and rec.get("kind") in EPOCH_EVENTS):
                if cols is not None:
                    _add_steps(stats if count else None, cols, start, r, kept)
                start = r
                if typ == R.STEP and kept is not None:
                    kept["batch"].append(np.array([rec["batch"]]))
                    kept["bucket"].append(np.array([-1 if rec["bucket"] is None else rec["bucket"]]))
                    kept["ms"].append(np.array([float(R.step_ms(rec))]))
            if count:
                stats.add(rec)
            if typ == R.END:
                self.end = rec
            if typ not in (R.STEP, R.SAMPLE, R.PREFILL):
                self.later.append(rec)
        if cols is not None:
            _add_steps(stats if count else None, cols, start, n, kept)
        if count:
            _add_samples(stats, c, sample & ok)
            _add_prefills(stats, c, prefill & ok)
        self.bads.append(bad)
        self.base += n
        return bad

    def result(self):
        bad = np.concatenate(self.bads) if self.bads else np.zeros(0, bool)
        return self.stats, bad, self.why, self.ordered, self.end, self.later, self.kept


class Screening:
    """``screen`` a batch at a time, for one pass that also writes (the exports): ``batch(b)`` gives the rows
    of ``b`` to leave out. They are final while ``trusted``: the accepted steps so far came in i and t order.
    Once it turns False, duplicates or steps out of order may make an earlier row bad: the caller starts
    again from ``screen``'s two passes. Read the batches with ``inert`` (INERT, or a subset of it)."""

    def __init__(self, trace):
        self.trace = trace
        self._p = _Pass(trace.header, lambda: RunStats(0, False), None, count=False)

    def batch(self, b: pa.RecordBatch) -> np.ndarray:
        return self._p.batch(b)

    @property
    def trusted(self) -> bool:
        return self._p.ordered

    def done(self) -> Screened:
        """What ``screen`` returns, once every batch went through ``batch`` while trusted."""
        assert self._p.ordered, "the screen's verdicts are not final: use screen()"
        _, bad, why, _, end, _, _ = self._p.result()
        self.trace.cache_end(end)
        return Screened(bad, _screen_line(self.trace, bad, why, None, None))


def inert_to_both(a: dict, b: dict) -> dict:
    """Columns two readers of one pass can both skip: in both ``inert`` maps, where both tests pass."""
    return {k: (lambda st, n, f=a[k], g=b[k]: f(st, n) and g(st, n)) for k in a.keys() & b.keys()}


def _accepted(c: _Cols, vec_steps: np.ndarray, specials: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, i, t) of one batch's accepted steps, in file order: the columnar ones and the decoded ones."""
    fs = np.flatnonzero(vec_steps)
    rows, ii, tt = fs, c.at("i", fs, None), c.at("t_us", fs, None) / 1e6
    more = [(r, rec["i"], rec["t"]) for r, rec in specials if rec.get("type") == R.STEP]
    if more:
        rows = np.concatenate([rows, np.array([m[0] for m in more], dtype=np.int64)])
        ii = np.concatenate([ii, np.array([m[1] for m in more], dtype=np.int64)])
        tt = np.concatenate([tt, np.array([m[2] for m in more], dtype=np.float64)])
        order = np.argsort(rows, kind="stable")
        rows, ii, tt = rows[order], ii[order], tt[order]
    return rows, ii, tt


def _collect(trace, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, i, t) of every step the checks of records.check_record accepted (``bad``: the rows they did not)."""
    out_r, out_i, out_t = [], [], []
    base = 0
    for b in trace.batches(dictionary=True, inert=INERT):
        n = b.num_rows
        c = _Cols(b)
        step, _, _, fine = _fine(c)
        ok = ~bad[base:base + n]
        rest = np.flatnonzero(~fine & ok)
        specials = [(int(r), rec) for r, rec in zip(rest, _decode_rows(b, rest))]
        rows, ii, tt = _accepted(c, step & fine & ok, specials)
        out_r.append(rows + base)
        out_i.append(ii)
        out_t.append(tt)
        base += n
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))  # noqa: E731
    return cat(out_r, np.int64), cat(out_i, np.int64), cat(out_t, np.float64)


def _order_bad(cand):
    """(rows of duplicate steps, rows of steps out of order, and what the warning needs) over the accepted
    steps (row, i, t): records.screen's rules."""
    rows, ii, tt = cand
    if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
        order = np.argsort(rows, kind="stable")    # file order
        rows, ii, tt = rows[order], ii[order], tt[order]
    if len(ii) < 2 or bool(np.all(ii[1:] > ii[:-1])):
        by_i = np.arange(len(ii))                  # written in i order, as a loop writes them
    else:
        by_i = np.argsort(ii, kind="stable")       # by i; the first in file order first
    si = ii[by_i]
    dup = np.zeros(len(si), dtype=bool)
    dup[1:] = si[1:] == si[:-1]
    keep = by_i[~dup]                              # accepted steps by i
    kt = tt[keep]
    if len(kt) < 2 or bool(np.all(kt[1:] >= kt[:-1])):
        kept = None
        out_pos = np.zeros(0, np.int64)
    else:
        kept = R._longest_nondecreasing(kt.tolist())
        out_pos = np.array([p for p in range(len(keep)) if p not in kept], dtype=np.int64)
    return rows[by_i[dup]], rows[keep[out_pos]], (rows, ii, keep, kt, kept)


def _screen_line(trace, bad, why, cand, extra) -> R.Screen:
    """The Screen that counts the skipped rows and names the first few, as records.screen words them."""
    sc = R.Screen()
    sc.count = int(bad.sum())
    if not sc.count:
        return sc
    for r in np.flatnonzero(bad)[:R.Screen.SHOW]:
        r = int(r)
        if r in why:
            w = why[r]
        else:
            if extra is None:
                extra = _order_bad(_collect(trace, bad))
            dup_rows, _, (rows, ii, keep, kt, kept) = extra
            dups = set(dup_rows.tolist())
            pos = int(np.flatnonzero(rows == r)[0])
            if r in dups:
                w = f"a duplicate of step i={int(ii[pos])}"
            else:
                p = int(np.flatnonzero(keep == pos)[0])
                kp = sorted(kept)   # positions (in keep) of the kept steps
                j = int(np.searchsorted(kp, p))
                before = None if j == 0 else (int(ii[keep[kp[j - 1]]]), float(kt[kp[j - 1]]))
                after = None if j >= len(kp) else (int(ii[keep[kp[j]]]), float(kt[kp[j]]))
                w = R._out_of_order(float(kt[p]), before, after)
        sc.first.append((trace.where(r), w))
    return sc


def _step_columns(c: _Cols, vec_steps: np.ndarray, count: bool = True) -> dict:
    """The accepted columnar steps' columns (``row``: their rows), each gathered once; ``count`` False: only
    those the kept steps need."""
    b = c.b
    idx = np.flatnonzero(vec_steps)
    batch = c.at("batch", idx, None)   # the screen's required fields: never null here
    if not count:
        return {"row": idx, "batch": batch, "bucket": c.at("bucket", idx, -1), "host_us": c.at("host_us", idx, None),
                "gpu_ms": c.at("gpu_ms", idx)}
    reason, reasons = A.codes(b.column("reason"))
    out = {
        "row": idx, "t": c.at("t_us", idx, None) / 1e6, "batch": batch,
        "rows": np.where(c.null("rows")[idx], batch, c.at("rows", idx, -1)),
        "target": c.at("target", idx, -1), "bucket": c.at("bucket", idx, -1),
        "prompt": c.at("prompt_tokens", idx, 0), "tokens": c.at("tokens", idx, None),
        "phase": np.maximum(_codes(b.column("phase"), list(R.PHASES)), 0)[idx].astype(np.int8),  # decode: any other
        "piecewise": _is(b.column("runtime_mode"), R.RUNTIME_PIECEWISE)[idx],
        "reason": reason[idx], "reasons": reasons,
        "host_us": c.at("host_us", idx, None), "gpu_ms": c.at("gpu_ms", idx), "gap_us": c.at("gap_us", idx),
    }
    rk = b.column("rank_ms")
    if not _all_null(rk):   # tensor parallelism: each step's rank_ms (NaN past its end; length -1: null)
        off, vals, _ = A.list_floats(rk)
        out["rank_ms"], lens = A.gather_lists(off, vals, idx)
        out["rank_len"] = np.where(c.null("rank_ms")[idx], -1, lens)
        out["skew_ms"] = c.at("skew_ms", idx)
    return out


def _add_steps(stats: RunStats | None, cols: dict, a: int, z: int, kept: dict | None = None) -> None:
    """The accepted columnar steps of rows [a, z) (views of ``cols``: they are in row order) into ``stats``
    (None: not counted) and ``kept``."""
    lo, hi = np.searchsorted(cols["row"], [a, z])
    if hi > lo:
        sel = {k: (v if k == "reasons" else v[lo:hi]) for k, v in cols.items() if k != "row"}
        if stats is not None:
            stats.add_steps(sel)
        if stats is not None and "rank_ms" in sel:   # RunStats.add: ranks.add_step for a step with rank_ms
            has = sel["rank_len"] >= 0
            stats.ranks.add_steps(sel["rank_ms"][has], sel["rank_len"][has], sel["skew_ms"][has])
        if kept is not None:   # int32: batch sizes and buckets fit, at half the memory (recommend on 10M steps)
            kept["batch"].append(sel["batch"].astype(np.int32))
            kept["bucket"].append(sel["bucket"].astype(np.int32))
            kept["ms"].append(np.where(np.isnan(sel["gpu_ms"]), sel["host_us"] / 1000.0, sel["gpu_ms"]))


def _add_samples(stats: RunStats, c: _Cols, mask: np.ndarray) -> None:
    b = c.b
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    col = b.column("gpu_util")
    u = A.raw(col, np.int64)[idx][~A.null_at(col, idx)]
    if len(u):
        stats.util_sum = float(np.add.accumulate(np.concatenate([[stats.util_sum], u.astype(np.float64)]))[-1])
        stats.util_n += len(u)
    g = b.column("gpus")
    if not _all_null(g):   # tensor parallelism: each GPU's NVML numbers
        rows = idx[~A.null_at(g, idx)]
        items = A.list_items(A.list_offsets(g), rows)
        gpu, util, mem = (g.values.field(k) for k in ("gpu", "gpu_util", "mem_used_bytes"))
        stats.ranks.add_samples(A.raw(gpu, np.int64)[items], ~A.null_at(gpu, items), A.floats_at(util, items),
                                A.raw(mem, np.int64)[items], ~A.null_at(mem, items))
    stats._seen(float(c.at("t_us", idx, None).max() / 1e6))


def _add_prefills(stats: RunStats, c: _Cols, mask: np.ndarray) -> None:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    stats.prefills += len(idx)
    stats.prefill_tokens += int(c.at("tokens", idx, 0).sum())
    stats._seen(float(c.at("t_us", idx, None).max() / 1e6))


def fold_rows(stats: RunStats, b: pa.RecordBatch, a: int, z: int) -> None:
    """Rows [a, z) of one batch into ``stats``, each judged on its own (records.check_record), as a live view
    screens them (the TUI's replay of a compact trace: no duplicate or order check over the whole trace)."""
    if a >= z:
        return
    if a or z < b.num_rows:
        b = b.slice(a, z - a)
    c = _Cols(b)
    step, sample, prefill, fine = _fine(c)
    rest = np.flatnonzero(~fine)
    bad = np.zeros(b.num_rows, dtype=bool)
    specials = []
    for r, rec in zip(rest, _decode_rows(b, rest)):
        if R.check_record(rec) is not None:
            bad[r] = True
        else:
            specials.append((int(r), rec))
    ok = fine & ~bad
    vec_steps = step & ok
    cols = _step_columns(c, vec_steps) if vec_steps.any() else None
    start = 0
    for r, rec in specials:
        typ = rec.get("type")
        if typ == R.STEP or (typ == R.EVENT and rec.get("kind") in EPOCH_EVENTS):
            if cols is not None:
                _add_steps(stats, cols, start, r)
            start = r
        stats.add(rec)
    if cols is not None:
        _add_steps(stats, cols, start, b.num_rows)
    _add_samples(stats, c, sample & ok)
    _add_prefills(stats, c, prefill & ok)
