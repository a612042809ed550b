"""cgwatch's vLLM adapter end to end against the real LLMEngine, on a CPU.

Everything is real vLLM except the model executor (fake_executor.py: no model, one token per request
that finished its prompt per step, a CUDAGraphStat per step shaped like the runners'). vLLM's CPU
platform turns CUDA graphs off (and async scheduling) in its config hook; ``graphs_on_cpu`` lets vLLM
resolve those as it does on a GPU (its own default capture sizes, cudagraph_mode, the batch queue), so
the adapter sees what it would see there.

Every vLLM forward is one ``step`` record (records.step): decode forwards, and the mixed (prompt chunk
+ decodes) and prefill (prompt chunks only) ones, with ``batch`` = requests, ``rows`` = tokens computed,
``prompt_tokens`` and ``phase``. The fake counts the forwards it ran and the tokens it sampled, so the
records are checked against what really ran.
"""

import os

import pytest

vllm = pytest.importorskip("vllm")

from cgwatch import records as R  # noqa: E402
from cgwatch.backends import make_engine  # noqa: E402
from cgwatch.backends.vllm_config import VllmEngineConfig  # noqa: E402
from cgwatch.backends.vllm_version import adapter_for  # noqa: E402
from cgwatch.engine.control import Command  # noqa: E402
from cgwatch.errors import CgwatchError  # noqa: E402
from cgwatch.report import build_report  # noqa: E402
from cgwatch.trace import TraceWriter, read_trace  # noqa: E402
from cgwatch.workload import WorkloadSpec  # noqa: E402

from fake_executor import CAPTURE, AsyncFakeExecutor, FakeExecutor, SmallKvFakeExecutor  # noqa: E402
from support import RELEASE, at_least, cpu_default_cudagraph_mode  # noqa: E402

ADAPTER = adapter_for(vllm.__version__)


def config(model, **kw):
    base = dict(model=model, load_format="dummy", max_seq=256, sample_interval_s=0.05,
                engine_args={"distributed_executor_backend": FakeExecutor},
                workload=WorkloadSpec(arrival="poisson:0.5", prompt_len="uniform:4:40", output_len="uniform:4:30",
                                      max_concurrency=8, max_seq=256, seed=1))
    return VllmEngineConfig(**(base | kw))


def run(cfg, steps, commands=(), spy=None):
    """Run the engine for ``steps`` step records; ``spy(eng)`` right after the build. Returns the header,
    the records, the summary, the command replies and the fake worker of the first engine built."""
    recs = []
    eng = make_engine(cfg, recs.append)
    worker = eng.llm.model_executor.worker
    if spy is not None:
        spy(eng)
    head = eng.header()
    eng.start()
    replies = []
    for at, cmd in commands:
        eng.run(at)
        eng.submit(Command(cmd.name, cmd.value, reply=replies.append))
        eng.apply_pending()
    eng.run(steps)
    summary = eng.close()
    return head, recs, summary, replies, worker


def events(recs, kind):
    return [r for r in recs if r["type"] == "event" and r["kind"] == kind]


