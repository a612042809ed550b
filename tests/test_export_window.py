"""``cgwatch export --from T --to T``: a window of the run, exported as a trace of its own (window.py). Its
file equals the export of a trace made of only the window's records (a record's time: its t, or the newest
t before it), for every format and every kind of trace file; a Parquet trace's row groups far outside the
window are not read; bad times are one line and exit 2."""

import json
import math

import pyarrow.parquet as pq
import pytest

from cgwatch.cli import main
from cgwatch.errors import CgwatchError
from cgwatch.window import MARGIN_S, Window, parse_time

from test_export_fast import _compact, _write
from test_fold import synthetic

SPREAD = 100.0   # the synthetic run's ~4 s stretched to ~400 s: row groups lie minutes apart


def _spread(recs: list[dict]) -> list[dict]:
    return [{**r, "t": round(r["t"] * SPREAD, 6)} if isinstance(r.get("t"), (int, float)) and
            not isinstance(r.get("t"), bool) and math.isfinite(r["t"]) else r for r in recs]


def _inside(recs: list[dict], lo: float, hi: float) -> list[dict]:
    """The records a window keeps: by t, or the newest t before a record without one."""
    out, newest = [], -math.inf
    for r in recs:
        t = r.get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
            newest = max(newest, t)
        else:
            t = max(newest, 0.0)
        if lo <= t <= hi:
            out.append(r)
    return out


def _drawn(path, fmt: str, out, argv=()) -> object:
    assert main(["export", str(path), "--format", fmt, "-o", str(out), *argv]) == 0
    data = out.read_bytes()
    if fmt == "pftrace":
        from pftrace_read import read   # (skips where Perfetto's protos are not installed)
        got = read(data)
        got.pop("info", None)
        return {k: v for k, v in got.items() if k != "meta"}
    if fmt == "perfetto":
        doc = json.loads(data)
        return doc["traceEvents"], doc["metadata"].get("window")
    return data


@pytest.mark.parametrize("fmt", ["csv", "perfetto", "pftrace"])
@pytest.mark.parametrize("ext", [".parquet", ".arrows", ".jsonl"])
@pytest.mark.parametrize("bad", [False, True])
def test_a_window_exports_what_a_trace_of_its_records_exports(fmt, ext, bad, tmp_path, monkeypatch, capsys):
    recs = _spread(synthetic(7, n=1500, bad=bad))
    lo, hi = 120.0, 250.0
    if ext == ".jsonl":
        path = tmp_path / "t.jsonl"
        _write(path, recs)
    else:
        path = _compact(tmp_path, recs, monkeypatch, ext=ext, rows=97)
    alone = tmp_path / "alone.jsonl"   # the window's records as a trace of their own, without the end record
    _write(alone, _inside(recs, lo, hi))   # (the run's end, at t ~0.01 s of the writer's clock, is not in it)
    lines = alone.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "end"
    alone.write_text("".join(lines[:-1]))
    got = _drawn(path, fmt, tmp_path / f"w.{fmt}", ["--from", "2m", "--to", "250"])
    want = _drawn(alone, fmt, tmp_path / f"a.{fmt}")
    if fmt == "perfetto":
        assert got[1] == "120-250 s" and want[1] is None
        got, want = got[0], want[0]
    assert got == want
    err = capsys.readouterr().err
    assert "window 120-250 s" in err and "no end record in the window" in err or fmt == "csv"


def test_a_parquet_window_reads_only_the_row_groups_near_it(tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, _spread(synthetic(8, n=3000, bad=False)), monkeypatch, rows=100)
    groups = pq.ParquetFile(path).num_row_groups
    read_groups = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, k, *a, **kw: read_groups.append(k) or real(self, k, *a, **kw))
    assert main(["export", path, "--format", "csv", "--from", "300", "--to", "310", "-o",
                 str(tmp_path / "w.csv")]) == 0
    rows = (tmp_path / "w.csv").read_text().splitlines()[1:]
    assert rows and all(300 <= float(r.split(",")[1]) <= 310 for r in rows)
    # ~4 groups a minute of this run: those within MARGIN_S of the window, each read by both passes
    near = len(set(read_groups))
    assert 0 < near < groups / 2, (near, groups)
    meta = pq.ParquetFile(path).metadata
    t_col = [meta.schema.column(j).path for j in range(meta.num_columns)].index("t_us")
    for k in set(read_groups):
        st = meta.row_group(k).column(t_col).statistics
        assert st.max / 1e6 >= 300 - MARGIN_S and st.min / 1e6 <= 310 + MARGIN_S


