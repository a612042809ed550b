"""``cgwatch report`` / ``recommend`` with ``--from``, ``--to`` or ``--last``: the numbers of a window of the run
(window.windowed, RunStats.open_window). A window counts the records whose time lies in it, screened on their
own, under the state it opens with (the capture, capture_done, recapture and padding events before it). So its
report equals the report of a trace made of those state events and the window's records, less what the state
events count themselves (their recaptures) and with the duration from the window's start; every kind of trace
file gives the same numbers; a window over the whole run is the whole report."""

import json
import math
from collections import Counter

import pytest

from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.report import build_report
from cgwatch.trace import read_trace
from cgwatch.window import STATE_EVENTS, Window, windowed

from test_export_fast import _compact, _write
from test_export_window import _inside, _spread, rotated_run
from test_fold import synthetic

LO, HI = 150.0, 300.0   # the synthetic runs recapture at ~135 s and ~260 s of ~385 s


def _is_num(t) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)


def _before(recs: list[dict], lo: float) -> list[dict]:
    """The state events before ``lo`` (by their time, as _inside has it), that the screen accepts."""
    out, newest = [], -math.inf
    for r in recs:
        t = r.get("t")
        if _is_num(t):
            newest = max(newest, t)
        else:
            t = max(newest, 0.0)
        if t < lo and r.get("type") == R.EVENT and r.get("kind") in STATE_EVENTS and R.check_record(r) is None:
            out.append(r)
    return out


def _trace(tmp_path, monkeypatch, recs, ext):
    if ext == ".jsonl":
        path = tmp_path / "t.jsonl"
        _write(path, recs)
        return str(path)
    return _compact(tmp_path, recs, monkeypatch, ext=ext, rows=97)


def _numbers(rep: dict) -> dict:
    """What a report counts (not the path, nor the warnings that name rows or lines)."""
    return {k: v for k, v in rep.items() if k not in ("path", "warnings")}


def _no_end(path) -> None:
    """The trace file without its end record (a window in the middle of the run does not reach it)."""
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "end"
    path.write_text("".join(lines[:-1]))


@pytest.mark.parametrize("bad", [False, True])
@pytest.mark.parametrize("ext", [".jsonl", ".parquet", ".arrows"])
def test_a_window_counts_its_records_under_the_state_before_it(ext, bad, tmp_path, monkeypatch):
    recs = _spread(synthetic(11, n=1500, bad=bad))
    inside = _inside(recs, LO, HI)
    opening = _before(recs, LO)
    assert any(r.get("kind") == R.EV_RECAPTURE for r in opening)   # the window opens under a later size list
    alone = tmp_path / "alone.jsonl"   # the state events, then the window's records, as a trace of their own
    _write(alone, opening + inside)
    _no_end(alone)
    want = build_report(read_trace(str(alone)))
    got = build_report(windowed(read_trace(_trace(tmp_path, monkeypatch, recs, ext)), Window(LO, HI)))

    assert got["window"] == {"label": "150-300 s", "from": LO, "to": HI, "last": None}
    assert got["buckets"] == want["buckets"] and got["epochs"] == want["epochs"]
    assert got["ranks"] == want["ranks"] and got["skipped_records"] == want["skipped_records"]
    assert got["events"] == [e for e in want["events"] if e["t"] >= LO]
    assert got["alerts"] == want["alerts"]
    g, w = got["totals"], want["totals"]
    recaptures = sum(r.get("kind") == R.EV_RECAPTURE for r in opening)
    assert g["recaptures"] == w["recaptures"] - recaptures
    assert g["duration_s"] == pytest.approx(w["duration_s"] - LO)
    assert g["tokens_per_s"] == pytest.approx(w["tokens"] / (w["duration_s"] - LO))
    same = {k for k in w if k not in ("recaptures", "duration_s", "tokens_per_s", "gpu_busy_pct")}
    assert {k: g[k] for k in same} == {k: w[k] for k in same}
    assert not any("no end record" in x for x in got["warnings"])   # the window does not reach the run's end


def test_every_kind_of_file_gives_a_window_the_same_numbers(tmp_path, monkeypatch):
    recs = _spread(synthetic(5, n=1200, bad=True, tp=True))
    reps = [_numbers(build_report(windowed(read_trace(_trace(tmp_path / ext[1:], monkeypatch, recs, ext)), w)))
            for w in (Window(LO, HI), Window(-math.inf, 90.0), Window(200.0), Window(last=60.0))
            for ext in (".jsonl", ".parquet", ".arrows")
            if (tmp_path / ext[1:]).mkdir(exist_ok=True) or True]
    for k in range(0, len(reps), 3):
        assert reps[k] == reps[k + 1] == reps[k + 2]
        assert reps[k]["totals"]["forwards"] > 0


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_a_window_over_the_whole_run_is_the_whole_report(ext, tmp_path, monkeypatch):
    path = _trace(tmp_path, monkeypatch, _spread(synthetic(3, n=800, bad=True)), ext)
    whole = build_report(read_trace(path))
    assert whole.pop("window") is None
    for w, label in ((Window(-math.inf, 1e9), "to 1000000000 s"), (Window(last=1e9), "last 1000000000 s (all)")):
        got = build_report(windowed(read_trace(path), w))
        assert got.pop("window")["label"] == label
        assert got == whole
    # from 0 s: all but the records with a negative t (the screen skips them in the whole run)
    got = build_report(windowed(read_trace(path), Window(0.0)))
    assert whole["skipped_records"] - got["skipped_records"] == 1 and got["totals"] == whole["totals"]