def step_records(recs):
    return [r for r in recs if r["type"] == "step"]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_run_through_the_real_llm_engine(tiny_model, graphs_on_cpu, tmp_path, async_scheduling):
    executor = AsyncFakeExecutor if async_scheduling else FakeExecutor
    cfg = config(tiny_model, engine_args={"distributed_executor_backend": executor, "async_scheduling": async_scheduling})
    head, recs, summary, _, worker = run(cfg, 40)
    assert head["async_scheduling"] is async_scheduling   # vLLM's resolved setting
    # vLLM resolved its own capture list: 1, 2, 4, then multiples of 8 up to 2 x max_num_seqs (the same
    # in every release for max_num_seqs=8, a multiple of 8)
    assert head["config"]["capture_sizes"] == [1, 2, 4, 8, 16] and head["backend"] == "vllm"
    mode = head["config"]["cudagraph_mode"]
    assert mode == cpu_default_cudagraph_mode(), RELEASE
    assert head["model"]["architecture"] == "LlamaForCausalLM" and head["model"]["max_model_len"] == 256
    assert head["vllm"] == vllm.__version__ and head["vllm_notes"] == ADAPTER.notes
    assert bool(head["vllm_notes"]) is (not at_least(30))
    if ADAPTER.force_v1_runner:
        assert head["model_runner"] == "v1"
    assert head["gpu_timing"] == "n/a: no CUDA"
    done = events(recs, "capture_done")
    assert len(done) == 1 and done[0]["seconds"] == CAPTURE["seconds"]
    assert done[0]["pool_bytes"] == int(CAPTURE["gib"] * 2**30) and done[0]["scope"] == "total"

    steps = step_records(recs)
    assert len(steps) == 40 == summary["steps"] and [s["i"] for s in steps] == list(range(40))
    assert not [r for r in recs if r["type"] == "prefill"]     # the vLLM backend writes every forward as a step
    # every forward the executor ran is one step record, in order; with async scheduling one more batch
    # may be in flight when the run stops (its stats would come with the next engine step)
    assert [s["rows"] for s in steps] == worker.forwards[:40]
    assert len(worker.forwards) == 40 if not async_scheduling else 40 <= len(worker.forwards) <= 41
    # tokens = what vLLM's IterationStats counted for the forward: the tokens the runner sampled; with
    # async scheduling vLLM may run a request once more after its last token and drops that sample
    if async_scheduling:
        assert all(s["tokens"] <= n for s, n in zip(steps, worker.sampled))
    else:
        assert [s["tokens"] for s in steps] == worker.sampled[:40]
    assert all(s["gpu_ms"] is None and s["host_us"] > 0 and "wall_shared_by" not in s for s in steps)
    assert summary["tokens"] == sum(s["tokens"] for s in steps)

    decode = [s for s in steps if s["phase"] == "decode"]
    other = [s for s in steps if s["phase"] != "decode"]
    assert decode and other
    # decode forwards: one token a request (no speculative decoding), FULL in the graph of their size
    assert all(s["prompt_tokens"] == 0 and s["rows"] == s["batch"] and s["tokens"] <= s["batch"] for s in decode)
    assert all(s["runtime_mode"] == "FULL" and s["bucket"] == s["target"] is not None for s in decode)
    # prompt forwards: every prompt (4-40 tokens) fits the token budget, so each is computed whole;
    # requests and rows apart: rows = prompt tokens + one token per decode request riding along
    assert all(s["phase"] in ("mixed", "prefill") and s["prompt_tokens"] >= 4 and s["rows"] > s["batch"]
               for s in other)
    for s in other:
        decodes = s["rows"] - s["prompt_tokens"]
        assert (decodes == 0) is (s["phase"] == "prefill") and 0 <= decodes < s["batch"], s
    # their graph: the resolved mode's mixed mode (CUDAGraphMode.mixed_mode), padded to the capture size;
    # above the largest size no graph
    for s in other:
        if s["target"] is None:
            assert s["runtime_mode"] == "NONE" and s["reason"] == R.REASON_OVER_MAX, s
        elif mode == "FULL_AND_PIECEWISE":       # 0.26-0.29 here: mixed forwards run PIECEWISE
            assert s["runtime_mode"] == "PIECEWISE" and s["bucket"] == s["target"], s
        else:                                    # FULL_DECODE_ONLY (0.30+ here): mixed forwards run eager
            assert mode == "FULL_DECODE_ONLY" and s["runtime_mode"] == "NONE", s
            assert s["reason"] == R.REASON_VLLM_NO_GRAPH and s["bucket"] is None, s

    path = tmp_path / "e2e.jsonl"
    from cgwatch.daemon import header_record
    with TraceWriter(path, head) as w:
        for r in recs:
            w.write(r)
        w.close(summary | {"outcome": "completed", "t": summary["duration_s"]})
    t = build_report(read_trace(path))["totals"]
    graph = [s for s in steps if s["bucket"] is not None]
    assert t["steps"] == 40 and t["graph_pool_mib"] == 768.0 and t["graph_steps"] == len(graph)
    assert t["graph_hit_rate_pct"] == pytest.approx(100 * len(graph) / 40)
    assert t["full"] == len(decode) and t["piecewise"] == len(graph) - len(decode)
    assert (t["decode"], t["mixed"] + t["prefill"]) == (len(decode), len(other))
    assert t["rows"] == sum(worker.forwards[:40]) and t["prompt_tokens"] == sum(s["prompt_tokens"] for s in other)
    assert t["tokens"] == summary["tokens"] and t["prefills"] == 0
    assert header_record(head)["backend"] == "vllm"


def test_toggle_and_recapture_restart_the_real_engine(tiny_model, graphs_on_cpu):
    cmds = [(10, Command("mode", "eager")), (20, Command("recapture", [1, 2, 4])), (25, Command("mode", "graph")),
            (30, Command("padding", 0.3))]
    _, recs, summary, replies, _ = run(config(tiny_model), 40, cmds)
    restarts = events(recs, "restart")
    assert [r["reason"] for r in restarts] == ["eager mode", "graph mode"]     # recapture in eager: no restart
    assert restarts[0]["new"]["cudagraph_mode"] == "NONE" and restarts[0]["new"]["cudagraph_capture_sizes"] == []
    assert restarts[1]["new"]["cudagraph_capture_sizes"] == [1, 2, 4] and restarts[1]["seconds"] > 0
    assert [r["ok"] for r in replies] == [True, True, True, False]
    eager = [r for r in recs if r["type"] == "step" and 10 <= r["i"] < 25]
    assert eager and all(r["reason"] == R.REASON_EAGER_MODE and r["runtime_mode"] == "NONE" for r in eager)
    late = [r for r in recs if r["type"] == "step" and r["i"] >= 25]
    assert all(r["target"] in (1, 2, 4, None) for r in late)
    assert any(r["reason"] == R.REASON_OVER_MAX for r in late)
    assert summary["steps"] == 40


