"""Real capture and replay on a CUDA GPU (`pytest -m gpu`; skipped without one)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cgwatch import records as R
from cgwatch.engine.control import parse_scheduled
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.workload import WorkloadSpec

pytestmark = pytest.mark.gpu
DEFAULT = [1, 2, 4, 8, 16, 32, 64]


def engine(model="tiny", arrival="fixed:8", steps_cfg=None, max_seq=256, concurrency=64, **kw):
    recs = []
    wl = WorkloadSpec(arrival=arrival, prompt_len="uniform:8:32", output_len="uniform:16:64",
                      max_concurrency=concurrency, max_seq=max_seq, seed=1)
    eng = Engine(EngineConfig(model=model, max_seq=max_seq, workload=wl, sample_interval_s=0.05, **kw), recs.append)
    return eng, recs


def events(recs, kind):
    return [r for r in recs if r["type"] == R.EVENT and r["kind"] == kind]


def steps(recs):
    return sorted((r for r in recs if r["type"] == R.STEP), key=lambda r: r["i"])


@pytest.mark.parametrize("model", ["tiny", "llama-1b"])
def test_every_default_bucket_captures_and_matches_eager(model):
    eng, recs = engine(model, max_seq=1024 if model == "tiny" else 512)
    eng.run(20)
    eng.close()
    caps = events(recs, R.EV_CAPTURE)
    assert [c["bucket"] for c in caps] == DEFAULT[::-1]          # largest first
    for c in caps:
        assert c["ok"], c
        assert c["check"]["tokens_equal"], c
        assert c["check"]["rel_err"] < 1e-2, c
        assert c["kernels"] is None or c["kernels"] > 50, c
    done = events(recs, R.EV_CAPTURE_DONE)[0]
    assert done["sizes"] == DEFAULT and done["failed"] == [] and done["pool_bytes"] > 0
    assert caps[0]["pool_bytes"] > 0 and caps[0]["nvml_bytes"] > 0
    st = steps(recs)
    assert len(st) == 20 and all(s["bucket"] == 8 and s["gpu_ms"] > 0 for s in st)
    assert not events(recs, R.EV_ALERT)


def test_shared_pool_is_smaller_than_private_pools():
    totals = {}
    for pool in ("private", "shared"):
        eng, recs = engine("tiny", pool=pool)
        eng.run(2)
        caps = events(recs, R.EV_CAPTURE)
        if pool == "private":
            assert all(c["pool_bytes"] > 0 for c in caps)      # every graph has memory of its own
        totals[pool] = events(recs, R.EV_CAPTURE_DONE)[0]["pool_bytes"]
        eng.close()
        del eng
        torch.cuda.empty_cache()
    assert 0 < totals["shared"] < totals["private"], totals


def run_tokens(mode, arrival="fixed:8", n=40):
    eng, recs = engine("tiny", arrival=arrival, mode=mode)
    trail = []
    with torch.inference_mode():
        eng.start()
        for _ in range(n):
            eng.step()
            trail.append((eng.state.next_token.cpu().clone(), eng.state.pos.cpu().clone()))
    eng.close()
    return trail, recs


def test_graph_tokens_equal_eager_tokens():
    g, grecs = run_tokens("graph")
    e, erecs = run_tokens("eager")
    assert all(s["bucket"] == 8 for s in steps(grecs)) and all(s["bucket"] is None for s in steps(erecs))
    for k, ((gt, gp), (et, ep)) in enumerate(zip(g, e)):
        assert torch.equal(gp, ep), k
        assert torch.equal(gt[:-1], et[:-1]), f"tokens differ at step {k}"   # last row is scratch


def test_hit_and_padding_counts_match_hand_computed(tmp_path):
    sizes = [1, 3, 5, 8, 9, 17, 33, 64, 70, 2, 12, 40]
    (tmp_path / "b.txt").write_text(" ".join(map(str, sizes)))
    # bucket, padded by hand for 1,2,4,...,64 and max padding ratio 0.3
    expect = {1: (1, 0), 3: (4, 1), 5: (None, 0), 8: (8, 0), 9: (None, 0), 17: (None, 0), 33: (None, 0),
              64: (64, 0), 70: (None, 0), 2: (2, 0), 12: (16, 4), 40: (None, 0)}
    reasons = {5: "padding_ratio", 9: "padding_ratio", 17: "padding_ratio", 33: "padding_ratio", 70: "over_max",
               40: "padding_ratio"}
    eng, recs = engine("tiny", arrival=f"replay:{tmp_path / 'b.txt'}", concurrency=80, max_padding_ratio=0.3)
    eng.run()
    eng.close()
    st = steps(recs)
    assert [s["batch"] for s in st] == sizes
    for s in st:
        assert (s["bucket"], s["padded"]) == expect[s["batch"]], s
        assert s["reason"] == reasons.get(s["batch"]), s
    assert sum(s["bucket"] is not None for s in st) == 6
    assert sum(s["padded"] for s in st) == 5


def test_mode_switch_and_recapture_mid_run():
    sched = tuple(parse_scheduled(s) for s in ("5:eager", "10:graph", "15:recapture=1,4,16"))
    eng, recs = engine("tiny", arrival="fixed:3", schedule=sched)
    eng.run(25)
    eng.close()
    st = steps(recs)
    assert all(s["bucket"] == 4 for s in st[:5])
    assert all(s["bucket"] is None and s["reason"] == "eager_mode" for s in st[5:10])
    assert all(s["bucket"] == 4 for s in st[10:])
    assert [e["mode"] for e in events(recs, R.EV_MODE)] == ["eager", "graph"]
    assert events(recs, R.EV_RELEASE)[0]["freed_bytes"] > 0
    done = events(recs, R.EV_CAPTURE_DONE)
    assert [d["sizes"] for d in done] == [DEFAULT, [1, 4, 16]]
    assert [c["bucket"] for c in events(recs, R.EV_CAPTURE)][-3:] == [16, 4, 1]


def test_forced_capture_failure_disables_only_that_bucket():
    eng, recs = engine("tiny", arrival="fixed:6", fail_capture=(8,))
    eng.run(15)
    eng.close()
    caps = {c["bucket"]: c for c in events(recs, R.EV_CAPTURE)}
    assert not caps[8]["ok"] and caps[8]["cause"] == "host sync", caps[8]
    bad = {b: (c["cause"], c["error"]) for b, c in caps.items() if not c["ok"] and b != 8}
    assert set(caps) == set(DEFAULT) and not bad, bad          # 4, 2, 1 captured after the failure
    alerts = events(recs, R.EV_ALERT)
    assert any(a["level"] == "error" and "bucket 8" in a["message"] for a in alerts)
    st = steps(recs)
    assert len(st) == 15 and all(s["bucket"] is None and s["reason"] == "bucket_failed" for s in st)
    # the run goes on in graph mode for other buckets
    eng2, recs2 = engine("tiny", arrival="fixed:3", fail_capture=(8,))
    eng2.run(5)
    eng2.close()
    assert all(s["bucket"] == 4 for s in steps(recs2))


@pytest.mark.skipif(shutil.which("ncu") is None, reason="needs Nsight Compute (ncu)")
@pytest.mark.parametrize("rng", ["decode_graph_b8", "decode_eager", "prefill"])
def test_nvtx_ranges_are_seen_by_nsight_compute(tmp_path, rng):
    extra = ["--at", "3:eager"] if rng == "decode_eager" else []
    cmd = ["ncu", "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--launch-count", "3",
           "--nvtx", "--nvtx-include", f"cgwatch@{rng}/", sys.executable, "-m", "cgwatch", "run", "--headless",
           "--steps", "6", "--arrival", "fixed:8", "--max-seq", "128", "--max-concurrency", "8",
           "--cudagraph-capture-sizes", "8", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    profiled = [l for l in text.splitlines() if "==PROF==" in l and "Profiling" in l]
    assert profiled, text[-3000:]


def test_graphs_survive_a_cleared_cublas_workspace_cache():
    """torch.compile's cudagraph trees clear torch's cuBLAS workspace cache on every record; with
    ``empty_cache`` after it, a graph whose GEMMs used a cached workspace faulted on the next replay
    (H100, llama-1b). The capture now allocates its workspace in the graph pool. A child process, since
    a fault poisons the CUDA context."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "probes", "workspace_lifetime.py"),
                        "--model", "llama-1b", "--sizes", "1,2,8", "--child", "pool"],
                       capture_output=True, text=True, timeout=300, cwd=root,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))})
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["ok"], res
    assert res["max_rel_err"] < 1e-2, res