def test_last_is_the_span_before_the_latest_step(tmp_path, monkeypatch):
    recs = _spread(synthetic(4, n=900, bad=False))
    path = _trace(tmp_path, monkeypatch, recs, ".parquet")
    latest = max(r["t"] for r in recs if r.get("type") in (R.STEP, R.SAMPLE, R.PREFILL))
    a = _numbers(build_report(windowed(read_trace(path), Window(last=90.0))))
    b = _numbers(build_report(windowed(read_trace(path), Window(latest - 90.0))))
    assert a.pop("window")["label"] == f"last 90 s (from {b['window']['label'][5:]})"
    b.pop("window")
    assert a == b


def test_a_window_past_the_run_counts_nothing_and_keeps_the_state(tmp_path, monkeypatch):
    recs = _spread(synthetic(2, n=500, bad=False))
    rep = build_report(windowed(read_trace(_trace(tmp_path, monkeypatch, recs, ".parquet")), Window(1e6, 2e6)))
    assert rep["totals"]["forwards"] == 0 and rep["totals"]["duration_s"] is None
    assert rep["epochs"][-1]["sizes"]                              # the size list in force at the end
    assert any(b["status"] == "ok" for b in rep["buckets"])       # its captures, from before the window


@pytest.mark.parametrize("ext", [".jsonl", ".parquet", ".arrows"])
def test_a_window_past_the_runs_end_says_so_not_that_the_run_did_not_finish(ext, tmp_path, monkeypatch):
    recs = _spread(synthetic(2, n=300, bad=False))
    latest = max(r["t"] for r in recs if r.get("type") in (R.STEP, R.SAMPLE, R.PREFILL))
    path = _trace(tmp_path, monkeypatch, recs, ext)
    assert read_trace(path).end is not None   # the run finished
    for win in (Window(1e6), Window(1e6, 2e6)):
        rep = build_report(windowed(read_trace(path), win))
        assert rep["warnings"] == [f"the window ({win.label()}) lies past the trace's end: its records end at "
                                   f"{latest:.3f} s"]
    assert build_report(windowed(read_trace(path), Window(0.0)))["warnings"] == []   # the whole run


