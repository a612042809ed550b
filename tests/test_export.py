"""``cgwatch export``: Perfetto JSON checked against the Trace Event Format rules, CSV against the trace,
truncated traces, and bad input -> one stderr line, non-zero exit."""

import csv
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.export import SAMPLE_COUNTERS, STEP_COLUMNS
from cgwatch.samples import sample_path
from cgwatch.trace import TraceWriter, read_trace

SAMPLES = ["llama1b_poisson_h100.jsonl", "llama1b_live_h100.jsonl", "bench_llama1b_h100.jsonl", "bench_tiny_h100.jsonl",
           "llama1b_fixed8_gap_h100.jsonl", "bench_llama1b_fused_h200.jsonl"]
EPS = 1e-6   # µs: float noise in ts + dur, far below the trace's 1 µs resolution
META_NAMES = {"process_name", "thread_name", "thread_sort_index", "process_sort_index"}


# ---- a Trace Event Format validator ----

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _strict_json(text: str) -> dict:
    def no_constant(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=no_constant)


def _check_nesting(key, slices: list[dict]) -> None:
    """Sorted by start (longest first on ties), each slice lies inside the open one or after it."""
    open_ends: list[float] = []
    for ev in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
        end = ev["ts"] + ev["dur"]
        while open_ends and open_ends[-1] <= ev["ts"] + EPS:
            open_ends.pop()
        assert not open_ends or end <= open_ends[-1] + EPS, f"{key}: {ev['name']} at {ev['ts']} overlaps its parent"
        open_ends.append(end)


def validate_chrome_trace(doc: dict) -> dict:
    """Assert the Trace Event Format rules; return the X slices per (pid, tid), in file order."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit") in ("ms", "ns")
    slices: dict = defaultdict(list)
    counter_ts: dict = defaultdict(list)
    threads = set()
    for ev in doc["traceEvents"]:
        assert {"ph", "name", "pid", "tid"} <= ev.keys(), ev
        assert isinstance(ev["name"], str) and ev["name"], ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        assert isinstance(ev.get("args", {}), dict), ev
        ph, key = ev["ph"], (ev["pid"], ev["tid"])
        if ph == "M":
            assert ev["name"] in META_NAMES, ev
            if ev["name"].endswith("_name"):
                assert isinstance(ev["args"]["name"], str) and ev["args"]["name"], ev
            else:
                assert isinstance(ev["args"]["sort_index"], int), ev
            if ev["name"] == "thread_name":
                threads.add(key)
            continue
        assert _number(ev.get("ts")) and ev["ts"] >= 0, ev   # µs since the run started
        if ph == "X":
            assert _number(ev.get("dur")) and ev["dur"] >= 0, ev
            slices[key].append(ev)
        elif ph == "C":
            assert ev.get("args") and all(_number(v) for v in ev["args"].values()), ev
            counter_ts[(ev["pid"], ev["name"])].append(ev["ts"])
        elif ph == "i":
            assert ev.get("s") in ("g", "p", "t"), ev
            if ev["s"] == "t":
                assert key in threads, f"instant on an unnamed track: {ev}"
        else:
            raise AssertionError(f"unexpected phase {ph!r}: {ev}")
    for key, evs in slices.items():
        assert key in threads, f"slices on unnamed track {key}"
        starts = [e["ts"] for e in evs]
        assert starts == sorted(starts), f"{key}: slices not in time order"
        _check_nesting(key, evs)
    for key, ts in counter_ts.items():
        assert ts == sorted(ts), f"counter {key} not in time order"
    return slices


@pytest.mark.parametrize("bad", [
    {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 5, "dur": 10},                  # overlaps a partly
    {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 20, "dur": -1},                 # negative dur
    {"ph": "i", "name": "b", "pid": 1, "tid": 1, "ts": 20},                            # no scope
    {"ph": "C", "name": "b", "pid": 1, "tid": 1, "ts": 20, "args": {"v": None}},       # not a number
    {"ph": "X", "name": "b", "pid": 1, "tid": 2, "ts": 20, "dur": 1},                  # unnamed track
    {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 1, "dur": 1},                   # before a in the file
])
def test_the_validator_catches_broken_traces(bad):
    good = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "host"}},
            {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 2, "dur": 6},
            {"ph": "X", "name": "a.1", "pid": 1, "tid": 1, "ts": 3, "dur": 5}]   # nested, ends with a
    validate_chrome_trace({"traceEvents": good, "displayTimeUnit": "ms"})
    with pytest.raises(AssertionError):
        validate_chrome_trace({"traceEvents": good + [bad], "displayTimeUnit": "ms"})


def _no_overlap(slices: list[dict]) -> None:
    for a, b in zip(slices, slices[1:]):
        assert b["ts"] >= a["ts"] + a["dur"] - EPS, (a, b)


# ---- helpers ----

def export(capsys, trace, fmt, out) -> tuple[int, str, str]:
    rc = main(["export", str(trace), "--format", fmt, "-o", str(out)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def export_json(capsys, trace, tmp_path) -> dict:
    out = tmp_path / "out.perfetto.json"
    rc, _, err = export(capsys, trace, "perfetto", out)
    assert rc == 0, err
    assert len(err.strip().splitlines()) == 1 and str(out) in err
    return _strict_json(out.read_text())


def by_track(doc: dict) -> dict[str, list[dict]]:
    """Events per track name (thread_name), metadata excluded."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    out = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] != "M":
            out[names.get((e["pid"], e["tid"]), "?")].append(e)
    return out


