"""The vLLM backend on a real GPU (``pytest -m gpu``; skipped without CUDA or vllm): a real vLLM engine
(the ``tiny`` preset's shapes, ``--load-format dummy``) through cgwatch's adapter.

- every forward's record agrees with the ``CUDAGraphStat`` vLLM itself reported for it;
- mixed prefill+decode forwards are steps (phase, prompt tokens, rows != batch), with GPU times;
- an eager/graph toggle restarts vLLM and the records follow the new mode;
- a recapture with a new size list restarts vLLM with those sizes;
- a graph capture that runs out of memory (the memory taken just before vLLM captures: vllm_faults.py) is an alert,
  the engine goes back to the previous config, and the command is refused in one line.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from cgwatch import records as R  # noqa: E402
from cgwatch.backends.vllm_config import VllmEngineConfig  # noqa: E402
from cgwatch.backends.vllm_engine import VllmEngine  # noqa: E402
from cgwatch.backends.vllm_faults import capture_out_of_memory  # noqa: E402
from cgwatch.engine.control import Command  # noqa: E402
from cgwatch.workload import WorkloadSpec  # noqa: E402

pytestmark = pytest.mark.gpu
SIZES = (1, 2, 4, 8, 16)
# A vLLM build that fails keeps its KV cache (probes/vllm_failed_build_memory.py; test below): each
# engine here takes 15% of the GPU, so the failures of one test leave room for the engines of the next.
UTIL = 0.15


class Recorder:
    def __init__(self):
        self.records: list[dict] = []

    def __call__(self, rec):
        self.records.append(rec)

    def steps(self, since=0):
        return [r for r in self.records[since:] if r["type"] == R.STEP]

    def events(self, kind, since=0):
        return [r for r in self.records[since:] if r["type"] == R.EVENT and r.get("kind") == kind]


@pytest.fixture(scope="module")
def engine():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rec = Recorder()
    cfg = VllmEngineConfig(model="tiny", load_format="dummy", max_seq=512, capture_sizes=SIZES,
                           gpu_memory_utilization=UTIL, max_num_seqs=16,
                           workload=WorkloadSpec(arrival="poisson:0.6", prompt_len="uniform:8:96",
                                                 output_len="uniform:8:48", max_concurrency=16, max_seq=512, seed=1))
    eng = VllmEngine(cfg, rec)
    seen = []                                   # every Iteration vLLM's stats gave, in order
    add = eng.collector.add

    def spy(scheduler_stats, iteration_stats=None):
        n = len(eng.collector.pending)
        add(scheduler_stats, iteration_stats)
        seen.extend(eng.collector.pending[n:])
    eng.collector.add = spy
    eng.rec, eng.seen = rec, seen
    eng.start()
    yield eng
    eng.close()


def test_every_forward_record_matches_vllms_own_cudagraph_stat(engine):
    first = len(engine.seen)
    since = len(engine.rec.records)
    for _ in range(300):
        engine.step()
    its = engine.seen[first:]
    steps = engine.rec.steps(since)
    assert len(steps) == len(its) > 250
    for it, r in zip(its, steps):
        assert r["rows"] == it.unpadded_tokens
        assert R.step_runtime_mode(r) == it.runtime_mode
        if it.runtime_mode == "NONE":
            assert r["bucket"] is None and r["padded"] == 0
        else:
            assert r["bucket"] == it.padded_tokens and r["padded"] == it.paddings == it.padded_tokens - it.unpadded_tokens
        assert r["prompt_tokens"] == (it.ctx_tokens or 0)
        assert r["batch"] == it.ctx_requests + it.gen_requests
    decode = [r for r in steps if r["phase"] == R.PHASE_DECODE]
    mixed = [r for r in steps if r["phase"] != R.PHASE_DECODE]
    assert decode and mixed, "Poisson traffic gives pure decode and mixed prefill+decode forwards"
    assert all(r["rows"] >= r["batch"] and r["prompt_tokens"] > 0 for r in mixed)
    # FULL_AND_PIECEWISE (vLLM's default): pure decode batches within the sizes run FULL graphs
    assert {R.step_runtime_mode(r) for r in decode if r["rows"] <= max(SIZES)} == {"FULL"}
    assert any(R.step_runtime_mode(r) == "PIECEWISE" for r in mixed)
    timed = [r for r in steps if r["gpu_ms"] is not None]
    assert len(timed) >= 0.9 * len(steps) and all(r["gpu_ms"] > 0 for r in timed)


def test_toggle_restarts_vllm_and_records_follow_the_mode(engine):
    since = len(engine.rec.records)
    engine.submit(Command("mode", "eager"))
    for _ in range(40):
        engine.step()
    assert engine.rec.events(R.EV_RESTART, since), "the toggle restarts vLLM"
    steps = engine.rec.steps(since)
    assert steps and all(r["bucket"] is None and r["reason"] == R.REASON_EAGER_MODE for r in steps)
    since = len(engine.rec.records)
    engine.submit(Command("mode", "graph"))
    for _ in range(60):
        engine.step()
    restart = engine.rec.events(R.EV_RESTART, since)
    assert restart and restart[-1]["new"]["mode"] == "graph"
    assert any(r["bucket"] is not None for r in engine.rec.steps(since))


def test_recapture_restarts_vllm_with_the_new_sizes(engine):
    since = len(engine.rec.records)
    engine.submit(Command("recapture", [2, 6, 16]))
    for _ in range(80):
        engine.step()
    restart = engine.rec.events(R.EV_RESTART, since)
    assert restart and restart[-1]["new"]["cudagraph_capture_sizes"] == [2, 6, 16]
    assert engine.sizes == [2, 6, 16]
    buckets = {r["bucket"] for r in engine.rec.steps(since) if r["bucket"] is not None}
    assert buckets and buckets <= {2, 6, 16}


def test_a_capture_that_runs_out_of_memory_is_an_alert_and_a_one_line_end_when_nothing_starts(engine):
    since = len(engine.rec.records)
    engine.submit(Command("recapture", [2, 4, 6]))
    with capture_out_of_memory(), pytest.raises(RuntimeError, match="could not start again"):
        engine.step()                       # the previous config captures too: under the hog it fails again
    alerts = [a["message"] for a in engine.rec.events(R.EV_ALERT, since)]
    assert any("failed" in m and "memory" in m.lower() for m in alerts), alerts


def test_a_failed_capture_restart_with_memory_back_recovers():
    """The same failure once, then memory comes back: the engine is back on the previous sizes (with
    room for a second engine beside the failed build's leftovers)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")

    rec = Recorder()
    cfg = VllmEngineConfig(model="tiny", load_format="dummy", max_seq=256, capture_sizes=(1, 2, 4),
                           gpu_memory_utilization=UTIL, max_num_seqs=4,
                           workload=WorkloadSpec(arrival="fixed:4", prompt_len="fixed:8", output_len="fixed:64",
                                                 max_concurrency=4, max_seq=256))
    eng = VllmEngine(cfg, rec)
    eng.start()
    try:
        for _ in range(5):
            eng.step()
        replies = []
        eng.submit(Command("recapture", [1, 2, 3, 4], reply=replies.append))
        with capture_out_of_memory(times=1):      # the new sizes fail; the previous ones capture again
            eng.apply_pending()
        assert replies and not replies[0]["ok"] and "back on the previous config" in replies[0]["error"], replies
        alerts = [a["message"] for a in rec.events(R.EV_ALERT)]
        assert any("failed" in m and "memory" in m.lower() for m in alerts), alerts
        assert eng.sizes == [1, 2, 4]
        for _ in range(10):
            assert eng.step()
        assert any(r["bucket"] == 4 for r in rec.steps())
    finally:
        eng.close()


@pytest.mark.xfail(strict=True, reason="known: a vLLM 0.26 build that fails in graph capture keeps its KV cache "
                                       "allocated in the process (42 GiB at 0.3 on an H200, 2026-12-01)")
def test_a_failed_build_gives_its_gpu_memory_back():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = VllmEngineConfig(model="tiny", load_format="dummy", max_seq=256, capture_sizes=(1, 2),
                           gpu_memory_utilization=UTIL, max_num_seqs=2,
                           workload=WorkloadSpec(arrival="fixed:2", prompt_len="fixed:8", output_len="fixed:16",
                                                 max_concurrency=2, max_seq=256))
    eng = VllmEngine(cfg, Recorder())
    eng._shutdown()
    before = torch.cuda.mem_get_info()[0]
    try:
        with capture_out_of_memory(), pytest.raises(Exception):
            eng._build()
    finally:
        eng.close()
    torch.cuda.empty_cache()
    assert torch.cuda.mem_get_info()[0] > before - (1 << 30), "more than 1 GiB stayed allocated"
