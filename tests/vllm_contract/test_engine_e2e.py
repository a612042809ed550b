"""cgwatch's vLLM adapter end to end against the real LLMEngine, on a CPU.

Everything is real vLLM except the model executor (fake_executor.py: no model, one token per request
per step, a CUDAGraphStat per step shaped like the runners'). vLLM's CPU platform turns CUDA graphs off
(and async scheduling) in its config hook; ``graphs_on_cpu`` lets vLLM resolve those as it does on a
GPU (its own default capture sizes, cudagraph_mode, the batch queue), so the adapter sees what it
would see there.
"""

import pytest

pytest.importorskip("vllm")

from vllm.platforms import current_platform  # noqa: E402

from cgwatch import records as R  # noqa: E402
from cgwatch.backends import make_engine  # noqa: E402
from cgwatch.backends.vllm_config import VllmEngineConfig  # noqa: E402
from cgwatch.engine.control import Command  # noqa: E402
from cgwatch.report import build_report  # noqa: E402
from cgwatch.trace import TraceWriter, read_trace  # noqa: E402
from cgwatch.workload import WorkloadSpec  # noqa: E402

from fake_executor import CAPTURE, AsyncFakeExecutor, FakeExecutor  # noqa: E402


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    cls = type(current_platform)
    original = cls.check_and_update_config.__func__

    def keep_graph_config(klass, vllm_config):
        cc, sc = vllm_config.compilation_config, vllm_config.scheduler_config
        sizes, mode, async_scheduling = cc.cudagraph_capture_sizes, cc.cudagraph_mode, sc.async_scheduling
        original(klass, vllm_config)
        cc.cudagraph_capture_sizes, cc.cudagraph_mode = sizes, mode
        sc.async_scheduling = async_scheduling

    monkeypatch.setattr(cls, "support_static_graph_mode", classmethod(lambda klass: True))
    monkeypatch.setattr(cls, "check_and_update_config", classmethod(keep_graph_config))


def config(model, **kw):
    base = dict(model=model, load_format="dummy", max_seq=256, sample_interval_s=0.05,
                engine_args={"distributed_executor_backend": FakeExecutor},
                workload=WorkloadSpec(arrival="poisson:0.5", prompt_len="uniform:4:40", output_len="uniform:4:30",
                                      max_concurrency=8, max_seq=256, seed=1))
    return VllmEngineConfig(**(base | kw))


def run(cfg, steps, commands=()):
    recs = []
    eng = make_engine(cfg, recs.append)
    head = eng.header()
    eng.start()
    replies = []
    for at, cmd in commands:
        eng.run(at)
        eng.submit(Command(cmd.name, cmd.value, reply=replies.append))
        eng.apply_pending()
    eng.run(steps)
    summary = eng.close()
    return head, recs, summary, replies


def events(recs, kind):
    return [r for r in recs if r["type"] == "event" and r["kind"] == kind]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_run_through_the_real_llm_engine(tiny_model, graphs_on_cpu, tmp_path, async_scheduling):
    executor = AsyncFakeExecutor if async_scheduling else FakeExecutor
    cfg = config(tiny_model, engine_args={"distributed_executor_backend": executor, "async_scheduling": async_scheduling})
    head, recs, summary, _ = run(cfg, 40)
    assert head["async_scheduling"] is async_scheduling   # vLLM's resolved setting
    # vLLM resolved its own capture list: 1, 2, 4, then multiples of 8 up to 2 x max_num_seqs
    assert head["config"]["capture_sizes"] == [1, 2, 4, 8, 16] and head["backend"] == "vllm"
    assert head["model"]["architecture"] == "LlamaForCausalLM" and head["model"]["max_model_len"] == 256
    done = events(recs, "capture_done")
    assert len(done) == 1 and done[0]["seconds"] == CAPTURE["seconds"]
    assert done[0]["pool_bytes"] == int(CAPTURE["gib"] * 2**30) and done[0]["scope"] == "total"
    steps = [r for r in recs if r["type"] == "step"]
    prefills = [r for r in recs if r["type"] == "prefill"]
    assert len(steps) == 40 == summary["steps"] and prefills
    graph = [s for s in steps if s["bucket"] is not None]
    assert graph and all(s["bucket"] == s["target"] and s["runtime_mode"] == "FULL" for s in graph)
    assert all(s["gpu_ms"] is None and s["host_us"] > 0 and "wall_shared_by" not in s for s in steps)
    assert all(p["requests"] >= 1 and p["tokens"] >= 4 for p in prefills)
    assert summary["tokens"] == sum(s["tokens"] for s in steps)

    path = tmp_path / "e2e.jsonl"
    from cgwatch.daemon import header_record
    with TraceWriter(path, head) as w:
        for r in recs:
            w.write(r)
        w.close(summary | {"outcome": "completed", "t": summary["duration_s"]})
    rep = build_report(read_trace(path))
    assert rep["totals"]["steps"] == 40 and rep["totals"]["graph_pool_mib"] == 768.0
    assert rep["totals"]["graph_hit_rate_pct"] == pytest.approx(100 * len(graph) / 40)
    assert header_record(head)["backend"] == "vllm"


def test_toggle_and_recapture_restart_the_real_engine(tiny_model, graphs_on_cpu):
    cmds = [(10, Command("mode", "eager")), (20, Command("recapture", [1, 2, 4])), (25, Command("mode", "graph")),
            (30, Command("padding", 0.3))]
    _, recs, summary, replies = run(config(tiny_model), 40, cmds)
    restarts = events(recs, "restart")
    assert [r["reason"] for r in restarts] == ["eager mode", "graph mode"]     # recapture in eager: no restart
    assert restarts[0]["new"]["cudagraph_mode"] == "NONE" and restarts[0]["new"]["cudagraph_capture_sizes"] == []
    assert restarts[1]["new"]["cudagraph_capture_sizes"] == [1, 2, 4] and restarts[1]["seconds"] > 0
    assert [r["ok"] for r in replies] == [True, True, True, False]
    eager = [r for r in recs if r["type"] == "step" and 10 <= r["i"] < 25]
    assert eager and all(r["reason"] == R.REASON_EAGER_MODE for r in eager)
    late = [r for r in recs if r["type"] == "step" and r["i"] >= 25]
    assert all(r["target"] in (1, 2, 4, None) for r in late)
    assert any(r["reason"] == R.REASON_OVER_MAX for r in late)
    assert summary["steps"] == 40


@pytest.mark.parametrize("flag, runner", [("0", "v1"), ("1", "v2")])
def test_the_header_names_the_model_runner_vllm_chose(tiny_model, graphs_on_cpu, monkeypatch, flag, runner):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", flag)
    recs = []
    eng = make_engine(config(tiny_model), recs.append)
    try:
        assert eng.header()["model_runner"] == runner
    finally:
        eng.close()


def test_a_bad_model_is_one_line(tmp_path):
    from cgwatch.errors import CgwatchError
    with pytest.raises(CgwatchError) as e:
        make_engine(config(str(tmp_path / "missing")), lambda r: None)
    assert str(e.value).startswith(f"vLLM could not start '{tmp_path / 'missing'}' (graph mode): ")
    assert "\n" not in str(e.value)
