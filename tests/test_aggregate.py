"""cgwatch/aggregate.py: every definition on small hand-computed traces (a vLLM-like one with FULL, PIECEWISE
and eager forwards, mixed phases and rows != batch; an old-schema one), and the report, the TUI's state and
Prometheus giving the same numbers on the same records."""

import pytest

from cgwatch import records as R
from cgwatch.aggregate import RunStats
from cgwatch.metrics import Metrics
from cgwatch.report import build_report, format_report
from cgwatch.samples import sample_path
from cgwatch.trace import Trace, read_trace
from cgwatch.tui.state import ViewState
from cgwatch.tui.widgets import columns, row_cells

SIZES = [8, 16, 32]
HEADER = {"type": "header", "format": "cgwatch-trace", "version": 1, "model": {"name": "llama-1b"},
          "gpu": "NVIDIA H100", "torch": "2.13", "backend": "vllm", "config": {"capture_sizes": SIZES, "mode": "graph"}}


def fwd(i, batch, rows, target, bucket, mode, phase, prompt, reason, gpu_ms, tokens, gap=None):
    rec = R.step(i, i * 0.01, batch, target, bucket, reason, 1000.0 + 100 * i, gpu_ms, tokens, rows=rows,
                 runtime_mode=mode, phase=phase, prompt_tokens=prompt)
    rec["gap_us"] = gap
    return rec


def vllm_like() -> list[dict]:
    return [
        R.event(R.EV_CAPTURE_DONE, 0.0, sizes=SIZES, failed=[], pool_bytes=96 * 2 ** 20, seconds=3.0, pool="shared"),
        fwd(0, 6, 6, 8, 8, "FULL", "decode", 0, None, 2.0, 6),
        fwd(1, 4, 14, 16, 16, "PIECEWISE", "mixed", 10, None, 5.0, 4),        # a prefill chunk rides along
        fwd(2, 5, 15, 16, 16, "FULL", "decode", 0, None, 3.0, 12, gap=10.0),  # speculative: 3 rows a request
        fwd(3, 2, 30, 32, 32, "PIECEWISE", "prefill", 30, None, 8.0, 2),
        fwd(4, 3, 3, 8, None, "NONE", "decode", 0, R.REASON_VLLM_NO_GRAPH, 4.0, 3, gap=20.0),
        fwd(5, 3, 40, None, None, "NONE", "mixed", 37, R.REASON_OVER_MAX, 9.0, 3),
        fwd(6, 6, 6, 8, None, "NONE", "decode", 0, R.REASON_EAGER_MODE, 6.0, 6),   # the user chose eager
        fwd(7, 7, 7, 8, 8, "FULL", "decode", 0, None, 2.5, 7, gap=5.0),
        {"type": "prefill", "t": 0.075, "i": 8, "requests": 1, "tokens": 12, "host_ms": 1.0},
        {"type": "sample", "t": 0.05, "gpu_util": 40}, {"type": "sample", "t": 0.06, "gpu_util": None},
        R.event(R.EV_MODE, 0.055, mode="eager"), R.alert(0.06, "careful"),
    ]


def _trace(recs):
    return Trace(header=HEADER, records=recs, end={"type": "end", "t": 1}, truncated_at=None, path="v.jsonl")


def _stats(recs, window=None) -> RunStats:
    s = RunStats(window)
    for rec in recs:
        s.add(rec)
    return s


# ---- the definitions, by hand ----------------------------------------------------------------------------