@pytest.mark.parametrize("flag", ["0", "1", None])
def test_the_header_names_the_model_runner(tiny_model, graphs_on_cpu, monkeypatch, flag):
    if flag is None:
        monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    else:
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", flag)
    eng = make_engine(config(tiny_model), lambda r: None)
    try:
        head = eng.header()
        if ADAPTER.force_v1_runner:
            # 0.26-0.29: V2 fills no cudagraph_stats (test_source_contract), so cgwatch runs V1 whatever
            # the environment says, and says so in the header
            assert head["model_runner"] == "v1" and os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
            assert head["vllm_notes"] == [f"vLLM {vllm.__version__}: Model Runner V2 reports no CUDA graph stats, "
                                          f"so cgwatch runs the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0)"]
        else:
            # 0.30 on: vLLM's choice. Unset means its default (VllmConfig.use_v2_model_runner,
            # config/vllm.py:675 in 0.30, :731 in 0.33): V2 for every model from 0.29 on unless a feature
            # it lacks is in use or Triton is missing -- as here, without a GPU vLLM disables Triton
            if flag is None:
                assert head["model_runner"] == ("v2" if eng.llm.vllm_config.use_v2_model_runner else "v1")
            else:
                assert head["model_runner"] == {"0": "v1", "1": "v2"}[flag]
            assert head["vllm_notes"] == []
    finally:
        eng.close()


def test_a_missing_model_folder_is_refused_before_vllm_starts(tmp_path):
    with pytest.raises(CgwatchError) as e:
        make_engine(config(str(tmp_path / "missing")), lambda r: None)
    assert str(e.value) == f"model folder {tmp_path / 'missing'} does not exist"


