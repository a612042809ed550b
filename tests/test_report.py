import json
import random

import numpy as np
import pytest

from cgwatch import records as R
from cgwatch.report import build_report, format_report, percentile
from cgwatch.trace import Trace, TraceWriter, read_trace

SIZES = [1, 2, 4, 8, 16]
MIB = 2 ** 20


def capture(t, bucket, ok, pool=None, nvml=None, kernels=None, check=None, cause=None, cs=0.5):
    return R.event(R.EV_CAPTURE, t, bucket=bucket, ok=ok, capture_s=cs, pool_bytes=pool,
                   nvml_bytes=nvml, kernels=kernels, check=check, cause=cause,
                   error=None if ok else f"RuntimeError: {cause}")


def synthetic_records(seed: int = 7, n: int = 3000) -> list[dict]:
    """A known mix: graph steps with padding, eager steps for several reasons, over-max, a failed
    bucket (4), a bucket that failed on recapture (8), a captured-but-untargeted bucket (16)."""
    rng = random.Random(seed)
    recs = [
        capture(0.1, 1, True, 1 * MIB, 2 * MIB, 100, {"tokens_equal": True, "rel_err": 0.0}),
        capture(0.2, 2, True, 3 * MIB, 4 * MIB, 110, {"tokens_equal": True, "rel_err": 3.1e-3}),
        capture(0.3, 4, False, cause="OOM"),
        capture(0.4, 8, True, 8 * MIB, None, 130, {"tokens_equal": False, "rel_err": 0.2}, cs=1.5),
        capture(0.5, 16, True, 16 * MIB, 17 * MIB, 140, None),
        R.event(R.EV_CAPTURE_DONE, 0.6, sizes=SIZES, failed=[4], pool_bytes=40 * MIB,
                seconds=2.0, pool="shared"),
    ]
    t = 1.0
    for i in range(n):
        if i == n // 2:  # a recapture: bucket 2 again (new numbers), bucket 8 now fails
            recs += [R.event(R.EV_RECAPTURE, t, sizes=SIZES),
                     capture(t, 2, True, 5 * MIB, 6 * MIB, 111, {"tokens_equal": True, "rel_err": 1e-3}),
                     capture(t, 8, False, cause="illegal memory access"),
                     R.event(R.EV_CAPTURE_DONE, t, sizes=SIZES, failed=[4, 8], pool_bytes=None,
                             seconds=1.0, pool="shared")]
        if i % 200 == 0:
            recs.append({"type": "prefill", "t": t, "i": i, "requests": 3, "tokens": 100 + i % 7,
                         "host_ms": 12.5})
        if i % 50 == 0:
            recs.append({"type": "sample", "t": t, "gpu_util": None if i % 100 else 80 + i % 13})
        if i % 500 == 0:
            recs.append(R.alert(t, f"alert {i}", "error" if i % 1000 else "warn"))
        if i == 700:
            recs.append(R.event(R.EV_MODE, t, mode="eager"))
        if i == 800:
            recs.append(R.event(R.EV_MODE, t, mode="graph"))
            recs.append(R.event(R.EV_MARK, t, text="warm"))
        batch = rng.randint(1, 20)
        target = next((s for s in SIZES if s >= batch), None)
        failed = {4} | ({8} if i >= n // 2 else set())
        if 700 <= i < 800:
            bucket, reason = None, R.REASON_EAGER_MODE
        elif target is None:
            bucket, reason = None, R.REASON_OVER_MAX
        elif target in failed:
            bucket, reason = None, R.REASON_BUCKET_FAILED
        elif batch == 9:  # pretend 9 -> 16 is too much padding
            bucket, reason = None, R.REASON_PADDING
        else:
            bucket, reason = target, None
        gpu_ms = round(rng.uniform(2.0, 6.0), 4) if bucket else round(rng.uniform(8.0, 20.0), 4)
        host_us = rng.uniform(20, 60) if bucket else rng.uniform(300, 900)
        rec = R.step(i, t, batch, target, bucket, reason, host_us, gpu_ms, batch)
        if rng.random() < 0.8:   # back to back: a gap (a prefill or command before the others)
            rec["gap_us"] = round(rng.uniform(0.0, 40.0) if bucket else rng.uniform(500.0, 9000.0), 1)
        recs.append(rec)
        t += gpu_ms / 1000 + 0.0005
    return recs


def linear(values: list[float], p: float):
    """Independent definition: numpy's default ('linear') percentile."""
    return None if not values else float(np.percentile(np.asarray(values, dtype=float), p))


def expected(recs: list[dict]) -> dict:
    """Recompute the report's numbers straight from the raw records."""
    steps = [r for r in recs if r["type"] == "step"]
    rows = {}
    for target in {r["target"] for r in steps} | {r["bucket"] for r in recs if r.get("kind") == "capture"}:
        mine = [r for r in steps if r["target"] == target]
        graph = [r for r in mine if r["bucket"] is not None]
        eager = [r for r in mine if r["bucket"] is None]
        dur = lambda r: r["gpu_ms"] if r["gpu_ms"] is not None else r["host_us"] / 1000
        caps = [r for r in recs if r.get("kind") == "capture" and r["bucket"] == target]
        oks = [c for c in caps if c["ok"]]
        misses = {}
        for r in eager:
            misses[r["reason"]] = misses.get(r["reason"], 0) + 1
        graph_mode = [r for r in mine if r["reason"] != "eager_mode"]
        rows[target] = {
            "steps": len(mine), "graph_steps": len(graph), "graph_n": len(graph), "eager_n": len(eager),
            "hit_pct": 100 * len(graph) / len(graph_mode) if graph_mode else None,
            "graph_share_pct": 100 * len(graph) / len(mine) if mine else None,
            "padding_waste_pct": (100 * sum(r["bucket"] - r["batch"] for r in graph)
                                  / sum(r["bucket"] for r in graph)) if graph else None,
            "graph_p50_ms": linear([dur(r) for r in graph], 50),
            "graph_p99_ms": linear([dur(r) for r in graph], 99),
            "eager_p50_ms": linear([dur(r) for r in eager], 50),
            "eager_p99_ms": linear([dur(r) for r in eager], 99),
            "host_us_graph_p50": linear([r["host_us"] for r in graph], 50),
            "host_us_eager_p50": linear([r["host_us"] for r in eager], 50),
            "gap_us_graph_p50": linear([r["gap_us"] for r in graph if r["gap_us"] is not None], 50),
            "gap_us_eager_p50": linear([r["gap_us"] for r in eager if r["gap_us"] is not None], 50),
            "graph_mib": oks[-1]["pool_bytes"] / MIB if oks and oks[-1]["pool_bytes"] is not None else None,
            "nvml_mib": oks[-1]["nvml_bytes"] / MIB if oks and oks[-1]["nvml_bytes"] is not None else None,
            "capture_s": oks[-1]["capture_s"] if oks else None,
            "kernels": oks[-1]["kernels"] if oks else None,
            "status": "-" if not caps else "ok" if caps[-1]["ok"] else f"failed: {caps[-1]['cause']}",
            "misses": misses,
        }
    total_graph = [r for r in steps if r["bucket"] is not None]
    # the run's wall time: from t = 0 to the latest of the end record and every record (a step: its end)
    step_end = lambda r: r["t"] + (r["gpu_ms"] if r["gpu_ms"] is not None else r["host_us"] / 1000) / 1000  # noqa: E731
    duration = max([_CLEAN["t"]] + [step_end(r) for r in steps] + [r["t"] for r in recs if r["type"] != "step"])
    gpu = [r["gpu_ms"] for r in steps if r["gpu_ms"] is not None]
    utils = [r["gpu_util"] for r in recs if r["type"] == "sample" and r.get("gpu_util") is not None]
    dones = [r for r in recs if r.get("kind") == "capture_done"]
    prefills = [r for r in recs if r["type"] == "prefill"]

    def idle(mode):
        mine = [r for r in steps if (r["bucket"] is not None) == (mode == "graph")
                and r["gap_us"] is not None and r["gpu_ms"] is not None]
        gaps, busy = sum(r["gap_us"] for r in mine), sum(r["gpu_ms"] * 1000 for r in mine)
        return 100 * gaps / (gaps + busy) if mine else None

    graph_mode = [r for r in steps if r["reason"] != "eager_mode"]
    totals = {
        "steps": len(steps), "graph_steps": len(total_graph),
        "graph_hit_rate_pct": 100 * len(total_graph) / len(graph_mode),
        "hit_pct": 100 * len(total_graph) / len(graph_mode),
        "graph_share_pct": 100 * len(total_graph) / len(steps),
        "tokens": sum(r["tokens"] for r in steps), "duration_s": duration,
        "tokens_per_s": sum(r["tokens"] for r in steps) / duration,
        "gpu_busy_pct": 100 * sum(gpu) / (duration * 1000) if gpu else None,
        "nvml_util_pct": sum(utils) / len(utils) if utils else None,
        "graph_pool_mib": (dones[-1]["pool_bytes"] / MIB
                           if dones and dones[-1]["pool_bytes"] is not None else None),
        "padding_waste_pct": 100 * sum(r["bucket"] - r["batch"] for r in total_graph) / sum(r["bucket"] for r in total_graph),
        "gpu_idle_graph_pct": idle("graph"), "gpu_idle_eager_pct": idle("eager"),
        "prefills": len(prefills), "prefill_tokens": sum(r["tokens"] for r in prefills),
        "mode_switches": sum(r.get("kind") == "mode" for r in recs),
        "recaptures": sum(r.get("kind") == "recapture" for r in recs),
    }
    return {"rows": rows, "totals": totals}


_CLEAN = {"type": "end", "t": 9}


def _trace(recs, header=None, end=_CLEAN, truncated_at=None) -> Trace:
    head = {"type": "header", "format": "cgwatch-trace", "version": 1, "model": "tiny",
            "gpu": "NVIDIA H100", "torch": "2.13", **(header or {})}
    return Trace(header=head, records=recs, end=end,
                 truncated_at=truncated_at, path="x.jsonl")


def _close(a, b):
    if a is None or b is None:
        return a is b
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_percentile_is_linearly_interpolated():
    vals = [15, 20, 35, 40, 50]
    # rank p/100 * (n - 1): 5% -> 0.2 (15 + 0.2 * 5), 30% -> 1.2 (20 + 0.2 * 15), 50% -> 2, 99% -> 3.96
    assert [percentile(vals, p) for p in (5, 30, 50, 99, 100)] == pytest.approx([16, 23, 35, 49.6, 50])
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)   # not the max: 4 values say little
    assert percentile([1.0, 2.0], 50) == 1.5                            # between the two middle values
    hundred = list(range(1, 101))
    assert percentile(hundred, 50) == 50.5 and percentile(hundred, 99) == pytest.approx(99.01)
    for n in range(1, 40):
        vals = sorted(random.Random(n).uniform(0, 1) for _ in range(n))
        for p in (1, 25, 50, 90, 99, 100):
            assert percentile(vals, p) == pytest.approx(linear(vals, p), rel=1e-12, abs=1e-15)


