"""``cgwatch export --format csv`` of a compact trace from its columns: the same bytes as the record path.

A columnar step row becomes a CSV line without a dict. Each column's distinct values are formatted once, as
the csv module writes them (``str`` of an int, ``repr`` of a float, a string quoted where it must be; null,
NaN and infinity empty): a column is its codes and words. Adjacent columns of few distinct values are merged
into one (each distinct combination of their words joined once); ``t`` and ``i`` are text built by pyarrow;
pyarrow joins the pieces into lines (a batch's lines built in a pool of BUILDERS threads: pyarrow's kernels
run without the GIL), whose bytes go to the file a batch at a time, in order. A tensor-parallel step's
``plan_us``, ``skew_ms`` and ``rank_ms`` (one column a rank) are columns like the others; only steps kept as
JSON (odd fields) go through the record path's own formatting (export.csv_cells) at their place. Only the
rows the shared validation accepts are written (fold.screen: the same rows records.screen accepts; to a file,
fold.Screening screens each batch in the pass that writes it, export._one_pass).
"""

from __future__ import annotations

import csv
import io
import math
from collections import deque

import numpy as np
import pyarrow as pa

from . import arrow_np as A
from . import columnar as C
from . import cores
from . import records as R
from .read_ahead import ahead

_STEP = R.STEP


# threads building an export's text at once (pyarrow's kernels run without the GIL): the cores this process may
# use, 2 to 6 (each holds a batch's text and keeps its own malloc arena: ~50-100 MiB more each at 1M steps)
BUILDERS = max(2, min(6, cores.usable()))


def strings(words: list[str]) -> pa.Array:
    """A string array from Python strings, built from its buffers (pa.array would import pandas)."""
    offs = np.zeros(len(words) + 1, dtype=np.int64)
    text = "".join(words)
    if text.isascii():
        np.cumsum(list(map(len, words)), out=offs[1:])
        data = text.encode()
    else:
        enc = [w.encode() for w in words]
        np.cumsum([len(e) for e in enc], out=offs[1:])
        data = b"".join(enc)
    return pa.Array.from_buffers(pa.large_string(), len(words), [None, pa.py_buffer(offs), pa.py_buffer(data)])


def _s(text: str) -> pa.Scalar:
    return strings([text])[0]   # pa.scalar would import pandas too