def test_rows_by_hand():
    s = _stats(vllm_like())
    assert s.keys() == [8, 16, 32, None]
    r8, r16, r32, over = (s.buckets[k].summary() for k in s.keys())
    # bucket 8: two FULL hits (0, 7), one vLLM eager miss (4), one eager-mode forward (6, not a miss)
    assert (r8["forwards"], r8["graph_steps"], r8["full"], r8["piecewise"], r8["eager"]) == (4, 2, 2, 0, 2)
    assert r8["misses"] == {"eager_mode": 1, "vllm_no_graph": 1} and r8["graph_mode"] == 3
    assert r8["hit_pct"] == pytest.approx(200 / 3) and r8["graph_share_pct"] == 50.0
    assert (r8["full_pct"], r8["piecewise_pct"]) == (50.0, 0.0)
    assert (r8["requests"], r8["rows"], r8["padded"], r8["graph_rows"]) == (22, 22, 3, 16)
    assert r8["padding_waste_pct"] == pytest.approx(100 * 3 / 16)
    assert (r8["graph_p50_ms"], r8["graph_p99_ms"], r8["graph_n"]) == (2.25, pytest.approx(2.495), 2)
    assert (r8["eager_p50_ms"], r8["eager_p99_ms"], r8["eager_n"]) == (5.0, pytest.approx(5.98), 2)
    assert (r8["gap_us_graph_p50"], r8["gap_us_graph_n"], r8["gap_us_eager_p50"], r8["gap_us_eager_n"]) == (5.0, 1, 20.0, 1)
    assert (r8["host_us_graph_p50"], r8["host_us_eager_p50"]) == (1350.0, 1500.0)   # (1000+1700)/2, (1400+1600)/2
    assert (r8["decode"], r8["mixed"], r8["prefill"], r8["non_decode"]) == (4, 0, 0, 0)
    # bucket 16: one PIECEWISE mixed forward and one FULL speculative decode, both hits; rows > requests
    assert (r16["forwards"], r16["full"], r16["piecewise"], r16["eager"], r16["hit_pct"]) == (2, 1, 1, 0, 100.0)
    assert (r16["full_pct"], r16["piecewise_pct"], r16["graph_share_pct"]) == (50.0, 50.0, 100.0)
    assert (r16["requests"], r16["rows"], r16["prompt_tokens"], r16["tokens"]) == (9, 29, 10, 16)
    assert (r16["padded"], r16["graph_rows"], r16["padding_waste_pct"]) == (3, 32, pytest.approx(9.375))
    assert (r16["decode"], r16["mixed"], r16["non_decode"]) == (1, 1, 1)
    assert (r16["graph_p50_ms"], r16["graph_p99_ms"]) == (4.0, pytest.approx(4.98))
    assert r16["by_mode_phase"] == {"FULL/decode": 1, "PIECEWISE/mixed": 1}
    # bucket 32: a PIECEWISE prefill-only forward
    assert (r32["piecewise"], r32["prefill"], r32["rows"], r32["padding_waste_pct"]) == (1, 1, 30, 6.25)
    # over max: an eager mixed forward, a graph-mode miss
    assert (over["forwards"], over["eager"], over["hit_pct"], over["graph_share_pct"]) == (1, 1, 0.0, 0.0)
    assert (over["misses"], over["mixed"], over["rows"], over["requests"]) == ({"over_max": 1}, 1, 40, 3)
    assert over["padding_waste_pct"] is None and over["graph_p50_ms"] is None and over["graph_n"] == 0


def test_totals_by_hand():
    t = _stats(vllm_like()).totals()
    assert (t["forwards"], t["graph_steps"], t["full"], t["piecewise"], t["eager"]) == (8, 5, 3, 2, 3)
    assert t["graph_mode"] == 7 and t["hit_pct"] == pytest.approx(500 / 7) == t["graph_hit_rate_pct"]
    assert (t["graph_share_pct"], t["full_pct"], t["piecewise_pct"]) == (62.5, 37.5, 25.0)
    assert (t["decode"], t["mixed"], t["prefill"], t["non_decode"]) == (5, 2, 1, 3)
    assert (t["requests"], t["rows"], t["prompt_tokens"], t["tokens"]) == (36, 121, 77, 43)
    assert (t["padded"], t["graph_rows"], t["padding_waste_pct"]) == (8, 80, 10.0)
    assert t["misses"] == {"eager_mode": 1, "over_max": 1, "vllm_no_graph": 1}
    assert t["duration_s"] == pytest.approx(0.075)   # the run's start (t 0) to its latest record (the prefill)
    assert t["gpu_busy_pct"] == pytest.approx(100 * 39.5 / 75)
    assert t["tokens_per_s"] == pytest.approx(43 / 0.075) and t["epochs"] == 1
    assert t["gpu_idle_graph_pct"] == pytest.approx(100 * 15 / (15 + 5500))   # forwards 2 and 7
    assert t["gpu_idle_eager_pct"] == pytest.approx(100 * 20 / 4020)          # forward 4
    assert (t["prefills"], t["prefill_tokens"], t["nvml_util_pct"], t["mode_switches"]) == (1, 12, 40.0, 1)
    assert t["alerts"] == {"warn": 1} and t["graph_pool_mib"] == 96.0


