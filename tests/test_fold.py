"""fold.py (a compact trace a column batch at a time) gives what the record-by-record path gives: the same
report (rows, totals, percentiles, epochs, alerts, events), the same records skipped with the same reasons,
and the same RunStats state with the TUI's window."""

import glob
import os
import random

import pytest

from cgwatch import records as R
from cgwatch.aggregate import RunStats
from cgwatch.convert import convert
from cgwatch.fold import fold
from cgwatch.report import build_report
from cgwatch.trace import TraceWriter, open_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "sample_traces", "*.jsonl")))


def _same_report(jsonl: str, compact: str) -> None:
    a, b = build_report(open_trace(jsonl)), build_report(open_trace(compact))
    wa, wb = a.pop("warnings"), b.pop("warnings")
    a.pop("path"), b.pop("path")
    assert a == b
    # the same warnings, but a compact trace names a record by its row where JSON Lines gives the line
    assert [w.split(": ", 1)[0] for w in wa] == [w.split(": ", 1)[0] for w in wb]
    tr_a, tr_b = open_trace(jsonl), open_trace(compact)
    sc = tr_a.screened().screen
    _, scr = fold(tr_b)
    assert scr.skipped == sc.count
    assert [why for _, why in scr.screen.first] == [why for _, why in sc.first]
    assert [int(w.split()[1]) + 2 for w, _ in scr.screen.first] == [int(w.split()[1]) for w, _ in sc.first]


def _state(st: RunStats):
    run, rows = st.state()
    for r in rows:
        r["by_mode_phase"] = sorted(r["by_mode_phase"])
    return run, sorted(rows, key=lambda r: (r["epoch"] or 0, r["key"] or 0))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
@pytest.mark.parametrize("ext", [".parquet", ".arrows"])
def test_shipped_samples_same_report(path, ext, tmp_path):
    out = str(tmp_path / ("c" + ext))
    convert(path, out)
    _same_report(path, out)