def test_report_matches_independent_recompute():
    recs = synthetic_records()
    rep = build_report(_trace(recs))
    exp = expected(recs)
    json.dumps(rep)  # JSON-ready

    got_rows = {b["bucket"]: b for b in rep["buckets"]}
    assert set(got_rows) == set(exp["rows"]) == {1, 2, 4, 8, 16, None}
    assert [b["bucket"] for b in rep["buckets"]] == [1, 2, 4, 8, 16, None]  # over max last
    for bucket, want in exp["rows"].items():
        got = got_rows[bucket]
        for key, value in want.items():
            assert _close(got[key], value) if not isinstance(value, (str, dict)) else got[key] == value, \
                (bucket, key, got[key], value)
    for key, value in exp["totals"].items():
        assert _close(rep["totals"][key], value), (key, rep["totals"][key], value)

    # hand-known facts of the mix
    r = got_rows
    assert r[None]["label"] == ">16" and r[None]["graph_steps"] == 0 and r[None]["hit_pct"] == 0.0
    assert set(r[None]["misses"]) <= {"over_max", "eager_mode"} and r[None]["status"] == "-"
    assert r[None]["padding_waste_pct"] is None and r[None]["graph_p50_ms"] is None
    assert r[4]["status"] == "failed: OOM" and r[4]["graph_steps"] == 0 and r[4]["graph_mib"] is None
    assert r[4]["check"] is None and r[4]["capture_s"] is None
    assert r[8]["status"] == "failed: illegal memory access"
    assert r[8]["graph_mib"] == 8.0 and r[8]["capture_s"] == 1.5 and r[8]["check"] == "MISMATCH 2.0e-01"
    assert r[8]["nvml_mib"] is None
    assert r[2]["graph_mib"] == 5.0 and r[2]["nvml_mib"] == 6.0 and r[2]["kernels"] == 111
    assert r[2]["check"] == "ok 1.0e-03" and r[1]["check"] == "ok 0.0e+00" and r[16]["check"] is None
    assert r[1]["padding_waste_pct"] == 0.0 and r[1]["hit_pct"] > 80
    assert r[16]["steps"] > 0 and "padding_ratio" in r[16]["misses"]
    assert set(r[2]["misses"]) == {"eager_mode"}
    assert rep["totals"]["graph_pool_mib"] is None  # the latest capture_done has no pool bytes
    assert rep["totals"]["prefills"] == 15 and rep["totals"]["mode_switches"] == 2
    assert rep["totals"]["recaptures"] == 1
    assert len(rep["alerts"]) == 6 and rep["alerts"][1] == {"t": rep["alerts"][1]["t"], "level": "error",
                                                            "message": "alert 500"}
    assert [(e["kind"], e["text"]) for e in rep["events"]] == [
        ("mode", "mode eager"), ("mode", "mode graph"), ("mark", "mark: warm"),
        ("recapture", "recapture [1, 2, 4, 8, 16]")]
    assert rep["header"]["model"] == "tiny" and rep["warnings"] == []