def of(events, ph, cat=None) -> list[dict]:
    return [e for e in events if e["ph"] == ph and (cat is None or e.get("cat") == cat)]


def kinds(trace) -> Counter:
    return Counter(r["kind"] if r["type"] == "event" else r["type"] for r in trace.records)


# ---- Perfetto on the H100 samples ----

@pytest.mark.parametrize("name", SAMPLES)
def test_perfetto_sample_is_valid_and_matches_the_trace(name, tmp_path, capsys):
    trace = read_trace(sample_path(name))
    doc = export_json(capsys, sample_path(name), tmp_path)
    validate_chrome_trace(doc)
    events = doc["traceEvents"]
    tracks = by_track(doc)
    steps = [r for r in trace.records if r["type"] == "step"]
    n = kinds(trace)

    host, gpu = tracks["host: decode loop"], tracks["GPU: decode steps (start = lower bound)"]
    assert len(of(host, "X", "step")) == len(steps)
    assert len(of(host, "X", "prefill")) == n["prefill"]
    assert len(of(gpu, "X", "gpu")) == sum(s["gpu_ms"] is not None for s in steps)
    assert len(of(tracks["CUDA graphs"], "X", "capture")) == n["capture"]
    instants = Counter(e["cat"] for e in of(events, "i"))
    for kind in ("alert", "mode", "mark", "recapture", "release", "capture_done", "state", "rate"):
        assert instants[kind] == n[kind], kind
    assert instants["end"] == 1 and doc["metadata"]["complete"] is True

    counters = Counter(e["name"] for e in of(events, "C"))
    assert counters["host launch"] == counters["batch"] == len(steps)
    samples = [r for r in trace.records if r["type"] == "sample"]
    for field, (cname, key, _) in SAMPLE_COUNTERS.items():
        assert counters[cname] == sum(_number(s[field]) for s in samples), field
    assert counters["GPU util"] > 0 and counters["GPU power"] > 0   # NVML was there on the H100

    # the H100 runs have no rounding overlaps: every host slice sits at its own t
    t_of = {s["i"]: s["t"] for s in steps}
    for e in of(host, "X", "step"):
        assert e["ts"] == pytest.approx(t_of[e["args"]["i"]] * 1e6, abs=1e-3)
    assert not any("shifted_us" in e["args"] for e in of(host, "X"))
    assert doc["metadata"]["counts"]["events"] == len(events)
    assert doc["metadata"]["late_records"] == 0