def test_the_cli_takes_windows_and_says_them(tmp_path, monkeypatch, capsys):
    path = _trace(tmp_path, monkeypatch, _spread(synthetic(6, n=600, bad=False)), ".parquet")
    assert main(["report", path, "--from", "2m", "--to", "250", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["window"]["label"] == "120-250 s" and rep["totals"]["forwards"] > 0
    assert main(["report", path, "--last", "1m"]) == 0
    out = capsys.readouterr().out
    assert "(window last 60 s (from " in out.splitlines()[0] and "the window, its start to its last record" in out
    for argv, msg in ((["--last", "1m", "--from", "3"], "--last goes alone"),
                      (["--from", "9", "--to", "3"], "is after --to"), (["--to", "soon"], "not a time"),
                      (["--last", "0"], "--last '0': must be more than 0 s")):
        assert main(["report", path, *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1


def test_recommend_takes_the_windows_batch_mix_under_the_captures_before_it(tmp_path, monkeypatch, capsys):
    # a run whose batches grow: the last minute's mix is not the run's
    recs = [R.event(R.EV_CAPTURE, 0.01 * k, bucket=b, ok=True, capture_s=0.1, pool_bytes=b << 20, nvml_bytes=None,
                    kernels=10, check=None, cause=None, hint=None, error=None) for k, b in enumerate((1, 2, 4, 8))]
    recs.append(R.event(R.EV_CAPTURE_DONE, 0.05, sizes=[1, 2, 4, 8], failed=[], pool_bytes=20 << 20, seconds=0.5,
                        pool="shared", pools=1))
    t = 1.0
    for i in range(600):
        batch = 1 + i * 8 // 600
        eager = i % 5 == 0
        bucket = None if eager else next(s for s in (1, 2, 4, 8) if s >= batch)
        recs.append(R.step(i, round(t, 6), batch, bucket if not eager else next(s for s in (1, 2, 4, 8) if s >= batch),
                           bucket, R.REASON_EAGER_MODE if eager else None, 50.0, 1.0 + batch / 8, batch))
        t += 0.5
    path = tmp_path / "grow.jsonl"
    _write(path, recs)
    assert main(["recommend", str(path), "--memory-budget", "100", "--max-buckets", "2", "--json",
                 "--from", "240"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["window"] == "from 240 s"
    assert rep["steps"] == sum(1 for r in recs if r.get("type") == R.STEP and r["t"] >= 240)
    mix = Counter(str(r["batch"]) for r in recs if r.get("type") == R.STEP and r["t"] >= 240)
    assert rep["batch_counts"] == dict(mix) and "1" not in mix       # the window's batches only
    current = next(x for x in rep["lists"] if x["name"] == "current")
    assert current["sizes"] == [1, 2, 4, 8]                          # the capture round before the window
    assert main(["recommend", str(path), "--memory-budget", "100", "--max-buckets", "2", "--from", "10000"]) == 2
    err = capsys.readouterr().err.splitlines()   # past the run's end: no step in the window, said in one line
    assert err == [f"cgwatch: {path}: the window (from 10000 s) lies past the trace's end: its records end at "
                   f"{t - 0.5:.3f} s: no batch sizes to recommend for"]


@pytest.mark.parametrize("name", ["run.parquet", "run.jsonl"])
def test_a_window_over_a_rotated_runs_parts_opens_under_the_earlier_parts_captures(name, tmp_path):
    from cgwatch.convert import convert
    recs = [R.event(R.EV_CAPTURE, 0.0, bucket=4, ok=True, capture_s=0.1, pool_bytes=3 << 20, nvml_bytes=None,
                    kernels=10, check=None, cause=None, hint=None, error=None),
            R.event(R.EV_CAPTURE_DONE, 0.0, sizes=[4], failed=[], pool_bytes=3 << 20, seconds=0.5, pool="shared",
                    pools=1)]
    recs += [R.step(k, round(k * 0.1, 6), 3, 4, 4, None, 40.5, 1.25, 3) for k in range(4000)]
    parts = rotated_run(tmp_path, name, recs)
    one = tmp_path / "one.jsonl"
    convert(parts, str(one))
    for win in (Window(100.0, 250.0), Window(last=60.0)):
        got = build_report(windowed(read_trace(parts[0]), win))
        want = build_report(windowed(read_trace(str(one)), win))
        assert {**_numbers(got), "header": None} == {**_numbers(want), "header": None}   # (a part's says "part")
        (row,) = got["buckets"]
        assert row["status"] == "ok" and row["graph_mib"] == 3.0 and got["totals"]["graph_pool_mib"] == 3.0
        assert row["steps"] == (1501 if win.last is None else 601)


def test_recommend_names_whole_run_costs_apart_from_the_windows(capsys):
    from cgwatch.samples import sample_path
    path = sample_path("llama1b_poisson_h100")
    argv = ["recommend", path, "--memory-budget", "100", "--max-buckets", "3", "--last", "5s"]
    assert main(argv + ["--costs", path]) == 0   # the window's mix, the whole run's costs
    assert f"costs from {path} (the whole run)" in capsys.readouterr().out
    assert main(argv) == 2                         # the last 5 s alone have no eager step to price
    err = capsys.readouterr().err
    assert "no eager steps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_a_window_after_a_recapture_that_dropped_sizes_shows_only_the_list_in_force(ext, tmp_path, monkeypatch):
    """Opened after a recapture from 4,8,16 to 4, a window's rows are those of the list in force: no row 8 or 16
    with the old round's capture, and steps above 4 are ">4" (as in the whole run's report), not ">16"."""
    cap = lambda t, b: R.event(R.EV_CAPTURE, t, bucket=b, ok=True, capture_s=0.1, pool_bytes=b, nvml_bytes=None,  # noqa: E731
                                kernels=9, check=None, cause=None, hint=None, error=None)
    recs = [{"type": "header", "format": "cgwatch-trace", "version": 1},
            cap(0.1, 16), cap(0.11, 8), cap(0.12, 4),
            R.event(R.EV_CAPTURE_DONE, 0.2, sizes=[4, 8, 16], failed=[], pool_bytes=1, seconds=1.0),
            R.step(0, 1.0, 7, 8, 8, None, 10.0, 1.0, 7),
            R.event(R.EV_RECAPTURE, 2.0, sizes=[4], old=[4, 8, 16], dropped=[]), cap(2.01, 4),
            R.event(R.EV_CAPTURE_DONE, 2.02, sizes=[4], failed=[], pool_bytes=1, seconds=1.0),
            *(R.step(i, 3.0 + i / 10, b, t, k, r, 10.0, 1.0, b) for i, (b, t, k, r) in
              enumerate([(3, 4, 4, None), (6, None, None, R.REASON_OVER_MAX), (12, None, None, R.REASON_OVER_MAX)], 1)),
            {"type": "end", "t": 4.0, "steps": 4, "tokens": 28, "duration_s": 4.0, "outcome": "completed"}]
    path = _trace(tmp_path, monkeypatch, recs, ext)
    whole = build_report(read_trace(path))
    assert [(b["epoch"], b["label"], b["steps"]) for b in whole["buckets"]][-2:] == [(2, "4", 1), (2, ">4", 2)]
    rep = build_report(windowed(read_trace(path), Window(2.5, math.inf)))
    assert [(b["label"], b["steps"], b["status"]) for b in rep["buckets"]] == [("4", 1, "ok"), (">4", 2, "-")]
    assert rep["epochs"][-1]["sizes"] == [4]