def test_hand_computed_small_trace():
    recs = [
        capture(0.0, 4, True, 2 * MIB, None, 50, {"tokens_equal": True, "rel_err": 3.1e-3}),
        R.step(0, 1.000, 3, 4, 4, None, 40.0, 2.0, 3),      # 1 padded row of 4
        R.step(1, 1.010, 2, 4, 4, None, 60.0, 4.0, 2),      # 2 padded rows of 4
        R.step(2, 1.020, 4, 4, None, "padding_ratio", 500.0, 10.0, 4),
        R.step(3, 1.040, 9, None, None, "over_max", 700.0, 14.0, 9),
        {"type": "sample", "t": 1.0, "gpu_util": 50}, {"type": "sample", "t": 1.1, "gpu_util": 70},
        {"type": "sample", "t": 1.2, "gpu_util": None},
        {"type": "prefill", "t": 0.9, "i": 0, "requests": 3, "tokens": 30, "host_ms": 5.0},
    ]
    recs[1]["gap_us"], recs[2]["gap_us"], recs[3]["gap_us"] = 6.0, 2.0, 5000.0   # step 3 has no gap
    rep = build_report(_trace(recs, end={"type": "end", "t": 1.25}))
    b4, over = rep["buckets"]
    assert (b4["gap_us_graph_p50"], b4["gap_us_eager_p50"], over["gap_us_eager_p50"]) == (4.0, 5000.0, None)
    assert (b4["gap_us_graph_n"], b4["gap_us_eager_n"], over["gap_us_eager_n"]) == (2, 1, 0)
    assert (b4["label"], b4["steps"], b4["graph_steps"]) == ("4", 3, 2)
    assert b4["hit_pct"] == pytest.approx(200 / 3) and b4["graph_share_pct"] == pytest.approx(200 / 3)
    assert b4["padding_waste_pct"] == pytest.approx(37.5)        # 3 padded / 8 computed rows
    assert (b4["graph_p50_ms"], b4["graph_p99_ms"], b4["graph_n"]) == (3.0, pytest.approx(3.98), 2)
    assert (b4["eager_p50_ms"], b4["host_us_graph_p50"], b4["host_us_eager_p50"]) == (10.0, 50.0, 500.0)
    assert b4["misses"] == {"padding_ratio": 1} and b4["graph_mib"] == 2.0 and b4["check"] == "ok 3.1e-03"
    assert over["label"] == ">4" and over["misses"] == {"over_max": 1} and over["status"] == "-"
    t = rep["totals"]
    assert t["duration_s"] == pytest.approx(1.25)     # the run: from its start (t 0) to the end record
    assert t["tokens"] == 18 and t["tokens_per_s"] == pytest.approx(18 / 1.25)
    assert t["gpu_busy_pct"] == pytest.approx(100 * 30 / 1250)
    # without an end record (a crash, a live run): to the latest record, the sample at 1.2 s here; without
    # it, the last step's end
    assert build_report(_trace(recs, end=None))["totals"]["duration_s"] == pytest.approx(1.2)
    steps_only = [r for r in recs if r["type"] == "step"]
    assert build_report(_trace(steps_only, end=None))["totals"]["duration_s"] == pytest.approx(1.054)   # 1.040 + 14 ms
    assert t["nvml_util_pct"] == 60 and t["padding_waste_pct"] == pytest.approx(37.5)
    assert t["graph_hit_rate_pct"] == 50 and t["graph_pool_mib"] is None
    assert (t["prefills"], t["prefill_tokens"]) == (1, 30)
    assert t["gpu_idle_graph_pct"] == pytest.approx(100 * 8 / (8 + 6000))         # steps 0 and 1
    assert t["gpu_idle_eager_pct"] == pytest.approx(100 * 5000 / (5000 + 10000))   # step 2 only
    # steps written out of t order (emitted when their GPU time is read): same numbers
    assert build_report(_trace(recs[::-1], end={"type": "end", "t": 1.25}))["totals"] == t