@pytest.mark.parametrize("name", SAMPLES)
def test_gpu_slices_are_the_in_order_lower_bound(name, tmp_path, capsys):
    doc = export_json(capsys, sample_path(name), tmp_path)
    gpu = of(by_track(doc)["GPU: decode steps (start = lower bound)"], "X")
    _no_overlap(gpu)
    prev_end = -math.inf
    for e in gpu:
        a = e["args"]
        assert a["start"] == "lower bound"
        assert e["ts"] == pytest.approx(max(a["enqueued_us"], prev_end + a.get("gap_us", 0.0)), abs=1e-3)
        assert a["queued_us"] == pytest.approx(e["ts"] - a["enqueued_us"], abs=1e-3) and a["queued_us"] >= 0
        prev_end = e["ts"] + e["dur"]
    assert [e["args"]["i"] for e in gpu] == list(range(len(gpu)))
    assert "lower bound" in doc["metadata"]["gpu_placement"]


def test_a_step_round_trips(tmp_path, capsys):
    trace = read_trace(sample_path())
    step = next(r for r in trace.records if r["type"] == "step" and r["i"] == 1234)
    doc = export_json(capsys, sample_path(), tmp_path)
    host = next(e for e in of(doc["traceEvents"], "X", "step") if e["args"]["i"] == 1234)
    gpu = next(e for e in of(doc["traceEvents"], "X", "gpu") if e["args"]["i"] == 1234)
    assert host["dur"] == step["host_us"] and host["ts"] == pytest.approx(step["t"] * 1e6, abs=1e-3)
    assert gpu["dur"] == pytest.approx(step["gpu_ms"] * 1000, abs=1e-3)
    assert {k: host["args"][k] for k in ("batch", "bucket", "target", "padded", "tokens", "gpu_ms")} == \
        {k: step[k] for k in ("batch", "bucket", "target", "padded", "tokens", "gpu_ms")}
    assert step["bucket"] is not None and host["name"] == f"graph b{step['bucket']}"
    launch = next(e for e in of(doc["traceEvents"], "C") if e["name"] == "host launch" and e["ts"] == host["ts"])
    assert launch["args"] == {"us": step["host_us"]}


# ---- Perfetto on a synthetic CPU trace with everything odd ----

def odd_trace(path):
    """A CPU run (no gpu_ms), eager reasons, a failed capture and its alert, NaN, unknown kinds and
    types, a step whose start was rounded into the previous one, and records written out of order."""
    with TraceWriter(path, {"model": {"name": "tiny"}, "gpu": "cpu"}, t0=time.perf_counter() - 2.0) as w:
        w.write(R.event(R.EV_CAPTURE, 0.30, bucket=8, ok=False, capture_s=0.2, pool_bytes=None, nvml_bytes=None,
                        kernels=None, check=None, cause="host sync", hint="remove .item()", error="boom"))
        w.write(R.alert(0.30, "bucket 8 capture failed (host sync)", level="error", bucket=8))
        w.write(R.event(R.EV_CAPTURE, 0.40, bucket=4, ok=True, capture_s=0.1, pool_bytes=1 << 20, nvml_bytes=None,
                        kernels=12, check={"tokens_equal": True, "rel_err": float("nan")}, cause=None,
                        hint=None, error=None))
        w.write(R.event(R.EV_CAPTURE_DONE, 0.41, sizes=[4], failed=[8], pool_bytes=1 << 20, seconds=0.41,
                        pool="shared", pools=2))
        w.write({"type": "prefill", "t": 1.0, "i": 0, "requests": 2, "tokens": 30, "host_ms": 5.0})
        w.write(R.step(1, 1.010, 3, 4, None, R.REASON_NO_CUDA, 900.0, None, 3))   # before step 0: out of order
        w.write(R.step(0, 1.005, 2, 4, None, R.REASON_NO_CUDA, 5000.4, None, 2))  # ends 0.4 µs after step 1 starts
        w.write(R.step(2, 1.020, 9, None, None, R.REASON_OVER_MAX, 800.0, None, 9))
        w.write(R.event(R.EV_MARK, 1.015, text="hello"))
        w.write(R.event("future_kind", 1.016, detail=1))
        w.write({"type": "future_record", "t": 1.017})
        w.write({"type": "sample", "t": 1.018, "gpu_util": None, "power_w": None, "cpu_pct": 99.5,
                 "rss_bytes": 3 * (1 << 20), "gpu_busy": None})


