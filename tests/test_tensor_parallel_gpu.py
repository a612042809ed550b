"""Tensor parallelism on GPUs (NCCL, all-reduces inside the graphs): run with ``pytest -m gpu`` on a
machine with 2+ GPUs (probes/tp_gpu.sh). The CPU tests (test_tensor_parallel.py) cover the logic."""

import json
import os
import signal
import time

import pytest
import torch

from test_tensor_parallel import _cfg, _cgwatch, _records, _run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                 reason="needs 2 CUDA GPUs")]

SIZES = (1, 2, 4, 8)


def _gpu_cfg(tp, **kw):
    return _cfg(tp, device="cuda", dtype="fp32", capture_sizes=SIZES, **kw)


def _events(recs, kind):
    return [r for r in recs if r["type"] == "event" and r["kind"] == kind]


def test_graphs_with_nccl_inside_equal_one_rank_fp32():
    _, t1, _ = _run(_gpu_cfg(1), 40)
    r2, t2, s2 = _run(_gpu_cfg(2), 40)
    assert t1 and t2 == t1
    caps = _events(r2, "capture")
    assert sorted(c["bucket"] for c in caps) == list(SIZES)
    for c in caps:   # every rank captured and checked its graph
        assert c["ok"] and [row["rank"] for row in c["ranks"]] == [0, 1]
        assert all(row["ok"] and row["check"]["tokens_equal"] for row in c["ranks"])
    done = _events(r2, "capture_done")[-1]
    assert len(done["rank_pool_bytes"]) == 2 and all(b is not None for b in done["rank_pool_bytes"])
    steps = [r for r in r2 if r["type"] == "step"]
    assert any(r["bucket"] is not None for r in steps)
    assert all(None not in r["rank_ms"] and r["skew_ms"] is not None for r in steps)
    samples = [r for r in r2 if r["type"] == "sample"]
    assert samples and [g["gpu"] for g in samples[-1]["gpus"]] == [0, 1]


def test_a_bucket_failing_on_rank_1_is_disabled_on_every_rank():
    recs, tokens, _ = _run(_gpu_cfg(2, fail_capture_on=((4, 1),)), 40)
    cap4 = next(c for c in _events(recs, "capture") if c["bucket"] == 4)
    assert not cap4["ok"] and cap4["failed_rank"] == 1
    assert cap4["ranks"][0]["ok"] and not cap4["ranks"][1]["ok"]
    alert = next(a for a in _events(recs, "alert") if a.get("bucket") == 4)
    assert "capture failed on rank 1" in alert["message"] and alert["rank"] == 1
    steps = [r for r in recs if r["type"] == "step"]
    assert all(r["bucket"] is None and r["reason"] == "bucket_failed" for r in steps if r["target"] == 4)
    assert any(r["bucket"] == 8 for r in steps) or any(r["bucket"] == 2 for r in steps)
    _, t1, _ = _run(_gpu_cfg(1), 40)
    assert tokens == t1


def test_toggle_and_recapture_on_every_rank():
    sched = ("5:eager", "10:graph", "15:recapture=1,2,8", "20:padding=0.2")
    _, t1, _ = _run(_gpu_cfg(1, schedule=sched), 40)
    recs, t2, _ = _run(_gpu_cfg(2, schedule=sched), 40)
    assert t2 == t1
    assert len(_events(recs, "release")) == 1 and len(_events(recs, "capture_done")) == 2
    assert sorted(c["bucket"] for c in _events(recs, "capture")[-3:]) == [1, 2, 8]


def test_the_bench_with_two_gpus_measures_graphs_all_reduce_and_cgwatchs_cost(capsys, tmp_path):
    from cgwatch.cli import main
    assert main(["bench", "--tp", "2", "--batch-sizes", "1,4", "--steps", "4", "--warmup", "1", "--tokens", "8",
                 "--max-seq", "64", "--prompt-len", "8", "--kernels", "plain", "--json", "--no-record"]) == 0
    res = json.loads(capsys.readouterr().out)
    for row in res["rows"]:
        g = row["graph"]
        assert g["served"] == ["graph"] and 0 < g["allreduce_pct"] < 100 and g["plan_us_p50"] > 0
        assert g["loop_ms"] > 0 and g["bare_ms"] > 0   # every rank replayed its graph alone (replay_bare)


def test_a_killed_rank_ends_a_gpu_run_within_seconds(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _cgwatch("run", "--headless", "--tp", "2", "--model", "llama-1b", "--max-concurrency", "16",
                 "--max-seq", "256", "--record", str(trace))
    try:
        deadline = time.monotonic() + 300
        while sum(r.get("type") == "step" for r in _records(trace)) < 50:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(_records(trace)[0]["ranks"][1]["pid"], signal.SIGKILL)
        t_kill = time.monotonic()
        out, err = p.communicate(timeout=120)
        took = time.monotonic() - t_kill
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1 and "rank 1 was killed by SIGKILL" in err, err
    assert took < 30, f"the run took {took:.1f} s to end"
    end = _records(trace)[-1]
    assert end["type"] == "end" and end["reason"] == "rank 1 was killed by SIGKILL"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 120e9,
                    reason="llama-70b N=2 needs two GPUs of 141 GB (H200)")
def test_llama_70b_on_two_h200(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _cgwatch("run", "--headless", "--tp", "2", "--model", "llama-70b", "--max-concurrency", "16",
                 "--max-seq", "512", "--cudagraph-capture-sizes", "1,4,8,16", "--steps", "100",
                 "--record", str(trace))
    out, err = p.communicate(timeout=480)
    assert p.returncode == 0, err
    recs = _records(trace)
    caps = _events(recs, "capture")
    assert caps and all(c["ok"] and all(r["check"]["tokens_equal"] for r in c["ranks"]) for c in caps)
    assert sum(r["type"] == "step" and r["bucket"] is not None for r in recs) > 50
    assert json.dumps(recs[-1]) and recs[-1]["outcome"] == "completed"