def test_cpu_run_has_no_gpu_busy(tmp_path):
    path = tmp_path / "cpu.jsonl"
    with TraceWriter(path, {"model": "tiny", "gpu": None, "torch": "2.13"}) as w:
        for i in range(100):
            w.write(R.step(i, i * 0.01, 2, 2, None, R.REASON_NO_CUDA, 9000.0 + i, None, 2))
        w.write({"type": "sample", "t": 0.5, "gpu_util": None, "cpu_pct": 100.0})
    rep = build_report(read_trace(path))
    t = rep["totals"]
    assert t["gpu_busy_pct"] is None and t["nvml_util_pct"] is None
    assert t["duration_s"] == pytest.approx(0.99 + 9.099 / 1000)
    (row,) = rep["buckets"]
    assert row["label"] == "2" and row["misses"] == {"no_cuda": 100} and row["hit_pct"] is None
    assert row["eager_p50_ms"] == pytest.approx(9.0495)  # host time: p50 of 9000..9099 us, interpolated
    assert t["hit_pct"] is None and t["graph_share_pct"] == 0   # no CUDA is not a miss: no graph was possible
    text = format_report(rep)
    assert "gpu busy         n/a" in text


def test_empty_and_eager_only_traces():
    rep = build_report(_trace([], end=None))
    assert rep["buckets"] == [] and rep["totals"]["duration_s"] is None
    assert rep["totals"]["tokens_per_s"] is None and rep["totals"]["graph_hit_rate_pct"] is None
    assert rep["warnings"] == ["no end record: the run did not finish cleanly"]
    assert "no buckets" in format_report(rep)
    rep = build_report(_trace([R.step(0, 0.0, 3, None, None, "no_graphs", 100.0, None, 3)]))
    assert rep["buckets"][0]["label"] == "eager"