def synthetic(seed: int, n: int = 3000, bad: bool = True, tp: bool = False) -> list[dict]:
    """Recaptures (epochs, a step in flight across one), eager reasons, vLLM phases and runtime modes, None
    gpu_ms and gap_us, samples and prefills (some with extra fields), and, with ``bad``, records the screen
    must skip: duplicates, t out of order, NaN, negatives, strings, a graph smaller than its rows."""
    rnd = random.Random(seed)
    sizes = [1, 2, 4, 8, 16, 32]
    out = [R.event(R.EV_CAPTURE, 0.01 * k, bucket=b, ok=True, capture_s=0.1, pool_bytes=1 << 20, nvml_bytes=None,
                   kernels=10, check=None, cause=None, hint=None, error=None) for k, b in enumerate(sizes)]
    out.append(R.event(R.EV_CAPTURE_DONE, 0.07, sizes=sizes, failed=[], pool_bytes=6 << 20, seconds=0.5,
                       pool="shared", pools=1))
    t = 0.1
    for i in range(n):
        t = round(t + rnd.uniform(0.001, 0.004), 6)
        if i in (n // 3, 2 * n // 3):
            sizes = sorted(set(sizes) | {rnd.choice([3, 12, 24, 48])})
            out.append(R.event(R.EV_RECAPTURE, round(t - 0.0015, 6), sizes=sizes, old=[], dropped=[]))
            out += [R.event(R.EV_CAPTURE, t, bucket=b, ok=b != 12, capture_s=0.1, pool_bytes=None, nvml_bytes=None,
                            kernels=None, check=None, cause=None if b != 12 else "oom", hint=None, error=None)
                    for b in sizes]
            out.append(R.event(R.EV_CAPTURE_DONE, t, sizes=[b for b in sizes if b != 12],
                               failed=[12] if 12 in sizes else [], pool_bytes=None, seconds=0.1, pool="shared",
                               pools=1))
        batch = rnd.randint(1, 40)
        rows = batch + (rnd.randint(0, 30) if rnd.random() < 0.2 else 0)
        target = next((s for s in sizes if s >= rows), None)
        reason = None
        if target is None:
            reason = R.REASON_OVER_MAX
        elif rnd.random() < 0.1:
            reason = rnd.choice([R.REASON_EAGER_MODE, R.REASON_PADDING, R.REASON_VLLM_NO_GRAPH, R.REASON_NO_CUDA, ""])
        bucket = None if reason is not None else target
        phase = rnd.choice(R.PHASES) if rows > batch else R.PHASE_DECODE
        gpu = None if rnd.random() < 0.2 else round(rnd.uniform(1, 20), 4)
        rec = R.step(i, t, batch, target, bucket, reason or None, round(rnd.uniform(10, 900), 2), gpu,
                     batch, rows=rows, phase=phase, prompt_tokens=rows - batch,
                     runtime_mode=rnd.choice([None, R.RUNTIME_PIECEWISE]) if bucket else None)
        if reason == "":
            rec["reason"] = ""
        if rnd.random() < 0.5 and gpu is not None:
            rec["gap_us"] = round(rnd.uniform(0, 90), 1)
        if rnd.random() < 0.05:        # an older trace's step: no rows / runtime_mode / phase / prompt_tokens
            for k in ("rows", "runtime_mode", "phase", "prompt_tokens", "gap_us"):
                rec.pop(k, None)
            rec["padded"] = 0 if bucket is None else bucket - batch
            rec["target"] = next((s for s in sizes if s >= batch), None)
        if tp:                          # tensor parallel: per-rank times (columns since table 2)
            ms = [None if gpu is None or rnd.random() < 0.05 else round(gpu + rnd.uniform(0, 0.2), 4)
                  for _ in range(2 if rnd.random() < 0.97 else rnd.choice([0, 1, 3]))]   # a few odd lengths
            skew = None if None in ms or not ms else round(max(ms) - min(ms), 4)
            if rnd.random() < 0.03:       # rank_ms before plan_us, or no plan_us: other key orders and sets
                rec.update(rank_ms=ms, skew_ms=skew, **({"plan_us": 9.5} if rnd.random() < 0.5 else {}))
            elif rnd.random() < 0.02:
                rec.update(plan_us=1.0, rank_ms=None, skew_ms=None)
            else:
                rec.update(plan_us=round(rnd.uniform(5, 50), 2), rank_ms=ms, skew_ms=skew)
        out.append(rec)
        if rnd.random() < 0.1:
            out.append({"type": "sample", "t": t, "gpu_util": rnd.choice([None, rnd.randint(0, 100)]),
                        "power_w": round(rnd.uniform(100, 400), 3), "gpu_busy": None})
            if tp:                      # per-GPU NVML numbers (measure/sampler.py); a few not in column form
                out[-1]["gpus"] = [{"gpu": g, "gpu_util": rnd.choice([None, rnd.randint(0, 100)]), "mem_util": 3,
                                    "mem_used_bytes": rnd.choice([None, rnd.randint(1, 1 << 40)]),
                                    "mem_total_bytes": 1 << 40, "power_w": rnd.choice([None, 300.5]),
                                    "sm_clock_mhz": 1980} for g in range(2)]
                if rnd.random() < 0.1:
                    out[-1]["gpus"][1] = {"gpu": 1, "gpu_util": 40}
        if rnd.random() < 0.1:
            p = {"type": "prefill", "t": t, "i": i, "requests": 2, "tokens": rnd.randint(1, 300), "host_ms": 1.5}
            if rnd.random() < 0.3:
                p["chunks"] = 2             # a vLLM field: this one goes as JSON
            out.append(p)
        if rnd.random() < 0.01:
            out.append(R.alert(t, "something", level=rnd.choice(["warn", "error"])))
            out.append(R.event(R.EV_MARK, t, text="m"))
    if bad:
        steps = [k for k, r in enumerate(out) if r["type"] == "step"]
        for k in rnd.sample(steps, 40):
            r = dict(out[k])
            what = rnd.randrange(11 if tp else 8)
            if what == 0:
                out.append(r)                                        # a duplicate, later
            elif what == 1:
                r["t"] = round(r["t"] - 0.5, 6)                      # back in time
            elif what == 2:
                r["host_us"] = float("nan")
            elif what == 3:
                r["gpu_ms"] = -1.0
            elif what == 4:
                r["batch"] = "3"
            elif what == 5 and r["bucket"] is not None:
                r["bucket"] = 1 if r.get("rows", r["batch"]) > 1 else r["bucket"]
                r["padded"] = r["bucket"] - r.get("rows", r["batch"])
            elif what == 6 and r["bucket"] is not None:
                r["padded"] = r["padded"] + 1
            elif what == 7:
                del r["tokens"]
            elif what == 8 and r.get("rank_ms"):
                r["rank_ms"] = [-1.0] + r["rank_ms"][1:]                 # a negative rank time
            elif what == 9:
                r["skew_ms"] = float("inf")
            elif what == 10:
                r["plan_us"] = -2.0
            out[k] = r if what else out[k]
        out.insert(len(out) // 2, {"type": "sample", "t": -1.0, "gpu_util": 5})
        out.insert(len(out) // 2, {"type": "prefill", "t": 3.0, "i": 5, "requests": -1, "tokens": 1, "host_ms": 1.0})
        out.insert(len(out) // 2, {"type": "weird", "t": "x"})
    return out


@pytest.mark.parametrize("seed,tp", [(1, False), (2, False), (3, True)])
@pytest.mark.parametrize("bad", [False, True])
def test_synthetic_same_report_and_state(seed, tp, bad, tmp_path):
    recs = synthetic(seed, bad=bad, tp=tp)
    jl = tmp_path / "s.jsonl"
    with TraceWriter(jl, {"model": {"name": "x"}, "gpu": "cpu"}) as w:
        for r in recs:
            w.write(r)
    for ext in (".parquet", ".arrows"):
        out = str(tmp_path / ("s" + ext))
        convert(str(jl), out)
        _same_report(str(jl), out)
        for window in (None, 512, 0):   # the report's, the TUI's and Prometheus' accumulators
            tr = open_trace(str(jl))
            st = RunStats(window)
            st.add(tr.header)
            scr = tr.screened()
            for r in scr.records + ([scr.end] if scr.end else []):
                st.add(r)
            vec, _ = fold(open_trace(out), window)
            assert _state(vec) == _state(st)
            assert vec.totals() == st.totals()
            assert [r.summary() for _, _, r in vec.epoch_rows()] == [r.summary() for _, _, r in st.epoch_rows()]


def test_long_rows_use_numpy_percentiles_with_the_same_values(tmp_path):
    """More than 4,096 values in a row: the percentiles are sorted by numpy, and equal the list's."""
    recs = [R.step(i, round(i * 0.001, 6), 8, 8, 8, None, round(50 + (i * 37 % 101) / 7, 2),
                   round(3 + (i * 13 % 97) / 1000, 4), 8) for i in range(9000)]
    jl = tmp_path / "l.jsonl"
    with TraceWriter(jl, {}) as w:
        for r in recs:
            w.write(r)
    convert(str(jl), str(tmp_path / "l.parquet"))
    _same_report(str(jl), str(tmp_path / "l.parquet"))


def test_recommend_same_answer_from_either_format(tmp_path, capsys):
    from cgwatch.cli import main
    src = os.path.join(ROOT, "sample_traces", "llama1b_poisson_h100.jsonl")
    pq = str(tmp_path / "p.parquet")
    convert(src, pq)
    outs = []
    for path in (src, pq):
        assert main(["recommend", path, "--costs", "sample:bench_llama1b_h100", "--memory-budget", "256",
                     "--max-buckets", "6", "--json"]) == 0
        out = capsys.readouterr().out.replace(pq, src)
        outs.append(out)
    assert outs[0] == outs[1]


def test_capture_sizes_too_large_to_count_by_index(tmp_path):
    """Targets past 2**20 (the accumulator groups them with np.unique instead of counting): the same report."""
    recs = []
    for i in range(400):
        big = i % 3 == 0
        rows = 3_000_000 if big else 8
        size = 4_194_304 if big else 8
        recs.append(R.step(i, round(0.01 * (i + 1), 6), rows, size, size if i % 5 else None,
                           None if i % 5 else R.REASON_PADDING, 50.0 + i % 7, 2.0 + i % 3, rows))
    jl = tmp_path / "big.jsonl"
    with TraceWriter(jl, {}) as w:
        for r in recs:
            w.write(r)
    pq = str(tmp_path / "big.parquet")
    convert(str(jl), pq)
    _same_report(str(jl), pq)