def test_gpu_gap_is_measured_for_back_to_back_steps_only():
    """gap_us: the previous step's end to this step's start, on the GPU. Steps issued back to back
    have one (>= 0); the first step, a step after a prefill and a step after a command have none."""
    sched = tuple(parse_scheduled(s) for s in ("20:eager", "30:graph"))
    eng, recs = engine("tiny", arrival="fixed:3", schedule=sched)
    eng.run(40)
    eng.close()
    st = steps(recs)
    after_prefill = {r["i"] for r in recs if r["type"] == R.PREFILL}
    for s in st:
        if s["i"] == 0 or s["i"] in after_prefill or s["i"] in (20, 30):
            assert s["gap_us"] is None, s
        else:
            assert s["gap_us"] is not None and s["gap_us"] >= 0, s
    assert sum(s["gap_us"] is not None for s in st) >= 30
    assert {s["mode"] for s in st if s["gap_us"] is not None} == {"graph", "eager"}


# -- the fused kernels (engine/kernels.py) ------------------------------------------------------

def _tokens(kernels, mode="graph", dtype="fp32", n=30):
    eng, recs = engine("tiny", arrival="fixed:8", mode=mode, kernels=kernels, dtype=dtype)
    trail = []
    with torch.inference_mode():
        eng.start()
        for _ in range(n):
            eng.step()
            trail.append(eng.state.next_token.cpu().clone())
    eng.close()
    return trail, recs


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_fused_kernels_give_the_plain_kernels_tokens_in_fp32(mode):
    fused, frecs = _tokens("fused", mode)
    plain, _ = _tokens("plain", mode)
    assert all(s["bucket"] == (8 if mode == "graph" else None) for s in steps(frecs))
    for k, (a, b) in enumerate(zip(fused, plain)):
        assert torch.equal(a[:-1], b[:-1]), f"tokens differ at step {k}"