def test_format_report():
    recs = synthetic_records(n=1200)
    rep = build_report(_trace(recs, truncated_at=12345))
    text = format_report(rep)
    lines = text.splitlines()
    assert lines[0].startswith("cgwatch report: tiny on NVIDIA H100, torch 2.13, ")
    assert max(len(line) for line in lines) <= 120
    rows = {line.split()[0]: line for line in lines if line.strip() and line.split()[0] in
            {"1", "2", "4", "8", "16", ">16"}}
    assert set(rows) == {"1", "2", "4", "8", "16", ">16"}
    assert "failed: OOM" in rows["4"] and "n/a" in rows["4"]
    assert rows["8"].endswith("failed: i...") and "failed: illegal memory access" not in rows["8"]
    assert "  8: illegal memory access" in text  # clipped in the table, whole below it
    assert "ok 1.0e-03" in rows["2"] and rows["2"].rstrip().endswith("ok")
    assert "MISMATCH 2.0e-01" in rows["8"]
    assert rows[">16"].split()[1] == str(rep["buckets"][-1]["steps"]) and rows[">16"].rstrip().endswith("-")
    b2 = rep["buckets"][1]
    assert f"{b2['hit_pct']:.1f}" in rows["2"] and f"{b2['graph_mib']:.1f}" in rows["2"]
    assert "totals:" in text and f"{rep['totals']['steps']:,}" in text
    assert "alerts:" in text and "ERROR  alert 500" in text
    assert "events:" in text and "mark: warm" in text
    assert "warning: trace truncated at byte 12345" in text
    assert "eager steps by reason:" in text and "over_max" in text
    assert "graph pool       n/a\n" in text and not text.endswith("\n")  # the latest capture_done had no pool bytes


