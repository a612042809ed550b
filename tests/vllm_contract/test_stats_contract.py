"""cgwatch's stat logger and step mapping against vLLM's own stat classes and its logger plumbing."""

import dataclasses
import inspect

import pytest

pytest.importorskip("vllm")

from vllm.compilation.cuda_graph import CUDAGraphStat  # noqa: E402
from vllm.config import CUDAGraphMode  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.v1.engine.llm_engine import LLMEngine  # noqa: E402
from vllm.v1.metrics.loggers import StatLoggerBase, StatLoggerManager  # noqa: E402
from vllm.v1.metrics.stats import IterationStats, SchedulerIterationDetails, SchedulerStats  # noqa: E402

from cgwatch import records as R  # noqa: E402
from cgwatch.backends.vllm_config import VllmEngineConfig  # noqa: E402
from cgwatch.backends.vllm_stats import REASON_VLLM_NO_GRAPH, StatsCollector, StepMapper  # noqa: E402
from cgwatch.report import build_report  # noqa: E402
from cgwatch.trace import TraceWriter, read_trace  # noqa: E402

SIZES = [1, 2, 4, 8, 16, 24, 32]


def sched(unpadded, padded, mode: CUDAGraphMode, ctx_req=0, ctx_tok=0, i=0):
    """SchedulerStats the way vLLM's scheduler and engine core fill them (cudagraph_metrics and
    enable_logging_iteration_details on); runtime_mode is str(CUDAGraphMode), as both runners set it."""
    gen = unpadded - ctx_tok
    return SchedulerStats(
        num_running_reqs=ctx_req + gen,
        cudagraph_stats=CUDAGraphStat(num_unpadded_tokens=unpadded, num_padded_tokens=padded,
                                      num_paddings=padded - unpadded, runtime_mode=str(mode)),
        iteration_details=SchedulerIterationDetails(
            iteration_index=i, num_ctx_requests=ctx_req, num_ctx_tokens=ctx_tok, num_generation_requests=gen,
            num_generation_tokens=gen, elapsed_ms=1.0))


def iteration_stats(tokens):
    it = IterationStats()
    it.num_generation_tokens = tokens   # what OutputProcessor.update_from_output sums up per step
    return it


@pytest.fixture(scope="module")
def vllm_config(tiny_model):
    return EngineArgs(**VllmEngineConfig(model=tiny_model, load_format="dummy", max_seq=256).engine_kwargs(True, SIZES)).create_engine_config()


def test_the_fields_cgwatch_reads_exist():
    assert [f.name for f in dataclasses.fields(CUDAGraphStat)] == [
        "num_unpadded_tokens", "num_padded_tokens", "num_paddings", "runtime_mode"]
    details = {f.name for f in dataclasses.fields(SchedulerIterationDetails)}
    assert {"num_ctx_requests", "num_ctx_tokens", "num_generation_requests", "num_generation_tokens",
            "is_dummy"} <= details
    sched_fields = {f.name for f in dataclasses.fields(SchedulerStats)}
    assert {"cudagraph_stats", "iteration_details"} <= sched_fields
    assert IterationStats().num_generation_tokens == 0
    assert [str(m) for m in (CUDAGraphMode.NONE, CUDAGraphMode.PIECEWISE, CUDAGraphMode.FULL)] == [
        "NONE", "PIECEWISE", "FULL"]


def test_stat_logger_interface_matches_vllms():
    cls = StatsCollector().logger_class()
    assert issubclass(cls, StatLoggerBase) and not inspect.isabstract(cls)
    assert StatLoggerBase.__abstractmethods__ == {"__init__", "record", "log_engine_initialized"}
    ours = list(inspect.signature(cls.record).parameters)
    theirs = list(inspect.signature(StatLoggerBase.record).parameters)
    assert ours == theirs
    params = inspect.signature(LLMEngine.from_engine_args).parameters
    assert "stat_loggers" in params and "enable_multiprocessing" in params
    for name in ("add_request", "abort_request", "step", "has_unfinished_requests"):
        assert callable(getattr(LLMEngine, name))