def _csv_word(word: str) -> str:
    """A string as the csv module writes it in a row of several fields (quoted where it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([word, ""])
    return buf.getvalue()[:-2]


def _column(codes: np.ndarray, words: list[str] | pa.Array) -> pa.Array:
    """The cells of one column: ``words[codes]`` as a string array."""
    import pyarrow.compute as pc
    idx = pa.Array.from_buffers(pa.int32(), len(codes), [None, pa.py_buffer(codes.astype(np.int32))])
    return pc.take(words if isinstance(words, pa.Array) else strings(words), idx)


def _numbers(x: np.ndarray, null: np.ndarray, fmt) -> tuple[np.ndarray, list[str]]:
    """(codes, words) of a numeric column: each distinct value (by its bits: -0.0 apart from 0.0) formatted
    once (``fmt``: str, or repr for floats); null, and a float that is not finite, an empty cell."""
    is_float = x.dtype == np.float64
    u, inv = np.unique(x.view(np.int64) if is_float else x, return_inverse=True)
    vals = u.view(np.float64) if is_float else u
    words = list(map(fmt, vals.tolist()))
    if is_float and not np.isfinite(vals).all():
        for k in np.flatnonzero(~np.isfinite(vals)).tolist():
            words[k] = ""
    words.append("")
    return np.where(null, len(words) - 1, inv.reshape(-1)), words


def _ints_text(x: np.ndarray, null: np.ndarray) -> pa.Array:
    """str of each int, null where null (pyarrow's cast: the same digits)."""
    import pyarrow.compute as pc
    arr = pa.Array.from_buffers(pa.int64(), len(x), [_validity(null), pa.py_buffer(np.ascontiguousarray(x, np.int64))])
    return pc.cast(arr, pa.large_string())


def _validity(null: np.ndarray):
    return pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None


def _strs(col) -> tuple[np.ndarray, list[str]]:
    """(codes, words) of a string column, null an empty cell."""
    codes, words = A.codes(col)
    words = [_csv_word(w) for w in words] + [""]
    return np.where(codes < 0, len(words) - 1, codes), words


def _encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values) of an int64 array, by hashing (pyarrow's dictionary_encode: np.unique sorts)."""
    import pyarrow.compute as pc
    x = np.ascontiguousarray(x, np.int64)
    d = pc.dictionary_encode(pa.Array.from_buffers(pa.int64(), len(x), [None, pa.py_buffer(x)]))
    return A.raw(d.indices, np.int32), A.raw(d.dictionary, np.int64)


def _coded(x: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, list[str] | pa.Array]:
    """(codes, words) of an int or float column, as _numbers gives them (str of an int, repr of a float
    told apart by its bits; null, NaN and infinity empty), each distinct value formatted once."""
    if x.dtype == np.float64:
        codes, u = _encode(x.view(np.int64))
        words = pa.concat_arrays([_float_words(u.view(np.float64)), strings([""])])
    else:
        lo, hi = (int(x.min()), int(x.max())) if len(x) else (0, 0)
        if hi - lo < len(x) + 64:   # a narrow range of ints: each code the offset from the least
            codes, words = x - lo, list(map(str, range(lo, hi + 1))) + [""]
        else:
            codes, u = _encode(x)
            words = list(map(str, u.tolist())) + [""]
    return (np.where(null, len(words) - 1, codes) if null.any() else codes), words


def _float_words(x: np.ndarray) -> pa.Array:
    """repr of each float (NaN and infinity empty), by pyarrow's cast where its text can differ from repr's
    only by repr's ".0" of a whole number: from 1e-4 to 1e10 in size, and 0 (the same shortest digits, and no
    exponent: checked on 35M and 9M random values); the others by repr (pyarrow writes a whole 1e10 "1e+10")."""
    import pyarrow.compute as pc
    text = pc.cast(pa.Array.from_buffers(pa.float64(), len(x), [None, pa.py_buffer(x)]), pa.large_string())
    with np.errstate(invalid="ignore"):
        size = np.abs(x)
        odd = ~np.isfinite(x) | ((x != 0) & (size < 1e-4)) | (size >= 1e10)
        whole = ~odd & (x == np.trunc(x))
    if whole.any():
        text = pc.if_else(_mask(whole), pc.binary_join_element_wise(text, _s(".0"), _s("")), text)
    if odd.any():
        text = pc.replace_with_mask(text, _mask(odd), strings([repr(v) if np.isfinite(v) else ""
                                                             for v in x[odd].tolist()]))
    return text


def _bools(arr: pa.Array) -> np.ndarray:
    """A boolean array without nulls as numpy (from its bits: to_numpy would import pandas)."""
    n, off = len(arr), arr.offset
    bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=(off + n + 7) // 8)
    return np.unpackbits(bits, bitorder="little")[off:off + n].view(bool)


def _mask(b: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.bool_(), len(b), [None, pa.py_buffer(np.packbits(b, bitorder="little"))])


def _affix(words: list[str] | pa.Array, before: str, after: str) -> list[str] | pa.Array:
    """Each word with ``before`` and ``after`` it."""
    import pyarrow.compute as pc
    if isinstance(words, pa.Array):
        return pc.binary_join_element_wise(_s(before), words, _s(after), _s(""))
    return [before + w + after for w in words]


_FEW = 2048   # coded parts merge while their distinct combinations are at most this many (a Python join each)


def _merge(parts: list) -> tuple[np.ndarray, list[str]] | None:
    """Adjacent coded parts as one, each distinct combination of their words joined once; None if there are
    too many combinations."""
    size = math.prod(len(w) for _, w in parts)
    if size >= 1 << 62:
        return None
    key = np.zeros(len(parts[0][0]), np.int64)
    for codes, words in parts:   # a mixed-radix number
        key = key * len(words) + codes
    codes, u = _encode(key)
    if len(u) > _FEW:
        return None
    cells = []
    for _, words in reversed(parts):
        u, d = np.divmod(u, len(words))
        cells.append(map((words if isinstance(words, list) else words.to_pylist()).__getitem__, d.tolist()))
    return codes, list(map("".join, zip(*reversed(cells))))


def _merged(run: list) -> list:
    """A run of narrow coded parts as few: all as one if their combinations are few, else pairs left to right."""
    whole = _merge(run) if len(run) > 1 else run[0]
    if whole is not None:
        return [whole]
    out = run[:1]
    for part in run[1:]:
        two = _merge([out[-1], part])
        if two is None:
            out.append(part)
        else:
            out[-1] = two
    return out


_P10 = 10 ** np.arange(7, dtype=np.int64)
_TZ = None   # the number of trailing zeros (at most 5) of each 6-digit fraction of a second


def _trailing_zeros(frac: np.ndarray) -> np.ndarray:
    global _TZ
    if _TZ is None:   # built whole before it is shared: the builder threads may both get here first
        tz = np.zeros(10 ** 6, np.int8)
        for k in range(1, 6):
            tz[::10 ** k] = k
        _TZ = tz
    return _TZ[frac]


def _t_parts(t_us: np.ndarray, null: np.ndarray) -> list | None:
    """repr(t_us / 1e6) of each row, built from the integers, as two parts: the seconds (coded) and the point
    with the µs digits without trailing zeros (".5", ".0"). That is repr's answer while a double resolves a µs
    (t < 4e9 s) and repr does not switch to an exponent (t >= 1e-4 s, or 0); None outside that range."""
    import pyarrow.compute as pc
    v = t_us[~null]
    if len(v) and (int(v.max()) >= 4 * 10 ** 15 or bool(((v > 0) & (v < 100)).any()) or int(v.min()) < 0):
        return None
    frac = t_us % 10 ** 6
    tz = _trailing_zeros(frac)
    # 10**width + the digits left: a 1, then those digits zero-padded; the 1 becomes the point
    digits = frac // _P10[tz] + _P10[6 - tz]
    dot = pc.utf8_replace_slice(_ints_text(digits, null), 0, 1, ".")
    return [_coded(t_us // 10 ** 6, null), dot]


def step_lines(b: pa.RecordBatch, rows: np.ndarray, columns: tuple) -> pa.Array:
    """The CSV lines (each ending in a newline) of the columnar step rows ``rows`` of batch ``b``. Adjacent
    columns of few distinct cells are joined as one (each distinct combination once), the rest by pyarrow."""
    ints = {k: (A.ints(b.column(k), 0)[rows], A.null(b.column(k))[rows])
            for k in ("i", "batch", "rows", "target", "bucket", "tokens", "prompt_tokens", "t_us")}
    batch = ints["batch"][0]
    rows_v = np.where(ints["rows"][1], batch, ints["rows"][0])           # records.step_rows
    bucket, no_bucket = ints["bucket"]
    none = np.zeros(len(rows_v), bool)
    cells: dict = {
        "i": _ints_text(*ints["i"]),
        "batch": _coded(batch, ints["batch"][1]),
        "rows": _coded(rows_v, ints["batch"][1]),
        "target": _coded(*ints["target"]),
        "bucket": _coded(bucket, no_bucket),
        "padded": _coded(np.where(no_bucket, 0, bucket - rows_v), none),   # export.with_derived
        "tokens": _coded(*ints["tokens"]),
        "prompt_tokens": _coded(ints["prompt_tokens"][0], none),       # null: 0
    }
    for k in ("host_us", "gpu_ms", "gap_us", "plan_us", "skew_ms"):
        if k in columns:
            cells[k] = _coded(A.floats(b.column(k))[rows], none)
    if "rank0_ms" in columns:
        cells.update(_rank_cells(b.column("rank_ms"), rows))
    t_us, t_null = ints["t_us"]
    cells["t"] = _t_parts(t_us, t_null)
    if cells["t"] is None:
        cells["t"] = _coded(t_us / 1e6, t_null)
    for k in ("mode", "reason"):
        codes, words = _strs(b.column(k))
        cells[k] = (codes[rows], words)
    for k, allowed in (("runtime_mode", R.RUNTIME_MODES), ("phase", R.PHASES)):
        codes, words = A.codes(b.column(k))
        codes = codes[rows]
        ok = np.array([w in allowed for w in words] + [False], dtype=bool)[codes]   # codes -1: the False
        if k == "runtime_mode":   # records.step_runtime_mode: NONE on an eager step, FULL on a graph one
            fallback = np.where(no_bucket, len(words), len(words) + 1)
            words = words + [R.RUNTIME_NONE, R.RUNTIME_FULL]
        else:                     # records.step_phase: decode
            fallback = np.full(len(codes), len(words))
            words = words + [R.PHASE_DECODE]
        cells[k] = (np.where(ok, codes, fallback), [_csv_word(w) for w in words])
    n = len(rows_v)
    return _lines([cells.get(name, (np.zeros(n, np.int64), [""])) for name in columns])


def _rank_cells(col, rows: np.ndarray) -> dict:
    """``rank{r}_ms`` -> (codes, words) of the rows' rank_ms lists (export.csv_cells: one column a rank); past
    a list's end, a null list and a null item: NaN, an empty cell."""
    off, vals, _ = A.list_floats(col)
    ms, _ = A.gather_lists(off, vals, rows)
    none = np.zeros(len(rows), bool)
    return {f"rank{r}_ms": _coded(np.ascontiguousarray(ms[:, r]), none) for r in range(ms.shape[1])}


def _lines(cols: list) -> pa.Array:
    """The lines of rows given by column: each coded (codes, words), text (a string array, null empty), or a
    list of such parts written without a comma between them. Adjacent coded parts of few combinations become
    one, then pyarrow joins the pieces."""
    import pyarrow.compute as pc
    pieces: list = []   # text arrays, "," and coded parts (each word with the comma before it), runs of those
    for c, col in enumerate(cols):
        for k, part in enumerate(col if isinstance(col, list) else [col]):
            comma = c > 0 and k == 0
            if not isinstance(part, tuple):
                pieces += [_s(","), part] if comma else [part]
                continue
            part = (part[0], _affix(part[1], ",", "")) if comma else part
            if len(part[1]) > _FEW:
                pieces.append(part)
            elif pieces and isinstance(pieces[-1], list):
                pieces[-1].append(part)
            else:
                pieces.append([part])
    pieces = [q for p in pieces for q in (_merged(p) if isinstance(p, list) else [p])]
    if isinstance(pieces[-1], tuple):
        pieces[-1] = (pieces[-1][0], _affix(pieces[-1][1], "", "\n"))
    else:
        pieces.append(_s("\n"))
    arrays = [_column(*p) if isinstance(p, tuple) else p for p in pieces]
    return pc.binary_join_element_wise(*arrays, _s(""), null_handling="replace", null_replacement="")


def _columnar_steps(b: pa.RecordBatch, ok: np.ndarray) -> np.ndarray:
    """The accepted steps of batch ``b`` held in its columns (not kept as JSON), as row numbers."""
    is_step = A.codes_in(b.column("type"), [_STEP]) == 0
    return np.flatnonzero(is_step & A.null(b.column("json")) & ok)


def json_steps(b: pa.RecordBatch, ok: np.ndarray) -> list[tuple[int, dict]]:
    """(row, record) of the accepted steps kept as JSON in batch ``b`` (the record path writes them), in row
    order."""
    is_step = A.codes_in(b.column("type"), [_STEP]) == 0
    js = b.column("json")
    return [(r, C._decode_json(js[r].as_py())) for r in np.flatnonzero(is_step & ~A.null(js) & ok).tolist()]


def _tp_keys(b: pa.RecordBatch, ok: np.ndarray) -> tuple[list[tuple[int, dict]], int]:
    """The CSV's first pass over the accepted columnar steps, without decoding them: (row, {key: None}) of
    the first row to have each tensor-parallel key (the ``absent`` bits: a later row adds no new column and
    moves none), and the longest rank_ms list (0 if none)."""
    rows = _columnar_steps(b, ok)
    absent = A.ints(b.column("absent"), 0)[rows]
    has = {k: (absent & 1 << C.STEP_KEYS.index(k)) == 0 for k in C.TP_STEP_KEYS}
    first = sorted({int(rows[np.argmax(h)]) for h in has.values() if h.any()})
    at = np.searchsorted(rows, first)
    keyed = [(r, {k: None for k in C.TP_STEP_KEYS if has[k][p]}) for r, p in zip(first, at.tolist())]
    off = A.list_offsets(b.column("rank_ms"))
    return keyed, int((off[rows + 1] - off[rows]).max()) if len(rows) else 0


class Fallback(Exception):
    """The single pass (``export_csv`` with a screening) met what only the whole trace settles: steps out of i
    or t order (the screen's second pass), or a header that the rows left out made wider."""


_READ = ["type", "json", "absent", *(C.COLUMNS[k][0] for k in C.STEP_KEYS)]   # what the step lines read


class _Header:
    """The CSV's columns: the schema's, the fields beyond it of the accepted steps (JSON steps' keys, the
    tensor-parallel keys) in the order they first come, one column a rank (the longest ``rank_ms``)."""

    def __init__(self, header_cols: tuple):
        self.cols, self.extra, self.ranks = header_cols, {}, 0

    def add(self, b: pa.RecordBatch, ok: np.ndarray) -> None:
        keyed, longest = _tp_keys(b, ok)
        self.ranks = max(self.ranks, longest)
        for _, rec in sorted(json_steps(b, ok) + keyed, key=lambda x: x[0]):
            self.extra.update((k, None) for k in rec if k != "type" and k not in self.cols and k != "rank_ms")
            if isinstance(rec.get("rank_ms"), list):
                self.ranks = max(self.ranks, len(rec["rank_ms"]))

    def columns(self) -> tuple:
        return self.cols + tuple(self.extra) + tuple(f"rank{r}_ms" for r in range(self.ranks))


def export_csv(trace, out, bad: np.ndarray | None, header_cols: tuple, csv_cells,
               screening=None) -> tuple[int, int]:
    """The CSV of a compact trace (``bad``: the rows to leave out, per row); returns the step rows written and
    the columns.
    Two passes: the first reads only ``type``, ``json``, ``absent`` and the tensor-parallel columns (the
    fields beyond the schema and the number of ranks, in export.export_csv's order); the second only the
    step's columns. ``bad`` None: ``screening`` (fold.Screening) screens each batch in the second pass, and the
    first takes every row: raises Fallback where a row the screen leaves out made the header wider."""
    head = _Header(header_cols)
    base = 0
    for b in trace.batches(["type", "json", "absent", *C.TP_STEP_KEYS], dictionary=True):
        head.add(b, np.ones(b.num_rows, bool) if bad is None else ~bad[base:base + b.num_rows])
        base += b.num_rows
    columns = head.columns()
    put = _bytes_writer(out)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")

    def row(cells) -> None:   # a row as the csv module writes it
        text.seek(0)
        text.truncate()
        w.writerow(cells)
        put(text.getvalue().encode("utf-8", getattr(out, "errors", None) or "strict"))
    row(columns)
    if screening is None:
        batches = trace.batches(_READ, dictionary=True)
    else:   # every column the screen reads too, but those neither it nor the lines need
        from .fold import INERT, always, inert_to_both
        batches = trace.batches(dictionary=True, inert=inert_to_both(
            INERT, {k: always for k in C.NAMES if k not in _READ}))
        head = _Header(header_cols)   # now of the accepted rows only: must come out as ``columns``
    written = 0
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(BUILDERS) as pool:   # each batch's lines built in a pool (BUILDERS in flight), in order
        building: deque = deque()
        for b, ok in ahead(_screened(batches, bad, screening, head)):   # read and screened in a thread
            vec = _columnar_steps(b, ok)
            building.append((vec, json_steps(b, ok), pool.submit(step_lines, b, vec, columns) if len(vec) else None))
            while len(building) >= BUILDERS:
                written += _write_steps(*building.popleft(), columns, put, row, csv_cells)
        while building:
            written += _write_steps(*building.popleft(), columns, put, row, csv_cells)
    if screening is not None and head.columns() != columns:
        raise Fallback("a row left out made the header wider")
    return written, len(columns)


def _screened(batches, bad: np.ndarray | None, screening, head: _Header):
    """(batch, its rows to write): by ``bad``, or screened here (``head`` takes the accepted rows' columns)."""
    base = 0
    for b in batches:
        n = b.num_rows
        if screening is None:
            ok = ~bad[base:base + n]
        else:
            ok = ~screening.batch(b)
            if not screening.trusted:
                raise Fallback("steps out of order")
            head.add(b, ok)
        base += n
        yield b, ok


def _write_steps(vec: np.ndarray, special: list, lines, columns: tuple, put, row, csv_cells) -> int:
    """The lines of a batch's accepted steps, in row order: ``vec`` the columnar ones (their lines: ``lines``, a
    future), ``special`` the (row, record) of those kept as JSON; returns how many."""
    lines = lines.result() if lines is not None else None
    if not special:
        if lines is not None:
            put(_data(lines, 0, len(lines)))
        return len(vec)
    pos = np.searchsorted(vec, [r for r, _ in special])   # the columnar lines before each JSON step
    at = 0
    for p, (_, rec) in zip(pos.tolist(), special):
        if lines is not None and p > at:
            put(_data(lines, at, p))
        at = p
        row(csv_cells(rec, columns))
    if lines is not None and at < len(lines):
        put(_data(lines, at, len(lines)))
    return len(vec) + len(special)


def _bytes_writer(out):
    """A function that writes UTF-8 bytes to the text file ``out``: straight to its binary buffer where it has
    one (no decoding and encoding again), after what ``out`` holds; else decoded."""
    buf = getattr(out, "buffer", None)
    if buf is None or (getattr(out, "encoding", "") or "").lower().replace("-", "") != "utf8":
        return lambda data: out.write(bytes(data).decode())
    out.flush()
    return buf.write


def _data(lines: pa.Array, a: int, z: int) -> memoryview:
    """Lines [a, z) of a string array: its data buffer between their offsets (no copy)."""
    width = np.int64 if lines.type == pa.large_string() else np.int32
    offs = np.frombuffer(lines.buffers()[1], dtype=width, count=lines.offset + len(lines) + 1)[lines.offset:]
    return memoryview(lines.buffers()[2])[int(offs[a]):int(offs[z])]