def test_every_graph_mode_step_served_is_100_percent_hit():
    """The reported bug: the H100 sample ran 300 steps in eager mode by choice and every graph-mode step on a
    graph; that is a 100% hit rate and a 92.5% graph share (it showed 92.5% hit)."""
    t = build_report(read_trace(sample_path("llama1b_poisson_h100.jsonl")))["totals"]
    assert (t["steps"], t["graph_steps"], t["misses"]) == (4000, 3700, {"eager_mode": 300})
    assert t["hit_pct"] == 100.0 and t["graph_share_pct"] == 92.5
    assert (t["full"], t["piecewise"], t["eager"], t["rows"], t["requests"]) == (3700, 0, 300, t["requests"], t["rows"])


def test_old_schema_records_count_with_their_old_meaning():
    new = [R.step(0, 0.0, 3, 4, 4, None, 40.0, 2.0, 3), R.step(1, 0.01, 9, None, None, R.REASON_OVER_MAX, 700.0, 14.0, 9)]
    old = []
    for rec in new:
        rec = dict(rec)
        for k in ("rows", "runtime_mode", "phase", "prompt_tokens"):
            del rec[k]
        old.append(rec)
    a, b = _stats(new), _stats(old)
    assert a.totals() == b.totals()
    assert [a.buckets[k].summary() for k in a.keys()] == [b.buckets[k].summary() for k in b.keys()]
    t = b.totals()
    assert (t["full"], t["piecewise"], t["eager"], t["decode"], t["rows"], t["requests"]) == (1, 0, 1, 2, 12, 12)
    assert (t["padded"], t["graph_rows"]) == (1, 4)


def test_a_bad_step_counts_nothing():
    s = RunStats()
    s.add(R.step(0, 0.0, 3, 4, 4, None, 40.0, 2.0, 3))
    before = (s.totals(), s.buckets[4].summary())
    for bad in (R.step(1, 0.1, 3, 4, 4, None, 40.0, 2.0, 3) | {"rows": "x"},
                {k: v for k, v in R.step(1, 0.1, 3, 4, 4, None, 40.0, 2.0, 3).items() if k != "target"}):
        with pytest.raises((ValueError, KeyError)):
            s.add(bad)
    assert (s.totals(), s.buckets[4].summary()) == before


def test_windowed_percentiles_keep_the_last_values_and_all_counts():
    s = RunStats(window=3)
    for i, ms in enumerate((100.0, 1.0, 2.0, 3.0)):
        s.add(R.step(i, i * 0.01, 4, 4, 4, None, 10.0, ms, 4))
    row = s.buckets[4].summary()
    assert (row["forwards"], row["graph_n"], row["graph_p50_ms"], row["graph_p99_ms"]) == (4, 3, 2.0, pytest.approx(2.98))
    none = RunStats(window=0)
    none.add(R.step(0, 0.0, 4, 4, 4, None, 10.0, 1.0, 4))
    assert none.buckets[4].summary()["graph_n"] == 0 and none.totals()["forwards"] == 1


# ---- the three views agree ------------------------------------------------------------------------------