def test_odd_cpu_trace_exports_valid(tmp_path, capsys):
    odd_trace(tmp_path / "odd.jsonl")
    doc = export_json(capsys, tmp_path / "odd.jsonl", tmp_path)
    slices = validate_chrome_trace(doc)
    tracks = by_track(doc)
    assert "GPU: decode steps (start = lower bound)" not in tracks   # CPU run: no GPU track at all

    host = of(tracks["host: decode loop"], "X")
    assert [e["name"] for e in host] == ["prefill 2 req", "eager b2 (no_cuda)", "eager b3 (no_cuda)",
                                         "eager b9 (over_max)"]
    _no_overlap(host)
    assert host[2]["args"]["shifted_us"] == pytest.approx(0.4, abs=1e-3)   # pushed to step 0's end
    assert host[2]["dur"] == 900.0 and "gpu_ms" not in host[2]["args"]       # null is left out

    graphs = tracks["CUDA graphs"]
    caps = of(graphs, "X", "capture")
    assert [e["name"] for e in caps] == ["capture b8 failed (host sync)", "capture b4"]
    assert caps[0]["ts"] == pytest.approx(100_000) and caps[0]["dur"] == pytest.approx(200_000)
    assert caps[1]["args"]["check"]["rel_err"] is None                   # JSON has no NaN: null
    assert [e["name"] for e in of(graphs, "i")] == ["captured [4], failed [8] in 0.41 s, shared pool 1.0 MiB"]

    alerts = of(tracks["alerts"], "i")
    assert len(alerts) == 1 and alerts[0]["name"].startswith("ERROR: bucket 8") and alerts[0]["args"]["bucket"] == 8
    names = [e["name"] for e in of(tracks["events"], "i")]
    assert names == ["mark: hello", "future_kind detail=1", "end (closed)"]

    counters = Counter(e["name"] for e in of(doc["traceEvents"], "C"))
    assert counters == {"host launch": 3, "batch": 3, "host CPU": 1, "host RSS": 1}   # nulls skipped
    rss = next(e for e in of(doc["traceEvents"], "C") if e["name"] == "host RSS")
    assert rss["args"] == {"MiB": 3.0}
    assert doc["metadata"]["counts"]["skipped"] == 1 and sum(map(len, slices.values())) == 6


# ---- CSV ----

@pytest.mark.parametrize("name", SAMPLES)
def test_csv_has_one_row_per_step_with_the_trace_values(name, tmp_path, capsys):
    out = tmp_path / "steps.csv"
    rc, _, err = export(capsys, sample_path(name), "csv", out)
    assert rc == 0, err
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    steps = [r for r in read_trace(sample_path(name)).records if r["type"] == "step"]
    assert rows[0] == list(STEP_COLUMNS) == ["i", "t", "batch", "rows", "target", "bucket", "mode", "runtime_mode",
                                             "reason", "padded", "host_us", "gpu_ms", "gap_us", "tokens", "phase",
                                             "prompt_tokens"]
    assert len(rows) == len(steps) + 1
    for row, step in zip(rows[1:], steps):
        # the H100 samples predate rows / runtime_mode / phase / prompt_tokens: filled with their old meaning
        derived = {"rows": step["batch"], "runtime_mode": "NONE" if step["bucket"] is None else "FULL",
                   "phase": "decode", "prompt_tokens": 0}
        for col, cell in zip(rows[0], row):
            v = step[col] if col in step else derived.get(col)   # gap_us in traces before it: an empty cell
            if v is None:
                assert cell == ""
            elif isinstance(v, str):
                assert cell == v
            else:
                assert float(cell) == v, (col, cell, v)


