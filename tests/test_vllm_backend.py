"""The vLLM backend on the CPU, without vllm: the pure stats -> records mapping, the capture-log tap, the
version check, the config and flags, and the engine adapter's loop over a fake vLLM (tests/fake_vllm.py).
tests/vllm_contract runs the same pieces against the real vllm package."""

import logging
import os
import subprocess
import sys
from types import SimpleNamespace as NS

import pytest

from cgwatch import records as R
from cgwatch.backends import make_engine
from cgwatch.backends.vllm_config import VllmEngineConfig, drop_above, parse_cudagraph_mode
from cgwatch.backends.vllm_log import CaptureTap, QuietStepLogs, parse_capture
from cgwatch.backends.vllm_stats import (REASON_VLLM_NO_GRAPH, Iteration, StatsCollector, StepMapper,
                                         iteration_from_stats, target_for)
from cgwatch.backends import vllm_version as V
from cgwatch.cli import main
from cgwatch.engine.control import Command
from cgwatch.errors import CgwatchError
from cgwatch.report import build_report
from cgwatch.trace import TraceWriter, read_trace
from cgwatch.workload import WorkloadSpec

SIZES = [1, 2, 4, 8, 16, 24, 32]


def stats(unpadded, padded, mode, ctx_req=0, ctx_tok=0, gen_req=None, gen_tok=None, details=True, dummy=False):
    gen_req = unpadded - ctx_tok if gen_req is None else gen_req
    cg = NS(num_unpadded_tokens=unpadded, num_padded_tokens=padded, num_paddings=padded - unpadded, runtime_mode=mode)
    d = NS(num_ctx_requests=ctx_req, num_ctx_tokens=ctx_tok, num_generation_requests=gen_req,
           num_generation_tokens=gen_req if gen_tok is None else gen_tok, is_dummy=dummy) if details else None
    return NS(cudagraph_stats=cg, iteration_details=d)


# ---- the pure mapping ----

def test_decode_step_on_a_graph_maps_to_a_step_record():
    it = iteration_from_stats(stats(6, 8, "FULL"), NS(num_generation_tokens=6))
    rec = StepMapper(SIZES, graph_mode=True, cudagraph_mode="FULL_AND_PIECEWISE").record(it, 3, 1.5, 0.0042)
    assert rec == {"type": "step", "i": 3, "t": 1.5, "batch": 6, "target": 8, "bucket": 8, "mode": "graph",
                   "reason": None, "padded": 2, "host_us": 4200.0, "gpu_ms": None, "gap_us": None, "tokens": 6,
                   "runtime_mode": "FULL", "rows": 6, "phase": "decode", "prompt_tokens": 0}
    assert R.step_ms(rec) == pytest.approx(4.2)


@pytest.mark.parametrize("graph_mode, cg_mode, sizes, batch, reason, target", [
    (False, "NONE", SIZES, 6, R.REASON_EAGER_MODE, 8),          # --enforce-eager (sizes kept for targets)
    (True, "NONE", [], 6, R.REASON_EAGER_MODE, None),           # --cudagraph-mode NONE: the user's choice
    (True, "FULL_AND_PIECEWISE", SIZES, 40, R.REASON_OVER_MAX, None),
    (True, "FULL_AND_PIECEWISE", [], 3, R.REASON_NO_GRAPHS, None),
    (True, "FULL_DECODE_ONLY", SIZES, 3, REASON_VLLM_NO_GRAPH, 4),  # the dispatcher chose eager
])
def test_eager_decode_steps_say_why(graph_mode, cg_mode, sizes, batch, reason, target):
    rec = StepMapper(sizes, graph_mode, cg_mode).record(iteration_from_stats(stats(batch, batch, "NONE")), 0, 0.0, 1e-3)
    assert (rec["mode"], rec["bucket"], rec["padded"], rec["reason"], rec["target"]) == ("eager", None, 0, reason, target)
    assert rec["runtime_mode"] == "NONE" and rec["tokens"] == batch


