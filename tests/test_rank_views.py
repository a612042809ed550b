"""Per-rank numbers of a tensor-parallel trace, by hand: aggregate.RankStats, the report (text and
--json), Prometheus (gpu / rank labels), CSV, and the TUI's per-GPU view at 80x24."""

import csv
import io

import pytest

from cgwatch import records as R
from cgwatch.aggregate import RunStats
from cgwatch.export import export_csv
from cgwatch.metrics import Metrics
from cgwatch.report import build_report, format_report
from cgwatch.trace import TraceWriter, read_trace

MIB = 2 ** 20
HEADER = {"gpu": "NVIDIA H200", "dtype": "bfloat16", "model": {"name": "llama-8b"}, "backend": "pytorch",
          "config": {"capture_sizes": [8, 16], "mode": "graph"}, "workload": {"rate": 0.5},
          "tensor_parallel_size": 2,
          "ranks": [{"rank": 0, "device": "cuda:0", "gpu": "NVIDIA H200", "pid": 1},
                    {"rank": 1, "device": "cuda:1", "gpu": "NVIDIA H200", "pid": 2}]}


def _capture(t, b, rows, failed_rank=None):
    ok = failed_rank is None
    return R.event(R.EV_CAPTURE, t, bucket=b, ok=ok, capture_s=0.1, pool_bytes=MIB if ok else None,
                   nvml_bytes=None, kernels=900, check={"tokens_equal": True, "rel_err": 1e-3} if ok else None,
                   cause=None if ok else "host_sync", hint=None, error=None if ok else "operation not permitted",
                   failed_rank=failed_rank,
                   ranks=[{"rank": r, "ok": okr, "capture_s": 0.1, "pool_bytes": MIB if okr else None,
                           "nvml_bytes": None, "kernels": 900, "check": None, "cause": None if okr else "host_sync",
                           "error": None} for r, okr in enumerate(rows)])


def tp_run():
    recs = [_capture(0.1, 16, [True, False], failed_rank=1), _capture(0.2, 8, [True, True]),
            R.event(R.EV_CAPTURE_DONE, 0.3, sizes=[8], failed=[16], pool="shared", pool_bytes=3 * MIB,
                    seconds=0.3, rank_pool_bytes=[3 * MIB, 4 * MIB])]
    times = [(4.0, 4.5), (4.2, 4.0), (5.0, 6.0), (4.0, None)]   # rank 1 slowest twice of 3 complete
    for i, (a, b) in enumerate(times):
        s = R.step(i, 1.0 + 0.01 * i, 6, 8, 8, None, 50.0, a, 6)
        s["rank_ms"] = [a, b]
        s["skew_ms"] = None if b is None else round(abs(a - b), 4)
        recs.append(s)
    for k, (u0, u1) in enumerate(((50, 70), (60, 80))):
        recs.append({"type": R.SAMPLE, "t": 1.0 + k, "gpu_util": u0, "mem_used_bytes": 10 * 2**30,
                     "gpus": [{"gpu": 0, "gpu_util": u0, "mem_used_bytes": 10 * 2**30, "power_w": 300.0},
                              {"gpu": 1, "gpu_util": u1, "mem_used_bytes": 12 * 2**30, "power_w": 310.0}]})
    return recs


def test_rank_stats_by_hand():
    s = RunStats()
    for rec in tp_run():
        s.add(rec)
    r0, r1 = s.ranks.rows()
    assert (r0["steps"], r1["steps"]) == (4, 3)
    assert r0["step_p50_ms"] == pytest.approx(4.1) and r1["step_p50_ms"] == 4.5
    assert (r0["slowest"], r1["slowest"]) == (1, 2) and r1["slowest_pct"] == pytest.approx(200 / 3)
    assert (r0["nvml_util_pct"], r1["nvml_util_pct"]) == (55.0, 75.0)
    assert r1["mem_used_mib"] == 12 * 1024 and r1["graph_pool_mib"] == 4.0
    assert (r0["captured"], r0["failed"], r1["captured"], r1["failed"]) == ([8, 16], [], [8], [16])
    t = s.ranks.totals()
    assert t["skew_n"] == 3 and t["skew_p50_ms"] == pytest.approx(0.5)
    one = RunStats()
    one.add(R.step(0, 0.0, 1, 1, 1, None, 5.0, 1.0, 1))
    assert one.ranks.rows() == []                              # one rank: no per-rank rows
    assert one.state()[0]["ranks"] is None