def test_csv_keeps_step_fields_beyond_the_schema(tmp_path, capsys):
    path = tmp_path / "extra.jsonl"
    with TraceWriter(path, {"model": {"name": "tiny"}}) as w:
        w.write(R.step(0, 0.1, 2, 2, 2, None, 50.0, 1.5, 2))
        w.write(R.step(1, 0.2, 3, 4, None, R.REASON_PADDING, 60.0, None, 3) | {"spec_tokens": 4})
    rc, _, err = export(capsys, path, "csv", tmp_path / "extra.csv")
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "extra.csv", newline="")))
    assert rows == [[*STEP_COLUMNS, "spec_tokens"],
                    ["0", "0.1", "2", "2", "2", "2", "graph", "FULL", "", "0", "50.0", "1.5", "", "2", "decode", "0",
                     ""],
                    ["1", "0.2", "3", "3", "4", "", "eager", "NONE", "padding_ratio", "0", "60.0", "", "", "3",
                     "decode", "0", "4"]]


def test_csv_and_perfetto_carry_the_vllm_fields(tmp_path, capsys):
    """A PIECEWISE mixed forward (rows > batch) and an old-schema step side by side: the CSV has the new columns,
    filled for the old record; Perfetto names and args say PIECEWISE / mixed, and the batch counter has rows."""
    path = tmp_path / "vllm.jsonl"
    old = R.step(1, 0.2, 3, 4, 4, None, 60.0, 2.0, 3)
    for k in ("rows", "runtime_mode", "phase", "prompt_tokens"):
        del old[k]
    with TraceWriter(path, {"model": {"name": "tiny"}}) as w:
        w.write(R.step(0, 0.1, 2, 16, 16, None, 50.0, 1.5, 2, rows=12, runtime_mode="PIECEWISE", phase="mixed",
                       prompt_tokens=10))
        w.write(old)
    rc, _, err = export(capsys, path, "csv", tmp_path / "v.csv")
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "v.csv", newline="")))
    head = rows[0]
    got = [dict(zip(head, r)) for r in rows[1:]]
    assert [(g["batch"], g["rows"], g["runtime_mode"], g["phase"], g["prompt_tokens"], g["padded"]) for g in got] == [
        ("2", "12", "PIECEWISE", "mixed", "10", "4"), ("3", "3", "FULL", "decode", "0", "1")]
    doc = export_json(capsys, path, tmp_path)
    validate_chrome_trace(doc)
    steps = of(doc["traceEvents"], "X", "step")
    assert [s["name"] for s in steps] == ["graph b16 PIECEWISE mixed", "graph b4"]
    assert steps[0]["args"]["rows"] == 12 and steps[0]["args"]["phase"] == "mixed"
    assert steps[1]["args"]["rows"] == 3 and steps[1]["args"]["runtime_mode"] == "FULL"
    batch = [e["args"] for e in of(doc["traceEvents"], "C") if e["name"] == "batch"]
    assert batch == [{"rows": 12, "padded": 4, "requests": 2}, {"rows": 3, "padded": 1, "requests": 3}]


# ---- truncated traces, output places ----