def _prometheus(recs) -> dict:
    m = Metrics()
    for rec in recs:
        m(rec)
    out = {}
    for fam in m.registry.collect():
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def _prom_row(p: dict, bucket: str) -> dict:
    def total(name, **labels):
        return sum(v for (n, lab), v in p.items() if n == name and dict(lab).get("bucket") == bucket
                   and all(dict(lab).get(k) == x for k, x in labels.items()))
    forwards = total("cgwatch_bucket_forwards_total")
    graph = total("cgwatch_bucket_steps_total")
    eager_mode = total("cgwatch_bucket_misses_total", reason="eager_mode")
    return {"forwards": forwards, "graph_steps": graph,
            "full": total("cgwatch_bucket_forwards_total", runtime_mode="FULL"),
            "piecewise": total("cgwatch_bucket_forwards_total", runtime_mode="PIECEWISE"),
            "eager": total("cgwatch_bucket_forwards_total", runtime_mode="NONE"),
            "decode": total("cgwatch_bucket_forwards_total", phase="decode"),
            "mixed": total("cgwatch_bucket_forwards_total", phase="mixed"),
            "requests": total("cgwatch_requests_total"), "rows": total("cgwatch_rows_total"),
            "padded": total("cgwatch_padding_rows_total"), "graph_rows": total("cgwatch_graph_rows_total"),
            "hit_pct": 100 * graph / (forwards - eager_mode) if forwards - eager_mode else None,
            "graph_share_pct": 100 * graph / forwards if forwards else None}


@pytest.mark.parametrize("which", ["vllm_like", "h100_sample"])
def test_report_tui_and_prometheus_give_the_same_numbers(which):
    """The report's rows per size list (epoch), the TUI's rows of the list in force (the report's last epoch)
    and Prometheus' per-bucket counters over the run (the report's rows of that bucket summed over the epochs)."""
    if which == "vllm_like":
        trace = _trace(vllm_like())
    else:
        trace = read_trace(sample_path("llama1b_poisson_h100.jsonl"))   # a recapture: two size lists
    rep = build_report(trace)
    state = ViewState()
    state.fold(dict(trace.header, type="header"))
    for rec in trace.records + [trace.end]:
        state.fold(rec)
    prom = _prometheus(trace.records)
    last = rep["epochs"][-1]["epoch"]
    assert len(rep["epochs"]) == (1 if which == "vllm_like" else 2)
    tui = {r["label"]: r for r in state.bucket_rows()}
    assert list(tui) == [b["label"] for b in rep["buckets"] if b["epoch"] == last]
    keys = ("forwards", "graph_steps", "full", "piecewise", "eager", "decode", "mixed", "requests", "rows",
            "padded", "graph_rows", "hit_pct", "graph_share_pct")
    for b in (b for b in rep["buckets"] if b["epoch"] == last):
        t = tui[b["label"]]
        for k in keys:
            assert b[k] == t[k] if b[k] is not None else t[k] is None, (b["label"], k)
        for k in ("misses", "padding_waste_pct", "full_pct", "piecewise_pct", "tokens", "prefill", "rows_min"):
            assert b[k] == t[k], (b["label"], k)
        if b["graph_n"] <= 512 and b["eager_n"] <= 512:   # within the TUI's window: the same percentiles
            for k in ("graph_p50_ms", "graph_p99_ms", "eager_p50_ms", "eager_p99_ms", "gap_us_graph_p50",
                      "graph_n", "eager_n"):
                assert b[k] == t[k], (b["label"], k)
    for bucket in {b["bucket"] for b in rep["buckets"]}:
        mine = [b for b in rep["buckets"] if b["bucket"] == bucket]
        p = _prom_row(prom, "over_max" if bucket is None else str(bucket))
        for k in keys[:-2]:
            assert sum(b[k] for b in mine) == p[k], (bucket, k)
    rt, tt = rep["totals"], state.totals()
    for k in (*keys, "misses", "tokens", "padding_waste_pct", "graph_pool_mib", "gpu_idle_graph_pct",
              "gpu_idle_eager_pct", "prefills", "nvml_util_pct", "duration_s", "tokens_per_s", "epochs"):
        assert rt[k] == tt[k], k
    graph = prom[("cgwatch_steps_total", (("mode", "graph"),))]
    eager = prom[("cgwatch_steps_total", (("mode", "eager"),))]
    eager_mode = sum(v for (n, lab), v in prom.items()
                     if n == "cgwatch_bucket_misses_total" and dict(lab)["reason"] == "eager_mode")
    assert (graph, graph + eager) == (rt["graph_steps"], rt["forwards"])
    assert 100 * graph / (graph + eager - eager_mode) == pytest.approx(rt["hit_pct"])
    assert 100 * graph / (graph + eager) == pytest.approx(rt["graph_share_pct"])
    assert prom[("cgwatch_tokens_total", ())] == rt["tokens"]


