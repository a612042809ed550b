"""``cgwatch bench`` on the CPU (eager only) and, under ``-m gpu``, eager vs graph vs compile."""

import json
import math

import pytest
import torch

from cgwatch import records as R
from cgwatch.bench import format_result
from cgwatch.cli import main
from cgwatch.report import build_report
from cgwatch.trace import read_trace

SMALL = ["--model", "tiny", "--steps", "3", "--warmup", "1", "--tokens", "3", "--max-seq", "48",
         "--prompt-len", "8", "--no-nvtx"]


def bench_json(capsys, tmp_path, *extra):
    trace = tmp_path / "bench.jsonl"
    assert main(["bench", *SMALL, "--record", str(trace), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out), trace


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (a GPU run measures graphs too)")
def test_cpu_bench_measures_eager_and_says_graphs_need_cuda(capsys, tmp_path):
    res, trace = bench_json(capsys, tmp_path, "--batch-sizes", "2,1", "--device", "cpu")
    assert [r["batch"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        e = r["eager"]
        assert e["n"] == 3 and e["served"] == ["eager"]
        assert 0 < e["p50_ms"] <= e["p99_ms"] and e["tokens_per_s"] > 0
        assert r["graph"] is None and r["floor_ms"] is None   # no CUDA: no graph, no bandwidth
        assert e["gap_us_p50"] is None                         # no CUDA events: no GPU gap
    assert res["trace"] == str(trace)
    # the trace is a normal one: 1 warm-up + 3 timed + 3 throughput steps per batch size
    tr = read_trace(trace)
    steps = [r for r in tr.records if r["type"] == R.STEP]
    assert [s["batch"] for s in steps] == [1] * 7 + [2] * 7
    assert tr.header["bench"]["batch_sizes"] == [2, 1] and tr.end["bench"]["rows"] == res["rows"]
    marks = [r["text"] for r in tr.records if r.get("kind") == R.EV_MARK]
    assert marks[0] == "bench b=1 eager: 3 timed steps"
    rep = build_report(tr)
    assert rep["totals"]["steps"] == 14
    text = format_result(res)
    assert "eager ms mean/p50/p99" in text and "n/a" in text
    assert "host time (CPU: ops are synchronous, so launch µs is the whole step too)" in text


@pytest.mark.parametrize("flags, needle", [
    (["--batch-sizes", "1,x"], "bad --batch-sizes '1,x'"),
    (["--batch-sizes", "0"], "sizes must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--max-seq", "10"], "--max-seq 10 is too short"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--device", "tpu"], "bad --device 'tpu': expected auto, cpu, cuda or cuda:N"),   # was an internal error
])
def test_bench_bad_input_is_one_line(capsys, tmp_path, flags, needle):
    code = main(["bench", *SMALL, "--no-record", "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert code != 0 and needle in err and err.count("\n") == 1


def test_a_crash_mid_sweep_keeps_the_trace_and_says_why(capsys, tmp_path, monkeypatch):
    """The first llama-1b sweep on the H100 died of a CUDA fault mid-run: one line, exit 1, and the
    trace keeps every step measured so far, an error alert and an end record saying 'error'."""
    from cgwatch.engine.bench import Bench
    real = Bench._measure_engine

    def measure(self, b, mode, saved):
        if b == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return real(self, b, mode, saved)

    monkeypatch.setattr(Bench, "_measure_engine", measure)
    trace = tmp_path / "bench.jsonl"
    code = main(["bench", *SMALL, "--batch-sizes", "1,2", "--device", "cpu", "--record", str(trace)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == ("cgwatch: bench stopped by RuntimeError: CUDA error: an illegal memory access was "
                       f"encountered (trace so far: {trace})")
    tr = read_trace(trace)
    assert tr.end["outcome"] == "error" and tr.end["bench"] is None
    assert [s["batch"] for s in tr.records if s["type"] == R.STEP] == [1] * 7
    alerts = [r for r in tr.records if r.get("kind") == R.EV_ALERT]
    assert alerts[-1]["level"] == "error" and "illegal memory access" in alerts[-1]["message"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_graph_and_compile_columns(capsys, tmp_path):
    res, trace = bench_json(capsys, tmp_path, "--batch-sizes", "1,4", "--with-compile")
    for r in res["rows"]:
        g, c = r["graph"], r["compile"]
        assert g["served"] == ["graph"] and g["kernels"] > 0 and g["capture_s"] > 0
        assert r["eager"]["served"] == ["eager"] and r["eager"]["kernels"] > 0
        assert "error" not in c and c["compile_s"] > 0 and c["n"] == 3
        assert r["floor_ms"] > 0
        # 3 timed steps after a warm-up step: the 3 are back to back, each has a GPU gap
        assert g["gap_us_p50"] is not None and g["gap_us_p50"] >= 0 and r["eager"]["gap_us_p50"] >= 0
        # cgwatch's own cost per graph step: the loop and the bare replays both measured (no bound: a benchmark)
        assert g["loop_ms"] > 0 and g["bare_ms"] > 0 and math.isfinite(g["overhead_pct"])
        assert "overhead_pct" not in r["eager"]
    assert res["bandwidth_bytes_per_s"] > 1e11
    rep = build_report(read_trace(trace))
    assert {b["bucket"] for b in rep["buckets"] if b["graph_steps"]} == {1, 4}


def test_bench_writes_no_file_unless_asked(capsys, tmp_path, monkeypatch):
    """Recording is opt-in (--record PATH): a plain bench leaves the current directory as it was."""
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *SMALL, "--batch-sizes", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert "no trace written (--record PATH keeps one" in out
    assert main(["bench", *SMALL, "--batch-sizes", "1", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trace"] is None and list(tmp_path.iterdir()) == []


def test_bench_percentiles_are_the_reports_linear_ones():
    """The bench's p50 / p99 are linearly interpolated, as every other percentile of cgwatch (aggregate.percentile,
    numpy's default): of 0..9 ms the p99 is 8.91 ms, not the nearest value 9 (a bench and a report of the same
    steps give one p99)."""
    import numpy as np
    from cgwatch.engine.bench_base import latency_stats
    v = [float(x) for x in (7, 0, 3, 9, 1, 8, 2, 6, 4, 5)]
    s = latency_stats(v)
    assert s["p99_ms"] == pytest.approx(8.91) == pytest.approx(float(np.percentile(v, 99)))
    assert s["p50_ms"] == pytest.approx(4.5) and s["n"] == 10 and s["mean_ms"] == pytest.approx(4.5)