def test_vllms_logger_manager_feeds_real_stats_to_cgwatch(vllm_config, tmp_path):
    """StatLoggerManager (what LLMEngine.step calls) -> cgwatch's logger -> records -> trace -> report."""
    collector = StatsCollector()
    manager = StatLoggerManager(vllm_config=vllm_config, custom_stat_loggers=[collector.logger_class()],
                                enable_default_loggers=False)
    FULL, PIECEWISE, NONE = CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE
    steps = [sched(6, 8, FULL), sched(8, 8, FULL), sched(3, 4, FULL), sched(40, 40, NONE),
             sched(23, 24, PIECEWISE, ctx_req=1, ctx_tok=20), sched(12, 16, FULL), sched(30, 32, FULL)]
    for k, s in enumerate(steps):
        manager.record(scheduler_stats=s, iteration_stats=iteration_stats(s.cudagraph_stats.num_unpadded_tokens
                                                                          - s.iteration_details.num_ctx_tokens + 1))
    manager.record(scheduler_stats=SchedulerStats(), iteration_stats=None)   # a step with no forward
    its = collector.drain()
    assert collector.records_seen == 8 and len(its) == 7

    mapper = StepMapper(SIZES, graph_mode=True, cudagraph_mode="FULL_AND_PIECEWISE")
    path = tmp_path / "vllm.jsonl"
    with TraceWriter(path, {"backend": "vllm", "model": {"name": "tiny"}}) as w:
        w.write(R.event(R.EV_CAPTURE_DONE, 0.0, sizes=SIZES, failed=[], pool_bytes=1 << 30, seconds=9.0,
                        pool="shared", pools=1, source="vllm", scope="total"))
        i = 0
        recs = []
        for k, it in enumerate(its):
            rec = mapper.record(it, i, 0.01 * k, 0.002)
            i += rec["type"] == R.STEP
            recs.append(rec)
            w.write(rec)
        w.close({"steps": i, "tokens": 0, "duration_s": 0.1, "outcome": "completed", "t": 0.1})
    assert recs[0] == {"type": "step", "i": 0, "t": 0.0, "batch": 6, "rows": 6, "target": 8, "bucket": 8,
                       "mode": "graph", "runtime_mode": "FULL", "reason": None, "padded": 2, "host_us": 2000.0,
                       "gpu_ms": None, "gap_us": None, "tokens": 7, "phase": "decode", "prompt_tokens": 0}
    assert recs[3]["reason"] == R.REASON_OVER_MAX and recs[3]["bucket"] is None and recs[3]["runtime_mode"] == "NONE"
    # the mixed forward (a 20-token prompt chunk + 3 decodes) is a step too: 4 requests, 23 rows,
    # PIECEWISE in the 24 graph, tokens = what IterationStats counted
    assert all(r["type"] == "step" for r in recs) and [r["i"] for r in recs] == list(range(7))
    assert {k: recs[4][k] for k in ("batch", "rows", "prompt_tokens", "phase", "runtime_mode", "target", "bucket",
                                    "padded", "tokens", "mode")} == {
        "batch": 4, "rows": 23, "prompt_tokens": 20, "phase": "mixed", "runtime_mode": "PIECEWISE", "target": 24,
        "bucket": 24, "padded": 1, "tokens": 4, "mode": "graph"}
    assert all(r["phase"] == "decode" and r["rows"] == r["batch"] for k, r in enumerate(recs) if k != 4)

    rep = build_report(read_trace(path))
    rows = {b["label"]: b for b in rep["buckets"]}
    assert rows["8"]["steps"] == 2 and rows["8"]["hit_pct"] == 100.0 and rows["8"]["padding_waste_pct"] == 12.5
    assert rows["16"]["padding_waste_pct"] == 25.0 and rows["32"]["padding_waste_pct"] == pytest.approx(6.25)
    assert rows["24"]["steps"] == 1 and rows["24"]["padding_waste_pct"] == pytest.approx(100 / 24)
    assert rows[">32"]["hit_pct"] == 0.0 and rows[">32"]["misses"] == {"over_max": 1}
    t = rep["totals"]
    # 7 forwards, all steps (the mixed one included); 6 ran a graph (5 FULL + 1 PIECEWISE)
    assert (t["steps"], t["graph_steps"]) == (7, 6) and t["graph_hit_rate_pct"] == pytest.approx(100 * 6 / 7)
    assert t["padding_waste_pct"] == pytest.approx(100 * (2 + 0 + 1 + 1 + 4 + 2) / (8 + 8 + 4 + 24 + 16 + 32))
    assert (t["full"], t["piecewise"], t["eager"]) == (5, 1, 1)
    assert (t["decode"], t["mixed"], t["prefill"]) == (6, 1, 0)
    assert t["rows"] == 6 + 8 + 3 + 40 + 23 + 12 + 30 and t["prompt_tokens"] == 20
    assert t["requests"] == 6 + 8 + 3 + 40 + 4 + 12 + 30
    assert t["tokens"] == sum(r["tokens"] for r in recs)
    assert t["prefills"] == 0 and t["graph_pool_mib"] == 1024.0 and t["gpu_busy_pct"] is None


def test_eager_reasons_from_real_stats():
    none = sched(5, 5, CUDAGraphMode.NONE)
    collector = StatsCollector()
    collector.add(none, iteration_stats(5))
    it = collector.drain()[0]
    assert StepMapper(SIZES, False, "NONE").record(it, 0, 0, 1e-3)["reason"] == R.REASON_EAGER_MODE
    assert StepMapper(SIZES, True, "FULL_DECODE_ONLY").record(it, 0, 0, 1e-3)["reason"] == REASON_VLLM_NO_GRAPH