def test_a_model_vllm_cannot_load_is_one_line(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"], "model_type": "nosuch"}')
    with pytest.raises(CgwatchError) as e:
        make_engine(config(str(tmp_path / "odd")), lambda r: None)
    assert str(e.value).startswith(f"vLLM could not start '{tmp_path / 'odd'}' (graph mode): ")
    assert "\n" not in str(e.value) and "nosuch" in str(e.value).lower()


# ---- forwards that return no request output ----------------------------------------------------

def chunked(model, executor=FakeExecutor, async_scheduling=False, **workload):
    """Prompts longer than a 16-token budget: vLLM's chunked prefill splits them, and a forward of
    non-final chunks alone returns no request output (the runner discards their samples)."""
    spec = dict(arrival="poisson:0.3", prompt_len="uniform:40:60", output_len="uniform:2:6", max_concurrency=8,
                max_seq=256, seed=3) | workload
    return config(model, engine_args={"distributed_executor_backend": executor, "async_scheduling": async_scheduling,
                                      "max_num_batched_tokens": 16},
                  workload=WorkloadSpec(**spec))


class CoreOutputs:
    """Spies on what LLMEngine.step gets from engine_core.get_output (outermost, around cgwatch's tap
    where it has one): (unpadded tokens, request outputs) of each EngineCoreOutputs with a CUDAGraphStat."""

    def __init__(self):
        self.raw: list[tuple[int, int]] = []
        self.tapped: list[bool] = []      # per engine built: did cgwatch install its tap?

    def __call__(self, eng):
        core = eng.llm.engine_core
        self.tapped.append("get_output" in vars(core))     # cgwatch's tap is an instance attribute
        inner = core.get_output

        def get_output(*a, **k):
            out = inner(*a, **k)
            cg = getattr(out.scheduler_stats, "cudagraph_stats", None) if out.scheduler_stats else None
            if cg is not None:
                self.raw.append((cg.num_unpadded_tokens, len(out.outputs)))
            return out
        core.get_output = get_output

    @property
    def outputless(self) -> list[int]:
        """Indexes of the forwards that returned no request output."""
        return [k for k, (_, n) in enumerate(self.raw) if n == 0]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_forward_without_request_output_is_one_step(tiny_model, graphs_on_cpu, monkeypatch, async_scheduling):
    """A forward whose EngineCoreOutputs carry scheduler_stats (with its CUDAGraphStat) but no outputs
    is a step record, exactly once, in every release:
    * 0.26/0.27: LLMEngine.step does not hand it to the stat loggers (test_source_contract), so cgwatch
      reads it from engine_core.get_output (StatsCollector.tap_outputless_steps);
    * 0.28 on: LLMEngine.step hands it to the loggers with iteration_stats=None, and cgwatch installs
      no tap (it would count the step twice).
    Synchronously such a forward holds non-final prompt chunks only; with async scheduling it can also
    be the extra decode vLLM runs for a request whose last token was still in flight (its sample is
    dropped)."""
    from vllm.v1.metrics.loggers import StatLoggerManager

    logged = []       # (unpadded tokens, iteration_stats is None) of what StatLoggerManager.record got
    original_record = StatLoggerManager.record

    def record(self, *args, **kwargs):
        stats = kwargs.get("scheduler_stats", args[0] if args else None)
        its = kwargs.get("iteration_stats", args[1] if len(args) > 1 else None)
        cg = getattr(stats, "cudagraph_stats", None)
        if cg is not None:
            logged.append((cg.num_unpadded_tokens, its is None))
        return original_record(self, *args, **kwargs)

    monkeypatch.setattr(StatLoggerManager, "record", record)
    spy = CoreOutputs()
    executor = AsyncFakeExecutor if async_scheduling else FakeExecutor
    _, recs, summary, _, worker = run(chunked(tiny_model, executor, async_scheduling), 60, spy=spy)
    assert spy.tapped == [ADAPTER.read_outputless_steps] == [not at_least(28)]

    steps = step_records(recs)
    outputless = spy.outputless
    assert len(outputless) >= 3, spy.raw               # the case under test happened
    # each forward vLLM reported is one step record, in order: none lost, none twice
    assert [s["rows"] for s in steps] == [rows for rows, _ in spy.raw] == worker.forwards[:len(steps)]
    assert summary["steps"] == len(steps) == 60
    if not async_scheduling:
        for k in outputless:            # non-final prompt chunks only: a prefill forward producing nothing
            s = steps[k]
            assert s["phase"] == "prefill" and s["rows"] == s["prompt_tokens"] <= 16 and s["tokens"] == 0, s
    if at_least(28):
        # vLLM's own logger path reports every forward; the outputless ones with iteration_stats None
        assert [rows for rows, _ in logged] == [rows for rows, _ in spy.raw]
        assert [k for k, (_, none) in enumerate(logged) if none] == outputless
    else:
        # 0.26/0.27: the loggers never see them; only cgwatch's tap does
        assert [rows for rows, _ in logged] == [rows for k, (rows, _) in enumerate(spy.raw) if k not in outputless]
        assert not any(none for _, none in logged)


@pytest.mark.parametrize("case", ["async decode after the last token", "resumed request recomputing in chunks"])
def test_a_forward_without_request_output_produced_no_tokens(tiny_model, graphs_on_cpu, case):
    """Forwards without request output in which vLLM's iteration_details count "generation" requests:
    * async scheduling runs a request once more while its last token is in flight, and drops that
      sample (the step's outputs are empty if no other request produced a token);
    * a request preempted for KV space and resumed recomputes its prompt and output; it has output
      tokens, so compute_iteration_details (v1/utils.py) counts it as generation, and with a 16-token
      budget the recompute runs in chunks that return nothing.
    Either way the forward produced 0 tokens, and its step record must say so (0.26/0.27: cgwatch's
    tap records it with no tokens)."""
    spy = CoreOutputs()
    if case.startswith("async"):
        cfg, n = chunked(tiny_model, AsyncFakeExecutor, async_scheduling=True), 60
    else:
        cfg, n = chunked(tiny_model, SmallKvFakeExecutor, arrival="poisson:2", prompt_len="uniform:30:60",
                         output_len="uniform:60:120", seed=1), 150
        cfg.engine_args["enable_prefix_caching"] = False   # the resumed request recomputes everything
    _, recs, _, _, worker = run(cfg, n, spy=spy)
    steps = step_records(recs)
    assert [s["rows"] for s in steps] == [rows for rows, _ in spy.raw]
    if not case.startswith("async"):
        assert worker.resumed > 0                          # vLLM preempted and resumed requests
    # the case under test happened: forwards without output that iteration_details call not pure prefill
    assert any(steps[k]["phase"] != "prefill" for k in spy.outputless), [steps[k] for k in spy.outputless]
    assert [steps[k]["tokens"] for k in spy.outputless] == [0] * len(spy.outputless)
    assert sum(s["tokens"] for s in steps) <= sum(worker.sampled)