def test_format_report_caps_long_lists():
    recs = [R.alert(i * 0.1, f"a{i}") for i in range(30)]
    text = format_report(build_report(_trace(recs)))
    assert "a19" in text and "a20" not in text and "... 10 more" in text



def test_bench_samples_agree_with_their_own_result():
    """The shipped H100 bench traces: the report's per-bucket graph p50 (every graph step of that size)
    and the bench's own timed-window p50 (in the end record) come from the same step records."""
    from cgwatch.samples import sample_path
    for name in ("bench_tiny_h100.jsonl", "bench_llama1b_h100.jsonl"):
        tr = read_trace(sample_path(name))
        rep = build_report(tr)
        rows = {r["batch"]: r for r in tr.end["bench"]["rows"]}
        buckets = {b["bucket"]: b for b in rep["buckets"]}
        assert set(rows) == set(buckets) == {1, 2, 4, 8, 16, 32, 64}
        steps = [r for r in tr.records if r["type"] == R.STEP]
        assert rep["totals"]["steps"] == len(steps) == tr.end["steps"]
        for b, row in rows.items():
            assert buckets[b]["graph_steps"] == sum(1 for s in steps if s["bucket"] == b)
            # the timed window is a subset of the bucket's graph steps: its p50 lies within their range
            graph = sorted(R.step_ms(s) for s in steps if s["bucket"] == b)
            assert graph[0] <= row["graph"]["p50_ms"] <= graph[-1]
            assert abs(buckets[b]["graph_p50_ms"] - row["graph"]["p50_ms"]) < 0.1 * row["graph"]["p50_ms"]


def test_gap_sample_has_gaps_on_back_to_back_steps():
    """The shipped H100 run (llama-1b, batch 8, 500 graph then 500 eager steps): every step but the
    first, those after a prefill and the one after the mode switch has a gap, and the report's
    numbers come from them."""
    from cgwatch.samples import sample_path
    tr = read_trace(sample_path("llama1b_fixed8_gap_h100.jsonl"))
    steps = [r for r in tr.records if r["type"] == R.STEP]
    after_prefill = {r["i"] for r in tr.records if r["type"] == R.PREFILL}
    switched = {r["i"] for r in steps if r["i"] > 0 and r["mode"] != steps[r["i"] - 1]["mode"]}
    assert switched == {500}
    for s in steps:
        assert (s["gap_us"] is None) == (s["i"] == 0 or s["i"] in after_prefill | switched), s
    t = build_report(tr)["totals"]
    for mode in ("graph", "eager"):
        mine = [s for s in steps if s["mode"] == mode and s["gap_us"] is not None]
        gap = sum(s["gap_us"] for s in mine)
        assert t[f"gpu_idle_{mode}_pct"] == pytest.approx(100 * gap / (gap + 1000 * sum(s["gpu_ms"] for s in mine)))


# ---- never a silently wrong number: what cannot be trusted is skipped, counted and named -----------------