def test_fused_graphs_capture_with_fewer_kernels_and_show_compile_time():
    counts = {}
    for kernels in ("plain", "fused"):
        eng, recs = engine("tiny", arrival="fixed:8", kernels=kernels, max_seq=1024)
        eng.run(5)
        eng.close()
        caps = events(recs, R.EV_CAPTURE)
        assert all(c["ok"] and c["check"]["tokens_equal"] and c["compile_s"] is not None for c in caps), caps
        counts[kernels] = caps[0]["kernels"]
        assert events(recs, R.EV_CAPTURE_DONE)[0]["compile_s"] is not None
        assert eng.kernels == kernels
    if counts["plain"] is not None:
        assert counts["fused"] < counts["plain"] / 2, counts


def test_kernels_command_recaptures_every_bucket():
    sched = tuple(parse_scheduled(s) for s in ("5:kernels=plain", "10:kernels=fused"))
    eng, recs = engine("tiny", arrival="fixed:3", schedule=sched, kernels="fused")
    eng.run(15)
    eng.close()
    assert len(events(recs, R.EV_CAPTURE_DONE)) == 3 and len(events(recs, R.EV_RELEASE)) == 2
    assert all(s["bucket"] == 4 for s in steps(recs))
    assert [e["kernels"] for e in events(recs, R.EV_STATE)][-1] == "fused"


def test_a_kv_cache_larger_than_the_gpu_is_one_line_before_it_is_allocated():
    from cgwatch.errors import CgwatchError
    free = torch.cuda.mem_get_info()[0]
    with pytest.raises(CgwatchError, match=r"the KV cache for 100000 slots x 8192 positions needs .* GiB free on cuda"):
        engine("llama-1b", max_seq=8192, concurrency=100_000)
    assert torch.cuda.mem_get_info()[0] >= free - (4 << 30)   # the weights at most: no cache was allocated