def test_mixed_and_prefill_forwards_are_steps_with_requests_and_rows_apart():
    mapper = StepMapper(SIZES, True, "FULL_AND_PIECEWISE")
    mixed = iteration_from_stats(stats(23, 24, "PIECEWISE", ctx_req=1, ctx_tok=20, gen_req=3),
                                 NS(num_generation_tokens=4))
    rec = mapper.record(mixed, 7, 2.0, 0.01, gpu_ms=1.5)
    assert rec == {"type": "step", "i": 7, "t": 2.0, "batch": 4, "rows": 23, "target": 24, "bucket": 24,
                   "mode": "graph", "runtime_mode": "PIECEWISE", "reason": None, "padded": 1, "host_us": 10000.0,
                   "gpu_ms": 1.5, "gap_us": None, "tokens": 4, "phase": "mixed", "prompt_tokens": 20}
    big = mapper.record(iteration_from_stats(stats(300, 300, "NONE", ctx_req=2, ctx_tok=300, gen_req=0)), 8, 2.1, 0.02)
    assert (big["phase"], big["batch"], big["rows"], big["bucket"], big["target"], big["reason"], big["padded"]) == \
        ("prefill", 2, 300, None, None, R.REASON_OVER_MAX, 0)
    # speculative decoding: 4 requests x (1 + 2 drafts) = 12 decode tokens in a FULL graph of 16: batch stays 4
    spec = mapper.record(iteration_from_stats(stats(12, 16, "FULL", gen_req=4, gen_tok=12), NS(num_generation_tokens=9)),
                         9, 2.2, 0.003)
    assert (spec["phase"], spec["batch"], spec["rows"], spec["bucket"], spec["padded"], spec["tokens"]) == \
        ("mixed", 4, 12, 16, 4, 9)      # without drafts configured, 3 tokens a request is recompute
    spec = StepMapper(SIZES, True, "FULL_AND_PIECEWISE", spec_tokens=2).record(
        iteration_from_stats(stats(12, 16, "FULL", gen_req=4, gen_tok=12), NS(num_generation_tokens=9)), 9, 2.2, 0.003)
    assert (spec["phase"], spec["batch"], spec["rows"], spec["prompt_tokens"]) == ("decode", 4, 12, 0)
    # a request resumed after preemption recomputes 40 tokens as "generation": prompt-like, not decode
    resumed = mapper.record(iteration_from_stats(stats(43, 43, "NONE", gen_req=4, gen_tok=43)), 10, 2.3, 0.003)
    assert (resumed["phase"], resumed["batch"], resumed["rows"], resumed["prompt_tokens"]) == ("mixed", 4, 43, 39)


def test_stats_without_a_graph_stat_or_from_a_dummy_step_are_skipped():
    assert iteration_from_stats(NS(cudagraph_stats=None, iteration_details=None)) is None
    assert iteration_from_stats(NS()) is None
    assert iteration_from_stats(stats(1, 1, "NONE", dummy=True)) is None
    it = iteration_from_stats(stats(5, 8, "FULL", details=False))   # no details: counted as a decode step
    assert it.ctx_tokens is None and not it.is_prefill
    assert StepMapper(SIZES, True).record(it, 0, 0, 1e-3)["tokens"] == 5


def test_collector_feeds_pending_iterations_and_drains():
    c = StatsCollector()
    c.add(stats(2, 2, "FULL"), NS(num_generation_tokens=2))
    c.add(NS(cudagraph_stats=None))
    assert c.records_seen == 2
    assert c.drain() == [Iteration(2, 2, 0, "FULL", 0, 0, 2, 2, 2)] and c.drain() == []


def test_target_for():
    assert [target_for(SIZES, b) for b in (1, 3, 8, 9, 32, 33)] == [1, 4, 8, 16, 32, None]
    assert target_for([], 1) is None