@pytest.mark.parametrize("window", [None, 512])
def test_a_late_joiner_gets_the_per_rank_numbers(window):
    """The daemon sends RunStats.state() to a client that joins late: the per-rank rows come along."""
    import json
    s = RunStats(window)
    for rec in tp_run():
        s.add(rec)
    run, rows = json.loads(json.dumps(s.state()))
    again = RunStats.from_state(run, rows, window)
    assert again.ranks.rows() == s.ranks.rows() and again.ranks.totals() == s.ranks.totals()
    assert RunStats.from_state({**run, "ranks": {"ranks": "junk"}}, rows, window).ranks.rows() == []


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "tp.jsonl"
    w = TraceWriter(path, HEADER)
    for rec in tp_run():
        w.write(rec)
    w.close({"outcome": "completed"})
    return str(path)


def test_report_text_and_json(trace):
    rep = build_report(read_trace(trace))
    assert [r["rank"] for r in rep["ranks"]] == [0, 1] and rep["ranks"][1]["gpu"] == "NVIDIA H200"
    assert rep["rank_totals"]["skew_n"] == 3
    text = format_report(rep)
    assert "ranks (2, tensor parallel):" in text and "skew (slowest - fastest rank, per step): p50 0.500 ms" in text
    line1 = next(x for x in text.splitlines() if x.strip().startswith("1  NVIDIA H200"))
    assert line1.split()[-2:] == ["8", "16"]                   # captured 8, failed 16 (its own capture)
    assert all(len(x) <= 120 for x in text.splitlines())
    vllm = format_report({**rep, "header": {**rep["header"], "backend": "vllm"}})
    assert "vLLM's stats are per engine, not per rank" in vllm


def test_prometheus_gpu_and_rank_labels():
    m = Metrics()
    for rec in tp_run():
        m(rec)
    v = lambda name, **labels: m.registry.get_sample_value(name, labels)   # noqa: E731
    assert v("cgwatch_gpu_utilization_ratio", gpu="1") == 0.8 and v("cgwatch_gpu_utilization_ratio", gpu="0") == 0.6
    assert v("cgwatch_gpu_power_watts", gpu="1") == 310.0
    assert v("cgwatch_rank_steps_total", rank="1") == 3 and v("cgwatch_rank_steps_total", rank="0") == 4
    assert v("cgwatch_rank_step_seconds_total", rank="1") == pytest.approx(0.0145)
    assert v("cgwatch_rank_slowest_steps_total", rank="1") == 2
    assert v("cgwatch_rank_skew_steps_total") == 3 and v("cgwatch_rank_skew_seconds_total") == pytest.approx(0.0017)
    assert v("cgwatch_rank_graph_pool_bytes", rank="1") == 4 * MIB
    assert v("cgwatch_rank_bucket_capture_failed", rank="1", bucket="16") == 1
    assert v("cgwatch_rank_bucket_capture_failed", rank="0", bucket="16") == 0


def test_csv_has_a_column_a_rank(trace):
    out = io.StringIO()
    export_csv(trace, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[3]["rank0_ms"] == "4.0" and rows[3]["rank1_ms"] == "" and rows[0]["skew_ms"] == "0.5"
    assert "rank_ms" not in rows[0]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_tui_per_gpu_view_fits_80x24():
    from cgwatch.tui import CgwatchApp
    from cgwatch.tui.ranks import RankPanel
    from cgwatch.tui.widgets import Charts
    from test_tui import FakeSource

    src = FakeSource([{"type": "header", "format": "cgwatch-trace", "version": 1, **HEADER}, *tp_run()])
    app = CgwatchApp(src)
    async with app.run_test(size=(80, 24)) as pilot:
        src.play()
        app.flush()
        from cgwatch.tui.widgets import HeaderBar
        assert app.query_one(HeaderBar).run_text == "llama-8b · NVIDIA H200 ×2 · bfloat16"
        await pilot.press("G")
        await pilot.pause()
        panel = app.query_one(RankPanel)
        lines = panel.plain_lines()
        assert lines[0].split()[:2] == ["rank", "gpu"] and len(lines) == 4
        assert lines[2].split()[:2] == ["1", "NVIDIA"] and lines[2].rstrip().endswith("16")
        assert lines[3].startswith("skew (slowest - fastest rank) p50 0.500 ms")
        assert all(len(x) <= 78 for x in lines)
        assert not app.query_one(Charts).display and panel.region.height == len(lines) + 2
        assert panel.region.bottom <= 24
        await pilot.press("G")
        await pilot.pause()
        assert app.query_one(Charts).display and not panel.display and not app.has_class("-ranks")