SAMPLE_LINES = None


def _sample_lines() -> list[str]:
    global SAMPLE_LINES
    if SAMPLE_LINES is None:
        from cgwatch.samples import sample_path
        SAMPLE_LINES = open(sample_path("llama1b_poisson_h100.jsonl")).read().splitlines()
    return SAMPLE_LINES


def _step_line(lines, nth_in, pred=lambda r: True) -> int:
    """The index of the nth step line (among those ``pred`` accepts)."""
    found = [k for k, line in enumerate(lines) if '"type":"step"' in line and pred(json.loads(line))]
    return found[nth_in]


def _set(line: str, **fields) -> str:
    rec = json.loads(line)
    rec.update(fields)
    return json.dumps(rec, separators=(",", ":"))


def _edit(case: str):
    """(edited lines, the indices of the lines that cannot be trusted there, lines where they are deleted)."""
    lines = list(_sample_lines())
    k = _step_line(lines, 2000)
    row32 = _step_line(lines, 0, lambda r: r["target"] == 32 and r["bucket"] == 32 and r["batch"] > 20)
    bad = [k]
    if case == "host_us NaN":
        lines[k] = lines[k].replace('"host_us":', '"host_us":NaN,"x":', 1)
    elif case == "t 100 s back":
        lines[k] = _set(lines[k], t=json.loads(lines[k])["t"] - 100)
    elif case == "t 5 s back":
        lines[k] = _set(lines[k], t=json.loads(lines[k])["t"] - 5)
    elif case == "t 5 s ahead":
        lines[k] = _set(lines[k], t=json.loads(lines[k])["t"] + 5)
    elif case == "50 duplicated steps":
        first = _step_line(lines, 1000)
        dups = [line for line in lines[first:] if '"type":"step"' in line][:50]
        lines[first:first] = dups     # copies of steps 1000-1049 before them: the copies count, the originals repeat
        return lines, [first + 50 + lines[first + 50:].index(d) for d in dups], lines[:first] + lines[first + 50:]
    elif case == "padded over bucket - rows":
        lines[k] = _set(lines[k], padded=1000)
    elif case == "graph below its rows":
        k = bad[0] = row32
        lines[k] = _set(lines[k], bucket=4, padded=4 - json.loads(lines[k])["batch"])
    elif case == "negative gpu_ms":
        lines[k] = _set(lines[k], gpu_ms=-13.5)
    elif case == "t 1e400":
        lines[k] = lines[k].replace('"t":', '"t":1e400,"x":', 1)
    elif case == "string target":
        lines[k] = _set(lines[k], target="32")
    elif case == "string capture bucket":
        k = bad[0] = next(n for n, line in enumerate(lines) if '"kind":"capture"' in line)
        lines[k] = _set(lines[k], bucket="64")
    elif case == "missing bucket":
        rec = json.loads(lines[k])
        del rec["bucket"]
        lines[k] = json.dumps(rec)
    elif case == "null batch":
        lines[k] = _set(lines[k], batch=None)
    return lines, bad, [line for n, line in enumerate(lines) if n not in bad]


CASES = ["host_us NaN", "t 100 s back", "t 5 s back", "t 5 s ahead", "50 duplicated steps", "padded over bucket - rows",
         "graph below its rows", "negative gpu_ms", "t 1e400", "string target", "string capture bucket",
         "missing bucket", "null batch"]


def _strict(text: str):
    def no_constant(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=no_constant)