def test_report_over_mapped_records(tmp_path):
    """Hit rate and padding waste in cgwatch report come out of vLLM-shaped stats unchanged."""
    mapper = StepMapper(SIZES, True, "FULL_AND_PIECEWISE")
    seq = [stats(6, 8, "FULL"), stats(8, 8, "FULL"), stats(3, 4, "FULL"), stats(40, 40, "NONE"),
           stats(23, 24, "PIECEWISE", ctx_req=1, ctx_tok=20, gen_req=3)]
    path = tmp_path / "v.jsonl"
    with TraceWriter(path, {"backend": "vllm", "model": {"name": "m"}}) as w:
        w.write(R.event(R.EV_CAPTURE_DONE, 0.0, sizes=SIZES, failed=[], pool_bytes=3 << 28, seconds=4.0,
                        pool="shared", pools=1, source="vllm", scope="total"))
        i = 0
        for k, s in enumerate(seq):
            rec = mapper.record(iteration_from_stats(s, NS(num_generation_tokens=s.cudagraph_stats.num_unpadded_tokens)),
                                i, k * 0.01, 0.005)
            i += rec["type"] == "step"
            w.write(rec)
        w.close({"steps": i, "tokens": 0, "duration_s": 0.05, "outcome": "completed", "t": 0.05})
    rep = build_report(read_trace(path))
    rows = {b["label"]: b for b in rep["buckets"]}
    assert rows["8"]["steps"] == 2 and rows["8"]["padding_waste_pct"] == pytest.approx(12.5)
    assert rows["4"]["padding_waste_pct"] == pytest.approx(25.0)
    assert rows[">32"]["misses"] == {"over_max": 1}
    assert rows["24"]["steps"] == 1 and rows["24"]["piecewise"] == 1 and rows["24"]["non_decode"] == 1
    t = rep["totals"]
    # every forward is a step: the mixed PIECEWISE one too (rows 23 of 4 requests, padded to 24)
    assert (t["steps"], t["graph_steps"], t["hit_pct"]) == (5, 4, 80.0)
    assert (t["full"], t["piecewise"], t["eager"]) == (3, 1, 1)
    assert t["padding_waste_pct"] == pytest.approx(100 * 4 / 44)
    assert t["prefills"] == 0 and t["gpu_busy_pct"] is None
    assert t["graph_pool_mib"] == 768.0 and rows["8"]["capture_s"] is None   # a total, not per bucket


# ---- the capture line and the quiet filter ----

def _record(name, msg, *args):
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


def test_capture_line_is_read_from_the_record_arguments_or_the_text():
    fmt = "Graph capturing finished in %.0f secs, took %.2f GiB"
    assert parse_capture(_record("x", fmt, 12.34, 0.5)) == (12.34, 1 << 29)
    assert parse_capture(_record("x", "Graph capturing finished in 7 secs, took 1.25 GiB")) == (7.0, int(1.25 * 2**30))
    assert parse_capture(_record("x", "something else %s", 1)) is None


def test_capture_tap_on_the_runner_loggers_keeps_the_line():
    tap = CaptureTap().install()
    log = logging.getLogger("vllm.v1.worker.gpu_model_runner")
    old = log.level
    log.setLevel(logging.INFO)
    try:
        log.info("Graph capturing finished in %.0f secs, took %.2f GiB", 3.0, 0.25)
        assert (tap.seconds, tap.bytes, tap.lines) == (3.0, 1 << 28, 1)
        tap.reset()
        assert tap.seconds is None
    finally:
        tap.uninstall()
        log.setLevel(old)


def test_quiet_filter_drops_only_per_step_lines():
    q = QuietStepLogs()
    assert not q.filter(_record("m", "%sIteration(%d): %d context requests", "", 1, 0))
    assert not q.filter(_record("m", "**CUDAGraph Config Settings:**\n\n- Mode: FULL"))
    assert q.filter(_record("m", "Avg prompt throughput: %.1f tokens/s", 1.0))


# ---- version ----

@pytest.mark.parametrize("text, ok", [("0.33.0", True), ("0.33.2+cu130", True), ("0.33.0rc1", True),
                                      ("0.26.0", True), ("0.26.1+cu130", True), ("0.29.3", True), ("0.32.1", True),
                                      ("0.25.1", False), ("0.34.0", False), ("1.0.0", False), ("dev", False)])
