"""The compact trace format (columnar.py): lossless round trips, conversion both ways, readable while written,
a SIGKILL, damage, unknown versions, rotation, and the tools that open it with no cgwatch code."""

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from cgwatch import columnar as C
from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert
from cgwatch.trace import FIRST_RATIO, TraceError, TraceWriter, open_trace, part_path, read_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "sample_traces", "*.jsonl"))
                 + glob.glob(os.path.join(ROOT, "cgwatch", "samples", "*.jsonl")))
HEADER = {"model": {"name": "tiny"}, "gpu": "cpu", "torch": "2.13"}


def _steps(n: int, t0: float = 0.0) -> list[dict]:
    return [R.step(i, round(t0 + i * 0.01, 6), 3, 4, 4, None, 40.5, 1.25, 3) for i in range(n)]


# Records that do not fit the columns exactly: they go whole as JSON and come back equal.
ODD = [
    {"type": "step", "i": 1, "t": 1, "batch": 2, "target": 2, "bucket": 2, "host_us": 3.0, "gpu_ms": None,
     "tokens": 2},                                                           # an int t
    {"type": "step", "i": 2, "t": 0.1234567, "batch": 2, "target": 2, "bucket": 2, "host_us": 3.0, "gpu_ms": 1.0,
     "tokens": 2},                                                           # t not in whole µs
    {"type": "step", "i": 3, "t": 0.5, "batch": "2", "target": 2, "bucket": None, "host_us": 3.0, "gpu_ms": 1.0,
     "tokens": 2},                                                           # a string where a number goes
    {"type": "step", "i": 4, "t": 0.6, "batch": 2, "target": 2, "bucket": None, "host_us": 3.0, "gpu_ms": 1.0,
     "tokens": 2, "rank": 0, "note": "ünïcode"},                             # fields the columns do not have
    {"type": "step", "i": 5, "t": 0.7, "batch": True, "target": 2, "bucket": 2, "host_us": 3, "gpu_ms": 1.0,
     "tokens": 2},                                                           # a bool; an int host_us
    {"type": "step", "i": 2 ** 40, "t": 0.8, "batch": 2 ** 33, "target": None, "bucket": None, "host_us": 3.0,
     "gpu_ms": None, "tokens": 2},                                           # beyond int32
    {"type": "sample", "t": 0.9, "gpu_util": 50.5, "cpu_pct": 3},            # a float where an int goes, and back
    {"type": "prefill", "t": 1.0, "i": 3, "requests": 1, "tokens": 7, "host_ms": 2.5, "rows": [1, 2]},
    {"type": "event", "kind": "capture_done", "t": 1.1, "sizes": [1, 2], "failed": [], "pool_bytes": None},
    {"type": "state", "t": 1.2, "mode": "graph", "nested": {"a": [1, {"b": None}]}},   # an unknown type
    {"type": "step", "i": 6, "t": 1.3, "batch": 1, "target": 1, "bucket": 1},          # fields missing
    {"type": "step", "i": 7, "t": 1.4, "batch": 1, "rows": None, "target": 1, "bucket": 1, "host_us": 1.5,
     "gpu_ms": None, "gap_us": None, "tokens": 1},                                      # null, not absent
    {"type": "step", "i": 8, "t": 1.5, "batch": 1, "target": 1, "bucket": 1, "host_us": -1.5, "gpu_ms": 0.0,
     "tokens": 1, "padded": 7},                                                         # fits, but not trusted
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_samples_round_trip_byte_for_byte(path, tmp_path):
    """jsonl -> Parquet -> Arrow IPC -> jsonl gives back the very file; the records are equal all the way."""
    pq, ipc, back = tmp_path / "a.parquet", tmp_path / "a.arrows", tmp_path / "back.jsonl"
    for src, out in ((path, pq), (pq, ipc), (ipc, back)):
        convert(str(src), str(out))
    assert back.read_bytes() == open(path, "rb").read()
    a, b = open_trace(path), open_trace(str(pq))
    assert (a.header, a.records, a.end) == (b.header, b.records, b.end)
    assert C.sniff(str(pq)) == "parquet" and C.sniff(str(ipc)) == "ipc" and C.sniff(path) == "jsonl"


def test_odd_records_are_kept_exactly(tmp_path):
    recs = ODD + _steps(5, 2.0)
    batch = C.encode(recs)
    js = batch.column("json").to_pylist()
    assert sum(x is not None for x in js) == 10       # the odd ones as JSON; the rest in columns
    assert C.decode(batch) == recs
    for k in (10, 11, 12):   # missing and null fields, and untrusted values, are columns too
        assert js[k] is None
    path = tmp_path / "odd.parquet"
    C.write_table(str(path), {"type": "header", "format": "cgwatch-trace", "version": 1}, [recs])
    assert open_trace(str(path)).records == recs


def test_nan_is_kept(tmp_path):
    rec = {**R.step(0, 0.5, 1, 1, 1, None, 2.0, None, 1), "host_us": float("nan")}
    path = tmp_path / "n.arrows"
    C.write_table(str(path), {"type": "header", "format": "cgwatch-trace", "version": 1}, [[rec]])
    got = open_trace(str(path)).records[0]
    assert math.isnan(got["host_us"]) and {k: v for k, v in got.items() if k != "host_us"} == \
        {k: v for k, v in rec.items() if k != "host_us"}


def test_writer_picks_the_format_by_name(tmp_path):
    recs = _steps(300) + [R.event(R.EV_MARK, 3.5, text="m")]
    for name, kind in (("r.jsonl", "jsonl"), ("r.parquet", "parquet"), ("r.arrows", "ipc"), ("r.trace", "ipc")):
        with TraceWriter(tmp_path / name, HEADER) as w:
            for r in recs:
                w.write(r)
        assert C.sniff(str(tmp_path / name)) == kind
        tr = open_trace(tmp_path / name)
        assert tr.records == recs and tr.end["type"] == "end" and tr.warnings() == []
        assert tr.header == {"type": "header", "format": "cgwatch-trace", "version": 1, **HEADER}
        assert read_header(tmp_path / name) == tr.header


def test_convert_command_both_ways_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert main(["convert", "sample:llama1b_poisson_h100", str(out)]) == 0
    assert "Parquet" in capsys.readouterr().out
    assert main(["convert", str(out), str(tmp_path / "p.jsonl")]) == 0
    assert main(["report", str(tmp_path / "p.jsonl")]) == 0
    capsys.readouterr()
    for argv, msg in ((["convert", str(tmp_path / "nope.jsonl"), str(tmp_path / "x.parquet")], "no such trace file"),
                      (["convert", str(out), str(out)], "one of the input files"),
                      (["convert", str(out), str(tmp_path / "no" / "x.parquet")], "does not exist")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_readable_while_written(tmp_path):
    path = tmp_path / "live.parquet"
    w = TraceWriter(path, HEADER)
    try:
        recs = _steps(50)
        for r in recs:
            w.write(r)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # a batch reaches the file within FLUSH_INTERVAL_S (a busy CI: later)
            tr = open_trace(path)
            if len(tr.records) == 50:
                break
            time.sleep(0.05)
        assert C.sniff(str(path)) == "ipc"   # a stream while recording
        assert tr.records == recs and tr.end is None
        assert tr.warnings() == ["no end record: the run did not finish cleanly"]
    finally:
        w.close()
    assert C.sniff(str(path)) == "parquet" and len(open_trace(path).records) == 50   # compacted on close


def test_sigkill_leaves_whole_records(tmp_path):
    """A recording killed with SIGKILL reads up to its last whole batch, in order, with one warning line. (How
    much it loses, at most the last 0.5 s, is measured by probes/trace_bench.py: no timing here.)"""
    path = tmp_path / "killed.arrows"
    code = f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from cgwatch.trace import TraceWriter
from cgwatch import records as R
w = TraceWriter({str(path)!r}, {{"model": "x"}})
t0 = time.perf_counter(); k = 0
while True:
    w.write(R.step(k, round(time.perf_counter() - t0, 6), 8, 8, 8, None, 90.0, 3.0, 8))
    k += 1
    time.sleep(0.002)
"""
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # until a batch with steps has landed
            if path.exists() and path.stat().st_size > 2000 and open_trace(path).records:
                break
            time.sleep(0.1)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    tr = open_trace(path)
    steps = tr.records
    assert steps and [r["i"] for r in steps] == list(range(len(steps)))   # whole records, in order
    assert len(tr.warnings()) == 1 and "no end record" in tr.warnings()[0]


def _recorded(tmp_path, name="t.arrows", n=3000) -> str:
    path = str(tmp_path / name)
    w = C.StreamWriter(path, {"type": "header", "format": "cgwatch-trace", "version": 1}, flush_s=3600)
    recs = _steps(n)
    for k in range(0, n, 100):       # 30 batches, as a recording writes them
        for r in recs[k:k + 100]:
            w.write(r)
        w.flush()
    w.close(compact=False)
    return path


def test_truncated_stream_reads_to_the_last_whole_batch(tmp_path, capsys):
    path = _recorded(tmp_path)
    data = open(path, "rb").read()
    for cut in (len(data) - 20, len(data) * 2 // 3, len(data) // 5):
        with open(path, "wb") as f:
            f.write(data[:cut])
        tr = open_trace(path)
        n = len(tr.records)
        assert n % 100 == 0 and 0 < n < 3000 and tr.records == _steps(n)
        warns = tr.warnings()
        assert len(warns) == 1 and "truncated or damaged" in warns[0] and f"({n:,} records)" in warns[0]
        assert main(["report", path]) == 0
        out = capsys.readouterr().out
        assert out.count("warning:") == 1 and f"steps            {n:,}" in out


def test_damaged_parquet_and_foreign_or_newer_files_are_one_line_errors(tmp_path, capsys):
    good = tmp_path / "g.parquet"
    convert("sample:llama1b_fixed8_gap_h100" if False else os.path.join(ROOT, "sample_traces",
                                                                         "llama1b_fixed8_gap_h100.jsonl"), str(good))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])          # the footer is gone
    half = tmp_path / "half.parquet"
    half.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    newer = tmp_path / "newer.arrows"
    C.write_table(str(newer), {"type": "header", "format": "cgwatch-trace", "version": 1}, [_steps(3)])
    t = open_trace(str(newer))
    sch = C.SCHEMA.with_metadata({C.META_KEY: json.dumps({"format": "cgwatch-trace", "version": 1, "table": 99,
                                                          "part": 0, "header": t.header}).encode()})
    with open(newer, "wb") as f, pa.ipc.new_stream(f, sch) as w:
        w.write_batch(pa.RecordBatch.from_arrays(C.encode(_steps(3)).columns, schema=sch))
    foreign = tmp_path / "foreign.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    footer = "(damaged or truncated Parquet file: its footer is missing)"   # a whole phrase, not pyarrow's cut
    for path, msg in ((cut, footer), (half, footer), (newer, "newer than this cgwatch reads"),
                      (foreign, "is not a cgwatch trace")):
        with pytest.raises(TraceError, match=msg):
            open_trace(str(path))
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", ["run.jsonl", "run.parquet", "run.arrows"])
def test_rotation_by_size_loses_no_record(tmp_path, name):
    recs = []
    for k in range(4000):
        recs.append(R.step(k, round(k * 0.001, 6), 3, 4, 4, None, 40.5, 1.25, 3))
        if k % 500 == 0:
            recs.append(R.event(R.EV_MARK, round(k * 0.001, 6), text=f"m{k}"))
    path = tmp_path / name
    # the size is of a part on disk: a compact part's stream, ~10x its compacted size, is scaled down
    w = TraceWriter(path, HEADER, rotate_bytes=20_000 if name.endswith(".jsonl") else 2_000)
    for k, r in enumerate(recs):
        w.write(r)
        if k % 200 == 0 and not name.endswith(".jsonl"):
            w._part.flush()            # as the 0.25 s clock would: the size grows as batches land
    w.close({"steps": 4000})
    if not name.endswith(".jsonl"):   # the estimate learnt from the compacted parts (parts this small can
        assert w.ratio != FIRST_RATIO[name.endswith(".parquet")] and w.ratio > 0   # grow: pyarrow 15, 1.13)
    parts = sorted(glob.glob(str(tmp_path / "run.*")))
    assert 3 <= len(parts) < 200 and parts == [part_path(str(path), k) for k in range(len(parts))]   # the header
    # does not count toward a part's size: a part never holds just one record
    for k, p in enumerate(parts):           # each part says what it is
        h = open_trace(p).header
        assert h["part"] == k and h["model"] == HEADER["model"]
    for arg in (parts[0], str(path), parts, str(tmp_path / "run.*")):
        tr = open_trace(arg)
        assert tr.records == recs and tr.end["steps"] == 4000 and tr.warnings() == []
    assert main(["report", parts[0]]) == 0 and main(["report", *parts]) == 0
    one = tmp_path / "one.jsonl"
    convert(parts, str(one))                 # a set of parts becomes one file
    assert open_trace(str(one)).records == recs


def test_rotation_by_time(tmp_path):
    path = tmp_path / "t.jsonl"
    w = TraceWriter(path, HEADER, rotate_s=0.05)
    recs = _steps(30)
    for r in recs:
        w.write(r)
        time.sleep(0.01)
    w.close()
    parts = sorted(glob.glob(str(tmp_path / "t.*.jsonl")))
    assert len(parts) >= 3
    assert open_trace(str(path)).records == recs


def test_a_missing_part_is_said(tmp_path):
    path = tmp_path / "run.jsonl"
    w = TraceWriter(path, HEADER, rotate_bytes=2_000)
    for r in _steps(300):
        w.write(r)
    w.close()
    os.unlink(part_path(str(path), 1))
    tr = open_trace([part_path(str(path), 0), *sorted(glob.glob(str(tmp_path / "run.00[2-9].jsonl")))])
    assert any("a part of the run is missing" in x for x in tr.warnings())


def _rotated(tmp_path, name="run.jsonl") -> list[str]:
    w = TraceWriter(tmp_path / name, HEADER, rotate_bytes=2_000)
    for r in _steps(300):
        w.write(r)
    w.close()
    parts = sorted(glob.glob(str(tmp_path / "run.*")))
    assert len(parts) >= 3
    return parts


def test_report_and_replay_of_the_first_part_alone_read_the_whole_run(tmp_path, capsys):
    from cgwatch.replay import ReplaySource
    first = _rotated(tmp_path)[0]
    assert main(["report", first, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["steps"] == 300 and rep["warnings"] == []
    src = ReplaySource([first])
    assert sum(r["type"] == "step" for r in src.records) == 300 and src.warnings == []


def test_parts_given_out_of_order_are_read_in_order_and_missing_ones_are_said(tmp_path):
    parts = _rotated(tmp_path)
    tr = open_trace(parts[::-1])
    assert tr.records == _steps(300) and tr.warnings() == [] and tr.path == parts[0]
    later = open_trace(parts[2])   # a later part alone: the parts before it are missing
    assert later.warnings()[0] == (f"{parts[2]} is part 2 of a rotated run: parts 0-1 are missing (give its first "
                                   "part for the whole run)")
    assert "part 0 is missing" in open_trace([parts[2], parts[1]]).warnings()[0]
    gap = open_trace([parts[2], parts[0]]).warnings()   # a real gap is still said
    assert any("a part of the run is missing" in x for x in gap)


def test_convert_says_a_trace_has_no_end_record(tmp_path, capsys):
    src = tmp_path / "noend.jsonl"
    lines = open(os.path.join(ROOT, "sample_traces", "llama1b_fixed8_gap_h100.jsonl")).read().splitlines(True)
    assert json.loads(lines[-1])["type"] == "end"
    src.write_text("".join(lines[:-1]))
    for a, b in ((src, tmp_path / "n.parquet"), (tmp_path / "n.parquet", tmp_path / "n.jsonl")):
        assert main(["convert", str(a), str(b)]) == 0
        assert capsys.readouterr().err == "cgwatch: warning: no end record: the run did not finish cleanly\n"


def test_convert_of_a_corrupt_line_closes_its_writer_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    import gc
    src = tmp_path / "badmid.jsonl"
    lines = open(os.path.join(ROOT, "sample_traces", "llama1b_fixed8_gap_h100.jsonl")).read().splitlines(True)
    src.write_text("".join(lines[:5]) + '{"type": "step", oops\n' + "".join(lines[5:]))
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    for out in ("o.parquet", "o.arrows", "o.jsonl"):
        assert main(["convert", str(src), str(tmp_path / out)]) == 2
        gc.collect()
        err = capsys.readouterr().err
        assert "corrupt record" in err and err.count("\n") == 1
    assert unraisable == [] and sorted(os.listdir(tmp_path)) == ["badmid.jsonl"]


def test_opens_in_pandas_polars_duckdb_without_cgwatch(tmp_path):
    pq_path, ipc_path = tmp_path / "p.parquet", tmp_path / "p.arrows"
    src = os.path.join(ROOT, "sample_traces", "llama1b_poisson_h100.jsonl")
    convert(src, str(pq_path))
    convert(src, str(ipc_path))
    steps = open_trace(src).records
    n = sum(r["type"] == "step" for r in steps)
    code = f"""
import pandas as pd, polars as pl, duckdb, pyarrow as pa
p, s = {str(pq_path)!r}, {str(ipc_path)!r}
df = pd.read_parquet(p)
assert (df["type"] == "step").sum() == {n}
assert pl.read_parquet(p).filter(pl.col("type") == "step").height == {n}
assert duckdb.sql(f"select count(*) from '{{p}}' where type = 'step'").fetchall()[0][0] == {n}
assert duckdb.sql(f"select round(sum(t_us) / 1e6, 3) from '{{p}}' where type = 'step'").fetchall()[0][0] > 0
assert pl.read_ipc_stream(s).filter(pl.col("type") == "step").height == {n}
with pa.ipc.open_stream(s) as r:
    assert (r.read_pandas()["type"] == "step").sum() == {n}
print("ok")
"""
    for mod in ("pandas", "polars", "duckdb"):
        pytest.importorskip(mod)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.stdout.strip() == "ok", out.stderr


def test_rotation_flags(capsys):
    from cgwatch.cli import _duration, _size
    assert _size("512MB") == 512 << 20 and _size("2g") == 2 << 30 and _size("4096") == 4096
    assert _duration("1h") == 3600 and _duration("30m") == 1800 and _duration("90") == 90
    assert main(["run", "--headless", "--steps", "1", "--rotate-size", "1MB"]) == 2
    assert "need --record" in capsys.readouterr().err
    assert main(["run", "--headless", "--steps", "1", "--rotate-time", "soon"]) == 2
    err = capsys.readouterr().err
    assert "not a duration" in err and err.count("\n") == 1