# ---- epochs: one row per bucket and size list -------------------------------------------------------------

def test_a_recapture_splits_the_rows_by_size_list():
    """Row 32 before a recapture from 8,16,32 to 8,16,24,32 serves rows 17-32, after it 25-32: two rows, never
    one that mixes them. A step still in flight when the recapture came (written after the event, started
    before it) counts under the old list; the new round's capture events under the new one."""
    old, new = [8, 16, 32], [8, 16, 24, 32]
    cap = lambda t, b: R.event(R.EV_CAPTURE, t, bucket=b, ok=True, capture_s=0.1, pool_bytes=0, nvml_bytes=None,  # noqa: E731
                                kernels=9, check=None, cause=None, hint=None, error=None)
    recs = [cap(0.1, 32), R.event(R.EV_CAPTURE_DONE, 0.2, sizes=old, failed=[], pool_bytes=1, seconds=1.0),
            R.step(0, 1.0, 18, 32, 32, None, 50.0, 4.0, 18), R.step(1, 1.01, 30, 32, 32, None, 50.0, 4.0, 30),
            R.step(2, 1.02, 40, None, None, R.REASON_OVER_MAX, 500.0, 9.0, 40),
            R.event(R.EV_RECAPTURE, 1.05, sizes=new, old=old, dropped=[]),
            R.step(3, 1.04, 20, 32, 32, None, 50.0, 4.0, 20),      # in flight: ran under the old list
            cap(1.06, 32), cap(1.07, 24), R.event(R.EV_CAPTURE_DONE, 1.08, sizes=new, failed=[], pool_bytes=2, seconds=1.0),
            R.step(4, 1.1, 20, 24, 24, None, 50.0, 3.0, 20), R.step(5, 1.11, 28, 32, 32, None, 50.0, 4.5, 28)]
    s = _stats(recs)
    assert [(e.n, e.t, e.sizes, e.forwards) for e in s.epochs] == [(1, None, old, 4), (2, 1.05, new, 2)]
    rows = {(e.n, k): r.summary() for e, k, r in s.epoch_rows()}
    assert list(rows) == [(1, 32), (1, None), (2, 24), (2, 32)]
    assert (rows[1, 32]["forwards"], rows[1, 32]["rows_min"], rows[1, 32]["rows_max"]) == (3, 18, 30)
    assert (rows[2, 32]["forwards"], rows[2, 32]["rows_min"], rows[2, 32]["rows_max"]) == (1, 28, 28)
    assert rows[1, 32]["padded"] == 14 + 2 + 12 and rows[2, 32]["padded"] == 4
    assert rows[2, 24]["graph_p50_ms"] == 3.0 and rows[1, 32]["graph_p50_ms"] == 4.0
    assert s.epochs[1].rows[32].capture["t"] == 1.06 and s.epochs[0].rows[32].capture["t"] == 0.1
    assert s.epochs[0].largest_size() == 32 and s.totals()["epochs"] == 2
    # the run-long rows (Prometheus' counters) are the sums over the size lists
    run32 = s.buckets[32].summary()
    assert (run32["forwards"], run32["padded"], run32["rows_min"], run32["rows_max"]) == (4, 32, 18, 30)
    # the report groups the rows under their size list; the TUI shows the list in force
    rep = build_report(_trace(recs))
    assert [(b["epoch"], b["label"], b["steps"]) for b in rep["buckets"]] == [(1, "32", 3), (1, ">32", 1),
                                                                             (2, "24", 1), (2, "32", 1)]
    assert [(e["epoch"], e["t"], e["sizes"], e["forwards"]) for e in rep["epochs"]] == [(1, None, old, 4),
                                                                                     (2, 1.05, new, 2)]
    text = format_report(rep)
    assert "size list 1 (from the start, 4 steps): 8,16,32" in text
    assert "size list 2 (from 1.050 s, 2 steps): 8,16,24,32" in text and "  >32 (list 1): over_max 1" in text
    state = ViewState()
    state.fold(dict(HEADER))
    for rec in recs:
        state.fold(rec)
    assert [(r["label"], r["steps"]) for r in state.bucket_rows()] == [("24", 1), ("32", 1)]