def test_version_check(text, ok):
    if ok:
        assert V.check_version(text) == text
    else:
        with pytest.raises(CgwatchError, match=r"not supported.*vllm >=0.26.0,<0.34.*0.26.x to 0.33.x.*cgwatch\[vllm\]"):
            V.check_version(text)


@pytest.mark.parametrize("text, v1, outputless", [("0.26.0", True, True), ("0.27.1", True, True),
                                                   ("0.28.0", True, False), ("0.29.9", True, False),
                                                   ("0.30.0", False, False), ("0.33.0", False, False)])
def test_adapters_follow_vllms_source(text, v1, outputless):
    a = V.adapter_for(text)
    assert a.force_v1_runner is v1 and a.read_outputless_steps is outputless
    assert bool(a.notes) is v1 and all("VLLM_USE_V2_MODEL_RUNNER=0" in n for n in a.notes)


# ---- config ----

def test_engine_kwargs_graph_and_eager():
    cfg = VllmEngineConfig(model="m", dtype="bf16", max_seq=512, max_capture_size=32, cudagraph_mode="full",
                           gpu_memory_utilization=0.5, workload=WorkloadSpec(max_concurrency=16))
    kw = cfg.engine_kwargs(True, [1, 2, 4])
    assert kw == {"model": "m", "dtype": "bfloat16", "max_model_len": 512, "seed": 0, "max_num_seqs": 16,
                  "enforce_eager": False, "cudagraph_metrics": True, "enable_logging_iteration_details": True,
                  "disable_log_stats": False, "skip_tokenizer_init": True, "gpu_memory_utilization": 0.5,
                  "cudagraph_capture_sizes": [1, 2, 4],   # no max with a list: vLLM refuses one != max(list)
                  "compilation_config": {"cudagraph_mode": "FULL"}}
    assert cfg.engine_kwargs(True, None)["max_cudagraph_capture_size"] == 32
    eager = cfg.engine_kwargs(False, [1, 2, 4])
    assert eager["enforce_eager"] is True and "cudagraph_capture_sizes" not in eager
    assert "compilation_config" not in eager
    assert "cudagraph_capture_sizes" not in cfg.engine_kwargs(True, None)   # None: vLLM's default list


@pytest.mark.parametrize("kw, needle", [
    (dict(model=""), "needs --model"),
    (dict(model="m", mode="fast"), "--mode"),
    (dict(model="m", dtype="int4"), "--dtype"),
    (dict(model="m", cudagraph_mode="HALF"), "--cudagraph-mode"),
    (dict(model="m", gpu_memory_utilization=1.5), "--gpu-memory-utilization"),
    (dict(model="m", max_num_seqs=0), "--max-num-seqs"),
    (dict(model="m", capture_sizes=(64,), max_capture_size=32), "no capture size"),
    (dict(model="m", schedule=((3, Command("padding", 0.2)),)), "no max padding ratio"),
])
def test_config_refuses_bad_values(kw, needle):
    with pytest.raises(CgwatchError, match=needle):
        VllmEngineConfig(**kw)


def test_small_helpers():
    assert parse_cudagraph_mode("full_and_piecewise") == "FULL_AND_PIECEWISE"
    assert drop_above([8, 1, 4, 64, 4], 8) == ((1, 4, 8), [64])
    assert drop_above([2, 1], None) == ((1, 2), [])


# ---- the command line ----

def err_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_vllm_not_installed_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(V.importlib.util, "find_spec", lambda name: None)
    assert main(["run", "--headless", "--backend", "vllm", "--model", "meta-llama/Llama-3.2-1B"]) == 2
    assert err_line(capsys) == ("cgwatch: --backend vllm needs the vllm package, >=0.26.0,<0.34 and the torch it "
                                "pins: pip install 'cgwatch[vllm]' (vllm 0.33) or 'cgwatch[vllm026]' (vllm 0.26)")