@pytest.mark.parametrize("case", CASES)
def test_an_untrusted_record_is_skipped_counted_and_named(case, tmp_path, capsys):
    """One edited record of the H100 trace: the report is the report of the trace without it (exit 0), and one
    warning line names it by its line number; --json is strict JSON."""
    from cgwatch.cli import main
    lines, bad, without = _edit(case)
    edited, clean = tmp_path / "edited.jsonl", tmp_path / "clean.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    clean.write_text("\n".join(without) + "\n")
    got, want = build_report(read_trace(edited)), build_report(read_trace(clean))
    assert got["totals"] == want["totals"] and got["buckets"] == want["buckets"] and got["epochs"] == want["epochs"]
    assert got["skipped_records"] == len(bad) and want["skipped_records"] == 0
    (warning,) = [w for w in got["warnings"] if w.startswith("skipped ")]
    n = len(bad)
    assert warning.startswith(f"skipped {n} record{'s' if n > 1 else ''} that cannot be trusted, left out of every number: "
                              f"line {bad[0] + 1}: ")
    assert ("and 47 more" in warning) == (n == 50)
    assert main(["report", str(edited)]) == 0
    out = capsys.readouterr().out
    assert out.count("\nwarning: skipped ") == 1 and f"line {bad[0] + 1}: " in out
    assert main(["report", str(edited), "--json"]) == 0
    captured = capsys.readouterr()
    assert _strict(captured.out)["totals"] == _strict(json.dumps(want["totals"]))
    assert captured.err.count("cgwatch: warning: skipped ") == 1


def test_the_brief_numbers_no_longer_move(tmp_path):
    """The numbers the issue showed moving: row 32's p50 and the tok/s stay those of the trace without the
    record; a negative time never reaches a percentile; the duration stays finite."""
    clean = build_report(read_trace(_write(tmp_path / "c.jsonl", _sample_lines())))
    for case in ("host_us NaN", "t 100 s back", "negative gpu_ms", "t 1e400", "50 duplicated steps"):
        lines, _, _ = _edit(case)
        rep = build_report(read_trace(_write(tmp_path / "e.jsonl", lines)))
        t = rep["totals"]
        assert 0 < t["duration_s"] < 50 and 2900 < t["tokens_per_s"] < 3100, (case, t["tokens_per_s"])
        assert all(b[k] is None or b[k] >= 0 for b in rep["buckets"] for k in ("graph_p50_ms", "eager_p50_ms",
                                                                               "host_us_graph_p50"))
        row32 = next(b for b in rep["buckets"] if b["label"] == "32")
        assert row32["host_us_graph_p50"] == pytest.approx(next(b for b in clean["buckets"]
                                                                 if b["label"] == "32")["host_us_graph_p50"], rel=0.01)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_json_is_strict_json(tmp_path, capsys):
    """A NaN in a field no number is made of (header metadata) is null in --json, never a bare NaN."""
    from cgwatch.cli import main
    lines = list(_sample_lines())
    lines[0] = lines[0].replace('"norm_eps":1e-05', '"norm_eps":NaN')
    assert '"norm_eps":NaN' in lines[0]
    path = _write(tmp_path / "t.jsonl", lines)
    assert main(["report", str(path), "--json"]) == 0
    rep = _strict(capsys.readouterr().out)
    assert rep["header"]["model"]["norm_eps"] is None and rep["skipped_records"] == 0


def test_report_events_include_padding_ratio_rate_pause_and_restart():
    recs = [R.step(0, 1.0, 3, 4, 4, None, 40.0, 2.0, 3), R.event(R.EV_PADDING, 1.1, value=0.3),
            R.event(R.EV_RATE, 1.2, rate=0.35), R.event(R.EV_PAUSE, 1.3, paused=True),
            R.event(R.EV_PAUSE, 1.4, paused=False),
            R.event(R.EV_RESTART, 1.5, backend="vllm", reason="capture sizes [1, 2]", seconds=16.9)]
    rep = build_report(_trace(recs))
    assert [(e["kind"], e["text"]) for e in rep["events"]] == [
        ("max_padding_ratio", "max padding ratio 0.3"), ("rate", "arrival rate 0.35 req/step"), ("pause", "paused"),
        ("pause", "resumed"), ("restart", "engine restarted in 16.9 s: capture sizes [1, 2]")]
    text = format_report(rep)
    assert "     1.100s  max padding ratio 0.3" in text and "     1.200s  arrival rate 0.35" in text


def test_the_live_h100_sample_lists_its_padding_and_rate_changes():
    from cgwatch.samples import sample_path
    rep = build_report(read_trace(sample_path("llama1b_live_h100.jsonl")))
    kinds = [e["kind"] for e in rep["events"]]
    assert "max_padding_ratio" in kinds and "rate" in kinds