def test_truncated_trace_exports_what_is_there(tmp_path, capsys):
    data = open(sample_path(), "rb").read()
    cut = data.index(b'{"type":"step","i":700,') + 25       # mid-line
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data[:cut])
    whole = [json.loads(line) for line in data[:cut].split(b"\n")[1:-1]]
    n_steps = sum(r["type"] == "step" for r in whole)

    doc = export_json(capsys, path, tmp_path)
    validate_chrome_trace(doc)
    assert len(of(doc["traceEvents"], "X", "step")) == n_steps == 700
    assert doc["metadata"]["complete"] is False
    rc, _, err = export(capsys, path, "csv", tmp_path / "cut.csv")
    assert rc == 0 and "no end record: partial trace" in err   # as the timelines say it
    cut = tmp_path / "cut.parquet"   # a compact trace's CSV says it too
    assert main(["convert", str(path), str(cut)]) == 0
    rc, _, err = export(capsys, cut, "csv", tmp_path / "cut2.csv")
    assert rc == 0 and "no end record: partial trace" in err
    assert len((tmp_path / "cut.csv").read_text().splitlines()) == n_steps + 1
    rc = main(["export", str(path), "--format", "perfetto", "-o", str(tmp_path / "again.json")])
    assert rc == 0 and "no end record: partial trace" in capsys.readouterr().err


def test_stdout_and_default_output(tmp_path, capsys, monkeypatch):
    rc = main(["export", sample_path("llama1b_live_h100.jsonl"), "--format", "perfetto", "-o", "-"])
    cap = capsys.readouterr()
    assert rc == 0 and cap.err == ""                       # no summary line when writing to stdout
    validate_chrome_trace(_strict_json(cap.out))

    trace = tmp_path / "traces" / "run.jsonl"
    trace.parent.mkdir()
    trace.write_bytes(open(sample_path(), "rb").read())
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)   # the default output goes to the current directory, not next to the trace
    for fmt, suffix in (("perfetto", "run.perfetto.json"), ("csv", "run.csv")):
        assert main(["export", str(trace), "--format", fmt]) == 0
        assert (out / suffix).stat().st_size > 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("cgwatch export: ") and err[1].endswith("-> run.csv")
    assert sorted(p.name for p in out.iterdir()) == ["run.csv", "run.perfetto.json"]
    assert [p.name for p in trace.parent.iterdir()] == ["run.jsonl"]


def test_a_bundled_trace_exports_to_the_current_directory(tmp_path, capsys, monkeypatch):
    """sample:NAME reaches the trace inside the installed package; the output lands here, not in site-packages."""
    monkeypatch.chdir(tmp_path)
    package = Path(sample_path()).parent
    before = sorted(p.name for p in package.iterdir())
    assert main(["export", "sample:llama1b_fixed8_gap_h100", "--format", "csv"]) == 0
    assert capsys.readouterr().err.strip().endswith("-> llama1b_fixed8_gap_h100.csv")
    assert (tmp_path / "llama1b_fixed8_gap_h100.csv").stat().st_size > 0
    assert sorted(p.name for p in package.iterdir()) == before


# ---- bad input ----

def _untrusted_trace(path) -> list[int]:
    """The H100 Poisson trace with records that cannot be trusted; returns their line numbers."""
    lines = open(sample_path(), encoding="utf-8").read().splitlines()
    steps = [k for k, line in enumerate(lines) if '"type":"step"' in line]

    def edit(k, **fields):
        rec = json.loads(lines[k])
        rec.update(fields)
        lines[k] = json.dumps(rec, separators=(",", ":"))
    edit(steps[100], host_us=-5000.0)                        # a negative duration
    edit(steps[200], gpu_ms=-13.5)                           # a negative GPU slice
    edit(steps[300], t=json.loads(lines[steps[300]])["t"] - 10)   # t runs back
    edit(steps[400], bucket="64")                            # not a number
    caps = [k for k, line in enumerate(lines) if '"kind":"capture"' in line]
    edit(caps[0], capture_s=-0.5)                            # a negative capture slice
    lines.insert(steps[500] + 1, lines[steps[500]])          # a duplicate step
    path.write_text("\n".join(lines) + "\n")
    return [steps[100] + 1, steps[200] + 1, steps[300] + 1, steps[400] + 1, caps[0] + 1, steps[500] + 2]