def test_a_window_past_the_run_writes_an_empty_export(tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, _spread(synthetic(9, n=300, bad=False)), monkeypatch)
    assert main(["export", path, "--format", "csv", "--from", "10h", "-o", str(tmp_path / "w.csv")]) == 0
    assert len((tmp_path / "w.csv").read_text().splitlines()) == 1   # the header row
    assert "0 step rows" in capsys.readouterr().err


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("2h", 7200.0),
                                          ("1h30m", 5400.0), ("250ms", 0.25), (".5", 0.5), ("1m 30s", 90.0)])
def test_times(text, seconds):
    assert parse_time(text, "--from") == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5", "1e3", "5 minutes", "m", "nan", "1h30"])
def test_bad_times(text):
    with pytest.raises(CgwatchError, match="--from"):
        parse_time(text, "--from")


@pytest.mark.parametrize("argv,msg", [(["--from", "soon"], "not a time"), (["--from", "5m", "--to", "1m"], "after")])
def test_bad_windows_are_one_line(argv, msg, tmp_path, capsys):
    assert main(["export", "sample:llama1b_live_h100", "--format", "csv", "-o", str(tmp_path / "w.csv"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "w.csv").exists()


def test_window_labels():
    assert Window.of(None, None) is None
    assert Window.of("2m", None).label() == "from 120 s"
    assert Window.of(None, "90").label() == "to 90 s"
    assert Window.of("0", "1.5").label() == "0-1.5 s"


def test_a_cut_stream_exports_its_window_up_to_the_last_whole_batch(tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, _spread(synthetic(10, n=1500, bad=False)), monkeypatch, ext=".arrows", rows=97)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[:len(data) * 2 // 3])
    assert main(["export", str(cut), "--format", "csv", "-o", str(tmp_path / "all.csv")]) == 0
    whole = capsys.readouterr().err
    assert main(["export", str(cut), "--format", "csv", "--from", "0", "-o", str(tmp_path / "w.csv")]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "w.csv").read_bytes() == (tmp_path / "all.csv").read_bytes()
    warning = [line for line in whole.splitlines() if "warning" in line]
    assert warning and [line for line in err.splitlines() if "warning" in line] == warning
    # a window of its first minutes reads only the batches near it, and still says where the stream ends
    assert main(["export", str(cut), "--format", "csv", "--to", "60", "-o", str(tmp_path / "w2.csv")]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == warning
    rows = (tmp_path / "w2.csv").read_text().splitlines()[1:]
    assert rows and all(float(r.split(",")[1]) <= 60 for r in rows)


def test_a_damaged_parquet_row_group_in_the_window_is_said_as_a_whole_read_says_it(tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, _spread(synthetic(11, n=1500, bad=False)), monkeypatch, rows=97)
    md = pq.ParquetFile(path).metadata
    k = md.num_row_groups // 2
    rg = md.row_group(k)
    start = min(rg.column(j).data_page_offset for j in range(rg.num_columns))
    data = bytearray(open(path, "rb").read())
    data[start:start + rg.total_byte_size] = b"\xff" * rg.total_byte_size   # the group's pages garbled
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    assert main(["export", str(bad), "--format", "csv", "-o", str(tmp_path / "all.csv")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning and f"row group {k} of" in warning[0]
    # the groups before 90 s are not read: the rows before the damage are counted from the file's metadata
    assert main(["export", str(bad), "--format", "csv", "--from", "150", "-o", str(tmp_path / "w.csv")]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == warning


def _latest(recs: list[dict]) -> float:
    return max(r["t"] for r in recs if r["type"] in ("step", "prefill", "sample"))


@pytest.mark.parametrize("ext", [".parquet", ".arrows", ".jsonl"])
def test_last_exports_the_run_from_that_long_before_its_latest_step(ext, tmp_path, monkeypatch, capsys):
    recs = _spread(synthetic(12, n=1500, bad=False))
    if ext == ".jsonl":
        path = tmp_path / "t.jsonl"
        _write(path, recs)
    else:
        path = _compact(tmp_path, recs, monkeypatch, ext=ext, rows=97)
    lo = _latest(recs) - 90
    got = _drawn(path, "csv", tmp_path / "w.csv", ["--last", "1m30s"])
    want = _drawn(path, "csv", tmp_path / "f.csv", ["--from", repr(round(lo, 6))])
    assert got == want and got.count(b"\n") > 1
    err = capsys.readouterr().err
    assert f"window last 90 s (from {round(lo, 6)} s)" in err


def test_last_longer_than_the_run_is_all_of_it_with_its_end(tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, _spread(synthetic(13, n=300, bad=False)), monkeypatch)
    assert _drawn(path, "csv", tmp_path / "w.csv", ["--last", "10h"]) == _drawn(path, "csv", tmp_path / "a.csv")
    assert "window last 36000 s (all)" in capsys.readouterr().err
    assert main(["export", path, "--format", "perfetto", "--last", "10h", "-o", str(tmp_path / "w.json")]) == 0
    meta = json.loads((tmp_path / "w.json").read_text())["metadata"]
    assert meta["complete"] and meta["window"] == "last 36000 s (all)"   # the end record in it


def test_last_goes_alone(tmp_path, capsys):
    assert main(["export", "sample:llama1b_live_h100", "--format", "csv", "--last", "1m", "--to", "5m",
                 "-o", str(tmp_path / "w.csv")]) == 2
    assert "--last goes alone" in capsys.readouterr().err


def test_a_timeline_too_big_for_the_ui_says_how_to_open_it(tmp_path, monkeypatch, capsys):
    from cgwatch import export
    monkeypatch.setattr(export, "UI_BYTES", 10_000)
    for fmt, noted in (("pftrace", True), ("perfetto", True), ("csv", False)):
        assert main(["export", "sample:llama1b_live_h100", "--format", fmt, "-o", str(tmp_path / f"o.{fmt}")]) == 0
        err = capsys.readouterr().err
        assert ("trace_processor --httpd" in err and "--last" in err) == noted, (fmt, err)
    monkeypatch.setattr(export, "UI_BYTES", (tmp_path / "o.pftrace").stat().st_size)
    assert main(["export", "sample:llama1b_live_h100", "--format", "pftrace", "--last", "1s",
                 "-o", str(tmp_path / "w.pftrace")]) == 0
    assert "note" not in capsys.readouterr().err   # a second's window is smaller than the whole


def rotated_run(tmp_path, name: str, recs: list[dict]) -> list[str]:
    """The records recorded as a run rotated into small parts (``name``: run.EXT); the parts' paths."""
    import glob

    from cgwatch.trace import TraceWriter
    w = TraceWriter(tmp_path / name, {"model": {"name": "x"}, "gpu": "cpu"},
                    rotate_bytes=20_000 if name.endswith(".jsonl") else 2_000)
    for k, r in enumerate(recs):
        w.write(r)
        if k % 200 == 0 and not name.endswith(".jsonl"):
            w._part.flush()
    w.close({"steps": 4000})
    parts = sorted(glob.glob(str(tmp_path / "run.*")))
    assert len(parts) >= 3
    return parts


@pytest.mark.parametrize("name", ["run.parquet", "run.arrows", "run.jsonl"])
def test_a_window_over_a_rotated_runs_parts(name, tmp_path, capsys):
    from cgwatch import records as R
    from cgwatch.convert import convert
    recs = []
    for k in range(4000):
        recs.append(R.step(k, round(k * 0.1, 6), 3, 4, 4, None, 40.5, 1.25, 3))
        if k % 500 == 0:
            recs.append(R.event(R.EV_MARK, round(k * 0.1, 6), text=f"m{k}"))
    parts = rotated_run(tmp_path, name, recs)
    one = tmp_path / "one.parquet"
    convert(parts, str(one))
    for argv in (["--from", "100", "--to", "250"], ["--last", "1m"]):
        got = _drawn(parts[0], "csv", tmp_path / "p.csv", argv)
        want = _drawn(one, "csv", tmp_path / "o.csv", argv)
        assert got == want and got.count(b"\n") > 100
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    first, last = float(rows[0].split(",")[1]), float(rows[-1].split(",")[1])
    assert 339.9 - 1e-9 <= first <= 340.0 and last == 399.9   # the last minute before the latest step


@pytest.mark.parametrize("ext", [".parquet", ".jsonl"])
def test_a_window_of_a_trace_with_late_records_takes_the_record_path_over_its_own_rows(ext, tmp_path, monkeypatch,
                                                                                      capsys):
    """A record later than the JSON export's reorder window sends a compact trace's JSON through the record
    path: it must read the window's rows too, numbered as the screen numbered them."""
    recs = _spread(synthetic(14, n=1500, bad=True))
    steps = [k for k, r in enumerate(recs) if r["type"] == "step" and 150 < r["t"] < 200]
    late = {"type": "prefill", "t": round(recs[steps[0]]["t"] - 25.0, 6), "i": 999999, "requests": 1,
            "tokens": 8, "host_ms": 1.5}
    recs.insert(steps[len(steps) // 2], late)   # 25 s late: more than REORDER_WINDOW_S
    if ext == ".jsonl":
        path = tmp_path / "t.jsonl"
        _write(path, recs)
    else:
        path = _compact(tmp_path, recs, monkeypatch, rows=97)
    alone = tmp_path / "alone.jsonl"
    _write(alone, _inside(recs, 120.0, 250.0))
    lines = alone.read_text().splitlines(keepends=True)
    alone.write_text("".join(lines[:-1]))   # less the writer's end record
    got = _drawn(path, "perfetto", tmp_path / "w.json", ["--from", "120", "--to", "250"])
    want = _drawn(alone, "perfetto", tmp_path / "a.json")
    assert got[0] == want[0]
    err = capsys.readouterr().err
    assert "1 records out of order" in err and "window 120-250 s" in err
