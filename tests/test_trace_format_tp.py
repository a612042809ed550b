"""The compact format's tensor-parallel columns (table 2): steps' rank_ms / skew_ms / plan_us and samples' gpus
in columns, losslessly; table-1 files still read (the new columns null); every reader gives the record path's
answer for a TP trace (the report and exports: test_fold.py, test_export_fast.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from cgwatch import columnar as C
from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert
from cgwatch.replay_index import CompactRecords
from cgwatch.report import build_report
from cgwatch.trace import TraceWriter, open_trace

from test_fold import synthetic
from test_rank_views import HEADER as TP_HEADER, tp_run

HEADER = {"model": {"name": "x"}, "gpu": "cpu", "tensor_parallel_size": 2}


def _jsonl(path, recs, header=HEADER):
    with TraceWriter(path, header) as w:
        for r in recs:
            w.write(r)
    return str(path)


def test_tp_records_go_in_columns_and_round_trip_byte_for_byte(tmp_path):
    recs = synthetic(3, n=2000, bad=True, tp=True) + tp_run()
    jl = _jsonl(tmp_path / "tp.jsonl", recs)
    for ext in (".parquet", ".arrows"):
        out, back = tmp_path / f"tp{ext}", tmp_path / f"back{ext}.jsonl"
        convert(jl, str(out))
        convert(str(out), str(back))
        assert back.read_bytes() == open(jl, "rb").read()
        t = open_trace(str(out))
        assert list(map(json.dumps, t.records)) == list(map(json.dumps, open_trace(jl).records))   # NaN too
        b = pa.concat_tables([pa.Table.from_batches([x]) for x in t.batches()])
        typ, js = b.column("type").to_pylist(), b.column("json").to_pylist()
        tp_steps = [k for k, r in enumerate(recs) if r["type"] == "step" and isinstance(r.get("rank_ms"), list)]
        in_cols = sum(js[k] is None for k in tp_steps)
        assert in_cols > 0.9 * len(tp_steps)           # the odd orders and values: JSON
        gpus = [k for k, r in enumerate(recs) if "gpus" in r]
        assert sum(js[k] is None for k in gpus) > 0.7 * len(gpus) and typ[gpus[0]] == "sample"


def test_a_two_rank_trace_is_smaller_in_columns(tmp_path):
    """The point of the columns: a TP step no longer costs a JSON line in the table."""
    recs = [r for r in synthetic(3, n=3000, bad=False, tp=True)]
    jl = _jsonl(tmp_path / "tp.jsonl", recs)
    pq = tmp_path / "tp.parquet"
    convert(jl, str(pq))
    as_json = tmp_path / "json.parquet"   # the same records as table 1 kept them: every TP row as JSON
    rows = [dict(r, _json=1) if "rank_ms" in r or "gpus" in r else r for r in recs]
    C.write_table(str(as_json), open_trace(jl).header, [C.encode(rows)])
    assert os.path.getsize(pq) < 0.9 * os.path.getsize(as_json)   # random numbers here: see BENCHMARKS.md


def _as_table_1(path_in: str, path_out: str) -> None:
    """A compact file as cgwatch 0.1 (table 1) wrote it: no TP columns, ``absent`` of 16 / 12 bits, every
    TP record in ``json``."""
    t = open_trace(path_in)
    recs = t.records + ([t.end] if t.end else [])
    b = C.encode([dict(r, _x=1) if "rank_ms" in r or "gpus" in r or "plan_us" in r else r for r in recs])
    js = [None if v is None else json.dumps({k: x for k, x in json.loads(v).items() if k != "_x"},
                                            separators=(",", ":")) for v in b.column("json").to_pylist()]
    absent = b.column("absent").to_numpy(zero_copy_only=False)
    typ = np.array(b.column("type").to_pylist(), dtype=object)
    mask = np.where(typ == "step", (1 << 16) - 1, np.where(typ == "sample", (1 << 12) - 1, -1))
    absent = pa.array([None if np.isnan(a) else int(a) & int(m) for a, m in zip(absent, mask)], pa.int32())
    keep = [f for f in C.SCHEMA if f.name not in C.ADDED]
    meta = {C.META_KEY: json.dumps({"format": "cgwatch-trace", "version": 1, "table": 1, "part": 0,
                                    "header": t.header}).encode()}
    cols = {f.name: b.column(f.name) for f in keep}
    cols["json"], cols["absent"] = pa.array(js, pa.string()), absent
    v1 = pa.RecordBatch.from_arrays([cols[f.name] for f in keep], schema=pa.schema(keep, metadata=meta))
    if path_out.endswith(".parquet"):
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_batches([v1]), path_out, row_group_size=700)
    else:
        with open(path_out, "wb") as f, pa.ipc.new_stream(f, v1.schema) as w:
            for k in range(0, v1.num_rows, 700):
                w.write_batch(v1.slice(k, 700))


@pytest.mark.parametrize("ext", [".parquet", ".arrows"])
def test_table_1_files_still_read_the_same(ext, tmp_path, capsys):
    recs = synthetic(3, n=1500, bad=True, tp=True)
    jl = _jsonl(tmp_path / "tp.jsonl", recs)
    v1 = str(tmp_path / f"v1{ext}")
    _as_table_1(jl, v1)
    t = open_trace(v1)
    assert t.compact[0].meta["table"] == 1
    assert list(map(json.dumps, t.records)) == list(map(json.dumps, open_trace(jl).records))
    from cgwatch.window import Window, windowed
    for w in (None, Window(1.5, 3.0)):   # a window: its batches read by seeking (an IPC stream), the whole layout
        a, b = (build_report(open_trace(p) if w is None else windowed(open_trace(p), w)) for p in (jl, v1))
        for d in (a, b):
            d.pop("path"), d.pop("warnings")
        assert a == b and a["totals"]["forwards"] > 100
    for fmt in ("csv", "perfetto"):
        got = []
        for p in (jl, v1):
            assert main(["export", p, "--format", fmt, "-o", str(tmp_path / f"x.{fmt}")]) == 0
            data = (tmp_path / f"x.{fmt}").read_text()
            got.append(data if fmt == "csv" else json.dumps({**json.loads(data), "metadata": None}))
        assert got[0] == got[1], fmt
    idx = CompactRecords(open_trace(v1))          # the replay's row groups
    try:
        want = list(map(json.dumps, t.records + [t.end]))
        assert list(map(json.dumps, (idx[k] for k in range(len(idx))))) == want
        assert list(map(json.dumps, idx.records(5, 900))) == want[5:900]
    finally:
        idx.close()
    back = tmp_path / "back.jsonl"
    convert(v1, str(back))                          # and convert brings it up to table 2
    assert back.read_bytes() == open(jl, "rb").read()
    capsys.readouterr()


def test_a_newer_table_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "n.arrows"
    sch = C.SCHEMA.with_metadata({C.META_KEY: json.dumps({"format": "cgwatch-trace", "version": 1,
                                                          "table": C.TABLE_VERSION + 1, "part": 0,
                                                          "header": {"type": "header"}}).encode()})
    with open(path, "wb") as f, pa.ipc.new_stream(f, sch) as w:
        w.write_batch(pa.RecordBatch.from_arrays(C.encode([R.step(0, 0.5, 1, 1, 1, None, 1.0, None, 1)]).columns,
                                                 schema=sch))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"(table {C.TABLE_VERSION + 1}) is newer" in err and err.count("\n") == 1 and "Traceback" not in err


def test_rank_views_trace_reports_the_same_from_columns(tmp_path):
    jl = _jsonl(tmp_path / "tp.jsonl", tp_run(), TP_HEADER)
    for ext in (".parquet", ".arrows"):
        out = str(tmp_path / f"tp{ext}")
        convert(jl, out)
        a, b = build_report(open_trace(jl)), build_report(open_trace(out))
        a.pop("path"), b.pop("path")
        assert a == b and a["ranks"] and a["rank_totals"]["skew_n"] == 3


def test_tp_columns_open_in_pandas_polars_duckdb(tmp_path):
    for mod in ("pandas", "polars", "duckdb"):
        pytest.importorskip(mod)
    jl = _jsonl(tmp_path / "tp.jsonl", synthetic(3, n=500, bad=False, tp=True))
    p = tmp_path / "tp.parquet"
    convert(jl, str(p))
    code = f"""
import pandas as pd, polars as pl, duckdb
p = {str(p)!r}
df = pd.read_parquet(p)
assert df[df.type == "step"].rank_ms.dropna().map(len).max() >= 2
assert pl.read_parquet(p).filter(pl.col("type") == "sample").select(pl.col("gpus").list.len()).max().item() == 2
assert duckdb.sql(f"select count(*) from '{{p}}' where rank_ms[2] > 0").fetchall()[0][0] > 100
assert duckdb.sql(f"select max(g.gpu) from (select unnest(gpus) g from '{{p}}')").fetchall()[0][0] == 1
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.stdout.strip() == "ok", out.stderr