@pytest.mark.parametrize("fmt", ["perfetto", "csv"])
def test_records_that_cannot_be_trusted_are_left_out_and_said(fmt, tmp_path, capsys):
    """Never a negative or made-up slice, never a silent drop: the untrusted records are left out, one warning
    line names them (first few + count), the summary counts them, and the rest exports as usual."""
    trace, out = tmp_path / "t.jsonl", tmp_path / f"t.{fmt}"
    bad = _untrusted_trace(trace)
    rc, _, err = export(capsys, trace, fmt, out)
    assert rc == 0, err
    warning, summary = err.strip().splitlines()
    assert warning.startswith(f"cgwatch: warning: skipped {len(bad)} records that cannot be trusted, left out of every "
                              f"number: line {min(bad)}: ") and f"and {len(bad) - 3} more" in warning
    assert f"{len(bad)} records skipped" in summary
    steps = [r for r in read_trace(sample_path()).records if r["type"] == R.STEP]
    if fmt == "csv":
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(steps) - 4 and all(float(r["host_us"]) >= 0 for r in rows)
        return
    doc = _strict_json(out.read_text())
    slices = validate_chrome_trace(doc)                       # no negative dur, in order, no overlap
    host = [e for e in of(doc["traceEvents"], "X", "step")]
    assert len(host) == len(steps) - 4 and doc["metadata"]["counts"]["capture"] == 17
    assert all(e["dur"] >= 0 for evs in slices.values() for e in evs)


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such trace"),
    ("not_a_trace", "not a cgwatch trace"),
    ("corrupt", "corrupt record at byte"),
    ("unknown_format", "invalid choice"),
    ("unwritable", "cannot write"),
    ("same_file", "is the trace itself"),
])
def test_bad_input_is_one_line_and_non_zero(case, needle, tmp_path, capsys):
    trace, fmt, out = tmp_path / "t.jsonl", "perfetto", tmp_path / "out" / "t.json"
    (tmp_path / "out").mkdir()
    if case == "not_a_trace":
        trace.write_text("hello\n")
    elif case == "corrupt":
        lines = open(sample_path(), "rb").read().split(b"\n")
        trace.write_bytes(b"\n".join(lines[:3000] + [b"{oops"] + lines[3000:]))
    elif case != "missing":
        trace.write_bytes(open(sample_path(), "rb").read())
    if case == "unknown_format":
        fmt = "xml"
    elif case == "unwritable":
        out = tmp_path / "no" / "such" / "dir" / "t.json"
    elif case == "same_file":
        out = trace
    rc = main(["export", str(trace), "--format", fmt, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("cgwatch: ") and "Traceback" not in err, err
    assert needle in err, err
    assert list((tmp_path / "out").iterdir()) == []          # no half-written output, no temp file left


def test_gpu_gap_places_back_to_back_steps_and_is_a_counter(tmp_path, capsys):
    """The host enqueued step 1 while step 0 ran (t 0.1005 s, inside step 0's 2 ms); the GPU then
    waited 30 µs for it: its slice starts at step 0's end + 30 µs, not at step 0's end."""
    path = tmp_path / "gap.jsonl"
    with TraceWriter(path, {"model": {"name": "tiny"}}) as w:
        w.write(R.step(0, 0.1, 2, 2, 2, None, 50.0, 2.0, 2))
        w.write(R.step(1, 0.1005, 2, 2, 2, None, 50.0, 2.0, 2) | {"gap_us": 30.0})
    doc = export_json(capsys, path, tmp_path)
    gpu = sorted((e for e in of(doc["traceEvents"], "X", "gpu")), key=lambda e: e["ts"])
    assert [e["ts"] for e in gpu] == [100000.0, 102030.0]
    assert gpu[1]["args"]["gap_us"] == 30.0 and "gap_us" not in gpu[0]["args"]
    gaps = [e for e in of(doc["traceEvents"], "C") if e["name"] == "GPU gap"]
    assert [(e["ts"], e["args"]) for e in gaps] == [(100500.0, {"us": 30.0})]