def _recapture_run() -> list[dict]:
    old, new = [8, 16, 32], [8, 16, 24, 32]
    cap = lambda t, b: R.event(R.EV_CAPTURE, t, bucket=b, ok=True, capture_s=0.1, pool_bytes=0, nvml_bytes=None,  # noqa: E731
                                kernels=9, check=None, cause=None, hint=None, error=None)
    return [cap(0.1, 32), R.event(R.EV_CAPTURE_DONE, 0.2, sizes=old, failed=[], pool_bytes=1, seconds=1.0),
            R.step(0, 1.0, 18, 32, 32, None, 50.0, 4.0, 18), R.step(1, 1.01, 30, 32, 32, None, 50.0, 4.0, 30),
            R.step(2, 1.02, 40, None, None, R.REASON_OVER_MAX, 500.0, 9.0, 40),
            {"type": "sample", "t": 1.03, "gpu_util": 40}, R.event(R.EV_ALERT, 1.03, level="warn", message="x"),
            R.event(R.EV_RECAPTURE, 1.05, sizes=new, old=old, dropped=[]),
            R.step(3, 1.04, 20, 32, 32, None, 50.0, 4.0, 20),
            cap(1.06, 32), cap(1.07, 24), R.event(R.EV_CAPTURE_DONE, 1.08, sizes=new, failed=[], pool_bytes=2, seconds=1.0),
            R.step(4, 1.1, 20, 24, 24, None, 50.0, 3.0, 20), R.step(5, 1.11, 28, 32, 32, None, 50.0, 4.5, 28),
            {"type": "prefill", "t": 1.12, "requests": 1, "tokens": 9, "host_ms": 1.0},
            R.step(6, 1.2, 8, 8, 8, None, 40.0, 2.0, 8)]


@pytest.mark.parametrize("cut", range(len(_recapture_run()) + 1))
def test_a_late_joiner_rebuilt_from_state_goes_on_like_the_original(cut):
    """What the daemon sends a late client (``state()``, through JSON) rebuilds an accumulator that, fed
    the rest of the run, gives every number the original gives: totals, epochs and each row, a recapture
    anywhere before or after the cut."""
    import json
    recs = _recapture_run()
    a = RunStats(window=512)
    for rec in recs[:cut]:
        a.add(rec)
    run, rows = json.loads(json.dumps(a.state()))
    b = RunStats.from_state(run, window=512)
    for row in rows:
        b.add_row_state(row)
    for rec in recs[cut:]:
        a.add(rec)
        b.add(rec)
    assert b.totals() == a.totals()
    assert [e.summary() for e in b.epochs] == [e.summary() for e in a.epochs]
    assert ([(e.n, k, r.summary()) for e, k, r in b.epoch_rows()]
            == [(e.n, k, r.summary()) for e, k, r in a.epoch_rows()])
    assert {k: r.summary() for k, r in b.buckets.items()} == {k: r.summary() for k, r in a.buckets.items()}
    assert b.largest_size() == a.largest_size() and b.epoch.largest_size() == a.epoch.largest_size()


def test_the_same_list_again_is_the_same_epoch_and_a_list_without_steps_is_replaced():
    s = _stats([R.event(R.EV_CAPTURE_DONE, 0.1, sizes=[4, 8], failed=[], pool_bytes=1, seconds=1.0),
                R.event(R.EV_RECAPTURE, 0.2, sizes=[4, 8, 16], old=[4, 8], dropped=[]),   # no steps yet: replaced
                R.step(0, 1.0, 3, 4, 4, None, 10.0, 1.0, 3),
                R.event(R.EV_RECAPTURE, 1.1, sizes=[16, 8, 4], old=[4, 8, 16], dropped=[]),   # the same list
                R.event(R.EV_CAPTURE_DONE, 1.2, sizes=[4, 16], failed=[8], pool_bytes=1, seconds=1.0),
                R.step(1, 1.3, 3, 4, 4, None, 10.0, 1.0, 3)])
    assert [(e.n, e.sizes, e.forwards) for e in s.epochs] == [(1, [4, 8, 16], 2)]


