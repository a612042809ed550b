"""The columnar CSV's cell text (export_columnar.py) is the record path's: floats by pyarrow's cast checked
against repr, numbers at their extremes, the coded columns merged or not, and the ways the CSV is written."""

import io
import math

import numpy as np
import pytest

from cgwatch import export_columnar
from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert

from test_export_fast import _edge_records, _export, _tp_records, _write
from test_fold import synthetic

EDGE_FLOATS = [0.0, -0.0, 0.1, 0.2, 0.30000000000000004, 1.0, -2.5, 14406.0, 14946.9, 1e-4, 1.5e-4, 9.9999e-5,
               1e-5, 1e-7, 5e-324, 123456789.125, 9999999999.0, 9999999999.5, 1e10, 12345678901.25, 1e15, 1e16,
               2.0 ** 53 + 2, 1.2345678901234567e16, 1e22, 1.7976931348623157e308, -1e-5, -1e16]


def _want(vals) -> list[str]:
    return [repr(v) if math.isfinite(v) else "" for v in vals]


def test_float_words_are_repr():
    """pyarrow's cast where it gives repr's text, repr elsewhere; NaN and infinity (null) empty."""
    rng = np.random.default_rng(7)
    bits = rng.integers(np.float64(1e-6).view(np.int64), np.float64(1e18).view(np.int64), 20000)
    x = bits.view(np.float64)
    dec = np.round(x * 10.0 ** (k := rng.integers(0, 7, len(x)))) / 10.0 ** k   # few decimals, as measured
    vals = np.concatenate([EDGE_FLOATS, [math.nan, math.inf, -math.inf], x, -x, dec, np.round(x)])
    assert export_columnar._float_words(vals).to_pylist() == _want(vals.tolist())


def _steps_with_edge_numbers() -> list[dict]:
    """Steps whose floats are the edge values, with a whole-number and huge i, tokens of a wide range and
    times of whole seconds and of each number of decimals."""
    out = []
    for k, v in enumerate(EDGE_FLOATS):
        rec = R.step(2 ** 53 + k, round(1.0 + k * 0.25 + 10.0 ** -(1 + k % 6), 6), 1 + k % 5, 8, 8, None, 1.0, None,
                     [1, 2 ** 31 - 1, 0][k % 3])
        out.append({**rec, "host_us": abs(v), "gpu_ms": v if k % 2 else None, "gap_us": abs(v) if k % 4 else None})
    return out


@pytest.mark.parametrize("few", [None, 1])
@pytest.mark.parametrize("name", ["numbers", "edge", "tp", "synthetic"])
def test_csv_equals_record_path(name, few, tmp_path, capsys, monkeypatch):
    """Byte for byte the record path's CSV, with the coded columns merged as usual and (few=1) not at all."""
    if few is not None:
        monkeypatch.setattr(export_columnar, "_FEW", few)
    recs = {"numbers": _steps_with_edge_numbers, "edge": _edge_records, "tp": _tp_records,
            "synthetic": lambda: synthetic(6, n=1500, bad=True)}[name]()
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    want = _export(jl, "csv", tmp_path / "want.csv", capsys)
    if name == "numbers":   # the values made it to the CSV (not screened out)
        for text in ("1e+16", "1e-05", "123456789.125", "9999999999.5", "12345678901.25", "-0.0", "2147483647",
                     "5e-324", str(2 ** 53 + 3)):
            assert text.encode() in want, text
    for ext in (".parquet", ".arrows"):
        compact = tmp_path / f"t{ext}"
        convert(str(jl), str(compact))
        assert _export(compact, "csv", tmp_path / f"got{ext}.csv", capsys) == want, ext


def test_stdout_and_a_text_buffer_get_the_same_csv(tmp_path, capsys):
    """'-o -' (stdout's binary buffer) and a file without one (decoded text) write what the file gets."""
    from cgwatch import export as E
    from cgwatch.fold import screen
    from cgwatch.trace import open_trace
    jl = tmp_path / "t.jsonl"
    _write(jl, _edge_records() + synthetic(8, n=800, bad=False))
    pq = tmp_path / "t.parquet"
    convert(str(jl), str(pq))
    want = _export(pq, "csv", tmp_path / "want.csv", capsys)
    assert main(["export", str(pq), "--format", "csv", "-o", "-"]) == 0
    assert capsys.readouterr().out.encode() == want
    tr = open_trace(str(pq))
    buf = io.StringIO()
    export_columnar.export_csv(tr, buf, screen(tr).bad, E.STEP_COLUMNS, E.csv_cells)
    assert buf.getvalue().encode() == want


def test_tensor_parallel_nan_and_infinity_are_empty(tmp_path):
    """NaN and infinity in rank_ms, skew_ms and plan_us (the screen leaves such steps out; here nothing is left
    out): empty cells, as the record path writes them."""
    from cgwatch import export as E
    from cgwatch.fold import screen
    from cgwatch.trace import open_trace
    recs = _tp_records()
    recs[3] = {**recs[3], "plan_us": math.nan, "rank_ms": [math.inf, -math.inf, math.nan, 1.0], "skew_ms": math.inf}
    recs[7] = {**recs[7], "plan_us": -math.inf, "skew_ms": math.nan}
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    want = io.StringIO()
    E.export_csv(str(jl), want)
    pq = tmp_path / "t.parquet"
    convert(str(jl), str(pq))
    tr = open_trace(str(pq))
    got = io.StringIO()
    export_columnar.export_csv(tr, got, np.zeros_like(screen(tr).bad), E.STEP_COLUMNS, E.csv_cells)
    assert got.getvalue() == want.getvalue() and "inf" not in want.getvalue() and "nan" not in want.getvalue()


def test_the_trailing_zeros_table_is_whole_to_every_builder_thread(monkeypatch):
    """The table the t column's text uses is built on first use, which the two builder threads may reach at
    once: neither may see it half built (a test's first export wrote some t with their zeros)."""
    import threading
    frac = np.arange(10 ** 6, dtype=np.int64)
    want = np.array([len(str(f)) - len(str(f).rstrip("0")) if f else 5 for f in range(10 ** 6)], np.int8)
    for _ in range(5):
        monkeypatch.setattr(export_columnar, "_TZ", None)
        go, got = threading.Barrier(2), [None, None]

        def build(k: int) -> None:
            go.wait()
            got[k] = export_columnar._trailing_zeros(frac)
        threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(g, want) for g in got)