def test_vllm_outside_the_tested_range_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(V.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(V.importlib.metadata, "version", lambda name: "0.25.1")
    assert main(["daemon", "--backend", "vllm", "--model", "m"]) == 2
    line = err_line(capsys)
    assert "vllm 0.25.1 is not supported" in line and "0.26.x to 0.33.x" in line


@pytest.mark.parametrize("args, needle", [
    (["--backend", "vllm"], "needs --model"),
    (["--backend", "vllm", "--model", "m", "--max-padding-ratio", "0.2"], "--max-padding-ratio"),
    (["--backend", "vllm", "--model", "m", "--graph-pool", "private"], "--graph-pool"),
    (["--backend", "vllm", "--model", "m", "--device", "cuda:1"], "CUDA_VISIBLE_DEVICES"),
    (["--backend", "vllm", "--model", "m", "--fail-capture-bucket", "8"], "--fail-capture-bucket"),
    (["--backend", "vllm", "--model", "m", "--profile-steps", "1:2"], "--profile-steps"),
    (["--backend", "vllm", "--model", "m", "--cudagraph-mode", "half"], "invalid choice"),
    (["--backend", "vllm", "--model", "m", "--gpu-memory-utilization", "0"], "--gpu-memory-utilization"),
    (["--backend", "vllm", "--model", "m", "--max-num-seqs", "0"], "--max-num-seqs"),
    (["--backend", "vllm", "--model", "m", "--cudagraph-capture-sizes", "x"], "capture size"),
    (["--backend", "vllm", "--model", "m", "--arrival", "nope"], "nope"),
    (["--backend", "vllm", "--model", "m", "--at", "3:padding=0.1"], "no max padding ratio"),
    (["--backend", "tensorrt"], "invalid choice"),
    (["--gpu-memory-utilization", "0.5"], "--backend vllm only"),
    (["--cudagraph-mode", "FULL"], "--backend vllm only"),
    (["--max-num-seqs", "8"], "--backend vllm only"),
])
def test_bad_flags_are_one_line(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(V, "require_vllm", lambda: "0.33.0")
    assert main(["run", "--headless", *args]) != 0
    assert needle in err_line(capsys)


def test_flags_map_to_the_vllm_config(monkeypatch):
    from cgwatch.cli import _engine_config, build_parser
    monkeypatch.setattr(V, "require_vllm", lambda: "0.33.0")

    def cfg(*args):
        return _engine_config(build_parser().parse_args(["run", "--backend", "vllm", "--model", "m", *args]))

    c = cfg()
    assert isinstance(c, VllmEngineConfig) and c.capture_sizes is None and c.num_seqs == 64 and c.mode == "graph"
    c = cfg("--enforce-eager", "--cudagraph-capture-sizes", "1,2,4,8", "--max-cudagraph-capture-size", "4",
            "--cudagraph-mode", "piecewise", "--gpu-memory-utilization", "0.6", "--max-num-seqs", "12",
            "--max-seq", "256", "--dtype", "fp16", "--at", "10:graph")
    assert (c.mode, c.capture_sizes, c.max_capture_size, c.cudagraph_mode) == ("eager", (1, 2, 4, 8), 4, "PIECEWISE")
    assert (c.gpu_memory_utilization, c.num_seqs, c.max_seq, c.dtype) == (0.6, 12, 256, "fp16")
    assert c.schedule == ((10, Command("mode", "graph")),)
    assert c.engine_kwargs(True, c.capture_sizes)["cudagraph_capture_sizes"] == [1, 2, 4, 8]
    assert "tensor_parallel_size" not in c.engine_kwargs(True, None)
    c = cfg("--tp", "2")   # passed through to vLLM, whose stats stay per engine
    assert c.tensor_parallel_size == 2 and c.engine_kwargs(True, None)["tensor_parallel_size"] == 2
    assert c.engine_kwargs(False, None)["tensor_parallel_size"] == 2


def test_default_path_never_imports_vllm():
    code = ("import sys; from cgwatch.cli import main; "
            "rc = main(['run', '--headless', '--steps', '2', '--max-seq', '32', '--max-concurrency', '2', "
            "'--prompt-len', 'fixed:2', '--output-len', 'fixed:4']); "
            "bad = [m for m in sys.modules if m == 'vllm' or m.startswith(('vllm.', 'cgwatch.backends.vllm_e', "
            "'cgwatch.backends.vllm_s', 'cgwatch.backends.vllm_l'))]; "
            "print('RC', rc, 'IMPORTED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert "RC 0 IMPORTED []" in out.stdout, out.stdout + out.stderr


# ---- the engine adapter over a fake vLLM ----

@pytest.fixture
def fake(monkeypatch):
    import fake_vllm
    fake_vllm.install(monkeypatch)
    return fake_vllm.FakeLLMEngine


def vcfg(**kw):
    base = dict(model="fake/model", max_seq=128, sample_interval_s=0.05,
                workload=WorkloadSpec(arrival="poisson:0.6", prompt_len="uniform:4:12", output_len="uniform:4:12",
                                      max_concurrency=12, max_seq=128, seed=3))
    return VllmEngineConfig(**(base | kw))


def run_engine(cfg, steps, commands=()):
    recs = []
    eng = make_engine(cfg, recs.append)
    head = eng.header()
    eng.start()
    for at, cmd in commands:
        eng.run(at)
        replies = []
        eng.submit(Command(cmd.name, cmd.value, reply=replies.append))
        eng.apply_pending()
        recs.append({"type": "reply", "cmd": cmd.name, **replies[0]})
    eng.run(steps)
    summary = eng.close()
    return head, recs, summary


def kinds(recs, kind):
    return [r for r in recs if r["type"] == "event" and r["kind"] == kind]


def test_adapter_streams_steps_prefills_and_the_capture_total(fake):
    head, recs, summary = run_engine(vcfg(), 40)
    assert head["backend"] == "vllm" and head["vllm"] == "0.33.0" and head["model"]["name"] == "fake/model"
    assert head["config"]["capture_sizes"] == [1, 2, 4, 8, 16, 24, 32] and head["model_runner"] == "v2"
    kw = fake.builds[0]
    assert kw["cudagraph_metrics"] and kw["enable_logging_iteration_details"] and kw["max_num_seqs"] == 12
    done = kinds(recs, "capture_done")
    assert len(done) == 1 and done[0]["scope"] == "total" and done[0]["source"] == "vllm"
    assert done[0]["seconds"] == 1.25 and done[0]["pool_bytes"] == 1 << 29 and done[0]["sizes"][-1] == 32
    steps = [r for r in recs if r["type"] == "step"]
    assert not [r for r in recs if r["type"] == "prefill"]          # every forward is a step record
    assert len(steps) == 40 == summary["steps"] and [s["i"] for s in steps] == list(range(40))
    decode = [s for s in steps if s["phase"] == "decode"]
    pre = [s for s in steps if s["phase"] != "decode"]
    assert decode and all(s["gpu_ms"] is None and s["host_us"] > 0 and s["runtime_mode"] == "FULL" for s in decode)
    assert all(s["bucket"] == s["target"] and s["padded"] == s["bucket"] - s["rows"] for s in decode)
    assert all(s["rows"] == s["batch"] for s in decode)
    assert pre and all(p["prompt_tokens"] >= 4 and p["rows"] > p["batch"] for p in pre)
    assert all(p["runtime_mode"] == ("PIECEWISE" if p["rows"] <= 32 else "NONE") for p in pre)
    assert summary["tokens"] == sum(s["tokens"] for s in steps)
    assert head["gpu_timing"].startswith("n/a")
    assert kinds(recs, "state")[0]["backend"] == "vllm" and any(r["type"] == "sample" for r in recs)
    assert fake.shutdowns == 1


def test_toggle_and_recapture_restart_vllm_and_say_so(fake):
    cmds = [(10, Command("mode", "eager")), (20, Command("mode", "graph")),
            (30, Command("recapture", [1, 2, 4, 8, 12])), (35, Command("padding", 0.2)), (36, Command("mark", "x"))]
    _, recs, _ = run_engine(vcfg(), 45, cmds)
    assert len(fake.builds) == 4 and fake.shutdowns == 4
    assert [b["enforce_eager"] for b in fake.builds] == [False, True, False, False]
    assert fake.builds[3]["cudagraph_capture_sizes"] == [1, 2, 4, 8, 12]
    restarts = kinds(recs, "restart")
    assert [r["reason"] for r in restarts] == ["eager mode", "graph mode", "capture sizes [1, 2, 4, 8, 12]"]
    assert restarts[0]["old"]["mode"] == "graph" and restarts[0]["new"]["mode"] == "eager"
    assert restarts[2]["new"]["cudagraph_capture_sizes"] == [1, 2, 4, 8, 12]
    assert all(r["seconds"] >= 0 for r in restarts)
    alerts = [r["message"] for r in recs if r["type"] == "event" and r["kind"] == "alert"]
    assert sum(m.startswith("vLLM restarted in") for m in alerts) == 3
    replies = {r["cmd"]: r for r in recs if r["type"] == "reply"}
    assert replies["padding"]["ok"] is False and "no max padding ratio" in replies["padding"]["error"]
    assert replies["recapture"]["state"]["sizes"] == [1, 2, 4, 8, 12]
    eager = [r for r in recs if r["type"] == "step" and 10 <= r["i"] < 20]
    assert eager and all(r["reason"] == "eager_mode" for r in eager)
    assert all(r["target"] is not None for r in eager if r["phase"] == "decode")
    later = [r for r in recs if r["type"] == "step" and r["i"] >= 30]
    assert all(r["target"] in (1, 2, 4, 8, 12, None) for r in later)
    assert len(kinds(recs, "capture_done")) == 3    # the first build, back to graph, the recapture
    # live requests are re-submitted after a restart (with their tokens so far): a prefill forward follows
    first_restart = recs.index(restarts[0])
    assert any(r["type"] == "step" and r["phase"] != "decode" for r in recs[first_restart:first_restart + 5])


def test_replay_workload_aborts_what_it_retires(fake, tmp_path):
    f = tmp_path / "b.txt"
    f.write_text("4 4 4 1 1 1\n")
    cfg = vcfg(workload=WorkloadSpec(arrival=f"replay:{f}", prompt_len="fixed:4", output_len="fixed:50",
                                     max_concurrency=4, max_seq=128))
    recs = []
    eng = make_engine(cfg, recs.append)
    eng.run()
    llm = eng.llm
    eng.close()
    assert len(llm.aborted) == 3
    steps = [(r["phase"], r["batch"]) for r in recs if r["type"] == "step"]
    assert steps == [("prefill", 4), ("decode", 4), ("decode", 4), ("decode", 1), ("decode", 1), ("decode", 1)]


def test_a_failed_restart_goes_back_and_refuses_the_command(fake):
    recs = []
    eng = make_engine(vcfg(), recs.append)
    eng.run(5)
    fake.fail_next = 1
    replies = []
    eng.submit(Command("recapture", [1, 2], reply=replies.append))
    eng.apply_pending()
    assert replies[0]["ok"] is False and "back on the previous config" in replies[0]["error"]
    assert eng.sizes == [1, 2, 4, 8, 16, 24, 32]
    eng.run(10)
    assert eng.i == 10
    eng.close()


def test_vllm_build_error_is_one_line(fake, capsys, monkeypatch):
    fake.fail_models.add("no/such-model")
    monkeypatch.setattr(V, "require_vllm", lambda: "0.33.0")
    assert main(["run", "--headless", "--backend", "vllm", "--model", "no/such-model", "--steps", "3"]) == 1
    assert err_line(capsys) == ("cgwatch: vLLM could not start 'no/such-model' (graph mode): "
                                "ValueError: cannot load no/such-model")


def test_headless_cli_run_with_the_fake_writes_a_trace_report_reads(fake, tmp_path, monkeypatch, capsys):
    from cgwatch.headless import StatusLine
    monkeypatch.setattr(V, "require_vllm", lambda: "0.33.0")
    monkeypatch.setattr(StatusLine.__init__, "__defaults__", (sys.stdout, 1.0))   # bound at import, before capsys
    trace = tmp_path / "v.jsonl"
    assert main(["run", "--headless", "--backend", "vllm", "--model", "fake/m", "--steps", "12", "--max-seq", "64",
                 "--max-concurrency", "4", "--prompt-len", "fixed:3", "--output-len", "fixed:6",
                 "--at", "6:eager", "--record", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "vLLM 0.33.0" in out and "completed: 12 steps" in out
    rep = build_report(read_trace(trace))
    assert rep["header"]["backend"] == "vllm" and rep["totals"]["steps"] == 12
    assert rep["totals"]["mode_switches"] == 1 and rep["totals"]["graph_pool_mib"] == 512.0
    misses = sum(sum(b["misses"].values()) for b in rep["buckets"])
    assert misses == 12 - rep["totals"]["graph_steps"] > 0


def test_tui_state_shows_the_restart_and_vllm_rows(fake):
    """The TUI's view state folds a vLLM run like any other: restart lines in the log, bucket rows."""
    from cgwatch.daemon import header_record
    from cgwatch.tui.state import ViewState
    head, recs, _ = run_engine(vcfg(), 25, [(10, Command("mode", "eager"))])
    state = ViewState()
    state.fold(header_record(head))
    for r in recs:
        if r["type"] != "reply":
            state.fold(r)
    text = [line for _, _, line in state.log]
    assert any(t.startswith("INFO restarting vLLM for eager mode") for t in text)
    assert any(t.startswith("INFO vLLM restarted in") for t in text)
    assert any(t.startswith("captured [1,2,4,8,16,24,32] in 1.25 s, pool 512.0 MiB") for t in text)
    assert state.mode == "eager" and state.sizes == [1, 2, 4, 8, 16, 24, 32]
    rows = {r["label"]: r for r in state.bucket_rows()}
    assert rows and all(r["capture_s"] is None and r["graph_mib"] is None for r in rows.values())
    assert state.totals()["graph_pool_mib"] == 512.0 and state.totals()["steps"] == 25


def test_daemon_serves_a_vllm_run_and_restarts_on_a_client_command(fake, tmp_path):
    """The daemon path (run_daemon -> make_engine) with the vLLM backend: snapshot header says vllm,
    a client's mode command restarts vLLM and is acknowledged with the new state."""
    import tempfile
    import threading

    from cgwatch.client import connect
    from cgwatch.daemon import run_daemon

    sock_dir = tempfile.mkdtemp(prefix="cgv", dir="/tmp")   # short: Unix socket paths are limited to ~107 bytes
    sock = f"unix:{sock_dir}/d.sock"
    stop, ready = threading.Event(), threading.Event()
    result = {}

    def serve():
        result["summary"] = run_daemon(vcfg(), sock, None, str(tmp_path / "d.jsonl"), None, None, stop,
                                       announce=lambda line: ready.set())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(30)
    with connect(sock) as c:
        head = None
        while head is None:
            msg = c.recv(timeout=5)
            if msg and msg.get("type") == "header":
                head = msg
        assert head["backend"] == "vllm" and head["vllm"] == "0.33.0"
        ack = c.wait_ack(c.send("mode", "eager"), timeout=30)
        assert ack["ok"] and ack["state"]["mode"] == "eager" and ack["state"]["backend"] == "vllm"
        bad = c.wait_ack(c.send("padding", 0.2), timeout=30)
        assert bad["ok"] is False and "no max padding ratio" in bad["error"]
    stop.set()
    t.join(30)
    os.rmdir(sock_dir)   # the daemon removed its socket file
    trace = read_trace(tmp_path / "d.jsonl")
    assert trace.end["outcome"] == "interrupted"
    assert any(r.get("kind") == "restart" for r in trace.records)