def test_a_list_replaced_before_any_step_drops_the_buckets_it_no_longer_has():
    """A recapture from 4,8,16 to 4 before the first step (or a window of the run that opens after it: its
    opening events fold into one epoch without forwards): the list in force is 4, so no row of 8 or 16 (with
    the old round's capture, status ok) and the over-max row is ">4", as the whole run's epoch says."""
    cap = lambda t, b: R.event(R.EV_CAPTURE, t, bucket=b, ok=True, capture_s=0.1, pool_bytes=b, nvml_bytes=None,  # noqa: E731
                                kernels=9, check=None, cause=None, hint=None, error=None)
    recs = [cap(0.1, 16), cap(0.11, 8), cap(0.12, 4),
            R.event(R.EV_CAPTURE_DONE, 0.2, sizes=[4, 8, 16], failed=[], pool_bytes=1, seconds=1.0),
            R.event(R.EV_RECAPTURE, 0.3, sizes=[4], old=[4, 8, 16], dropped=[]), cap(0.31, 4),
            R.event(R.EV_CAPTURE_DONE, 0.32, sizes=[4], failed=[], pool_bytes=1, seconds=1.0),
            R.step(0, 1.0, 3, 4, 4, None, 10.0, 1.0, 3), R.step(1, 1.1, 6, None, None, R.REASON_OVER_MAX, 10.0, 1.0, 6)]
    s = _stats(recs)
    assert [(e.n, e.sizes, e.forwards) for e in s.epochs] == [(1, [4], 2)]
    assert [k for _, k, _ in s.epoch_rows()] == [4, None] and s.epoch.largest_size() == 4
    assert s.epochs[0].rows[4].capture["t"] == 0.31
    rep = build_report(_trace(recs))
    assert [(b["label"], b["steps"], b["status"]) for b in rep["buckets"]] == [("4", 1, "ok"), (">4", 1, "-")]


# ---- what the views show ----------------------------------------------------------------------------------

def test_report_text_shows_the_vllm_columns_only_when_they_carry_information():
    text = format_report(build_report(_trace(vllm_like())))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    head = next(i for i, line in enumerate(lines) if line.startswith("bucket"))
    assert "full/pw" in lines[head - 1] and "mixed" in lines[head]
    row16 = next(line for line in lines if line.split()[:1] == ["16"])
    assert row16.split()[1:4] == ["2", "1/1/0", "1"]                    # steps, full/pw/eager, mixed
    assert "kern" not in lines[head]                                     # no capture events: n/a columns dropped
    assert "  steps            8 (5 by a graph: hit 71.4% of the graph-mode steps, graph share 62.5% of all)" in text
    assert "  runtime mode     FULL 3 (37.5%), PIECEWISE 2 (25.0%), eager 3" in text
    assert "  phase            decode 5, mixed 2, prefill 1" in text
    assert "  rows             121 computed for 36 requests (77 prompt tokens)" in text
    plain = format_report(build_report(read_trace(sample_path("llama1b_poisson_h100.jsonl"))))
    assert "full/pw" not in plain and "mixed" not in plain and "runtime mode" not in plain and "  rows  " not in plain


def test_tui_table_shows_full_pw_and_mixed_only_when_present():
    state = ViewState()
    state.fold(dict(HEADER))
    for rec in vllm_like():
        state.fold(rec)
    assert state.stats.shows_runtime_modes() and state.stats.shows_phases()
    cols = columns(True, True)
    cells = {r["label"]: row_cells(r, True, True) for r in state.bucket_rows()}
    assert cols[2] == ("hits", "full/pw") and cols[3] == ("", "mixed")
    assert cells["16"][:5] == ("16", "2", "1/1", "1", "100.0") and cells[">32"][3] == "1"
    assert columns() == columns(False, False) and len(row_cells(state.bucket_rows()[0])) == len(columns())
