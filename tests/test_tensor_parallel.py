"""Tensor parallelism on the CPU (gloo, two ranks): sharding, the rank protocol, greedy tokens equal to
one rank, commands on every rank, per-rank step times, a rank killed mid-run. Real NCCL capture:
test_tensor_parallel_gpu.py."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cgwatch.engine import ranks as RK
from cgwatch.engine.control import Command, parse_scheduled
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.engine.model import PRESETS, ModelArgs, build_random
from cgwatch.engine.rank_merge import RankMerge, SkewWatch
from cgwatch.engine.tensor_parallel import check_shapes, full_shape, fused_parts, shard, shard_dim
from cgwatch.errors import CgwatchError
from cgwatch.workload import WorkloadSpec

ROOT = Path(__file__).resolve().parents[1]


# -- sharding (pure) ----------------------------------------------------------------------------

def test_shard_rules_megatron():
    assert shard_dim("layers.0.self_attn.qkv_proj.weight") == 0
    assert shard_dim("layers.0.self_attn.qkv_proj.bias") == 0
    assert shard_dim("layers.3.mlp.gate_up_proj.weight") == 0
    assert shard_dim("layers.3.self_attn.o_proj.weight") == 1
    assert shard_dim("layers.3.mlp.down_proj.weight") == 1
    for name in ("embed_tokens.weight", "lm_head.weight", "norm.weight", "layers.0.input_layernorm.weight"):
        assert shard_dim(name) is None
    w = torch.arange(24.0).view(4, 6)
    assert full_shape("layers.0.mlp.down_proj.weight", torch.Size([4, 3]), 2) == (4, 6)
    assert torch.equal(shard(w, "layers.0.mlp.down_proj.weight", 1, 2), w[:, 3:])
    assert torch.equal(shard(w, "layers.0.self_attn.o_proj.weight", 0, 2), w[:, :3])
    assert shard(w, "lm_head.weight", 1, 2) is w


def test_fused_layers_shard_part_by_part():
    """Rank r's fused qkv is its block of q's rows, then k's, then v's; gate/up alike."""
    a = PRESETS["tiny"]
    parts = fused_parts("layers.0.self_attn.qkv_proj.weight", a)
    assert parts == [a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim]
    assert fused_parts("layers.1.mlp.gate_up_proj.weight", a) == [a.ffn_dim, a.ffn_dim]
    assert fused_parts("layers.1.mlp.down_proj.weight", a) is None
    rows = torch.arange(12.0)[:, None].expand(12, 3)          # parts of 4, 4, 4 rows
    got = shard(rows, "layers.0.self_attn.qkv_proj.weight", 1, 2, [4, 4, 4])
    assert got[:, 0].tolist() == [2, 3, 6, 7, 10, 11]
    assert shard(rows, "layers.0.mlp.gate_up_proj.weight", 0, 2, [6, 6])[:, 0].tolist() == [0, 1, 2, 6, 7, 8]


def test_shapes_must_split_evenly():
    check_shapes(PRESETS["llama-70b"], 8)
    with pytest.raises(CgwatchError, match="32 attention heads, not divisible by 3"):
        check_shapes(PRESETS["llama-8b"], 3)
    with pytest.raises(CgwatchError, match="must be >= 1"):
        check_shapes(PRESETS["tiny"], 0)


def test_llama_70b_preset_shapes():
    a = PRESETS["llama-70b"]
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.ffn_dim, a.vocab_size) == (8192, 80, 64, 8, 28672, 128256)
    assert 70.0e9 < a.n_params() < 71.0e9      # 141 GB in bf16: 70.6 GB a rank with N=2


def test_shards_hold_exactly_the_whole_model():
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=50)
    whole = dict(build_random(args, "cpu", torch.float32, seed=3).named_parameters())
    parts = [dict(build_random(args, "cpu", torch.float32, seed=3, rank=r, tp_size=2).named_parameters())
             for r in range(2)]
    for name, w in whole.items():
        d, fused = shard_dim(name), fused_parts(name, args)
        if d is None:
            got = parts[0][name]
        elif fused is None:
            got = torch.cat([parts[0][name], parts[1][name]], dim=d)
        else:   # rank r holds its block of each part, in order: reassemble part by part
            local = [n // 2 for n in fused]
            pieces = [p[name].split(local, dim=0) for p in parts]
            got = torch.cat([torch.cat([pieces[0][i], pieces[1][i]]) for i in range(len(fused))])
        assert torch.equal(got, w), name


# -- the protocol's encodings and the merge (pure) ----------------------------------------------

def test_plan_and_measures_round_trip():
    n = RK.vector_len(8)
    v = RK.encode_plan(RK.OP_STEP, 41, 8, [3, 1, 7], [(7, 120), (1, 5)], n)
    assert RK.decode_plan(v) == (RK.OP_STEP, 41, 8, [3, 1, 7], [(7, 120), (1, 5)])
    assert RK.decode_plan(RK.encode_plan(RK.OP_NOOP, 0, None, [], [], n))[2] is None
    m = [(i, 0.5 * i) for i in range(RK.MEASURES + 3)] + [(99, None)]
    assert RK.decode_measures(RK.encode_measures(m, n)) == m[:RK.MEASURES]
    assert RK.decode_measures(RK.encode_measures([(4, None)], n)) == [(4, None)]


def _step(i, ms):
    return {"type": "step", "i": i, "gpu_ms": ms, "host_us": 1.0}


def test_merge_waits_for_every_rank_and_keeps_order():
    out = []
    m = RankMerge(3, out.append, lambda: 0.0, keep=4)
    m.own(_step(0, 1.0))
    m.add(1, [(0, 1.5)])
    assert out == []                      # rank 2 not in yet
    m.add(2, [(0, 1.2), (1, 2.0)])        # a rank can be ahead of rank 0
    assert [r["i"] for r in out] == [0]
    assert out[0]["rank_ms"] == [1.0, 1.5, 1.2] and out[0]["skew_ms"] == 0.5
    m.own(_step(1, 2.0))
    m.add(1, [(1, None)])                 # not measured
    assert out[1]["rank_ms"] == [2.0, None, 2.0] and out[1]["skew_ms"] is None
    for i in range(2, 8):                 # rank 1 and 2 silent: records leave after ``keep``
        m.own(_step(i, 1.0))
    assert [r["i"] for r in out] == [0, 1, 2, 3]
    m.flush(force=True)
    assert [r["i"] for r in out] == list(range(8)) and out[-1]["rank_ms"] == [1.0, None, None]


def test_skew_alert_once_for_a_persistently_slow_rank():
    out = []
    w = SkewWatch(2, out.append, lambda: 1.0, window=20)
    for i in range(40):
        w.add({"rank_ms": [1.0, 1.3], "skew_ms": 0.3})
    alerts = [r for r in out if r["kind"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["rank"] == 1 and "rank 1 is persistently slower" in alerts[0]["message"]
    out.clear()
    w2 = SkewWatch(2, out.append, lambda: 1.0, window=20)
    for i in range(40):                   # the slowest alternates: no alert
        w2.add({"rank_ms": [1.0, 1.3] if i % 2 else [1.3, 1.0], "skew_ms": 0.3})
    for i in range(40):                   # same rank, negligible skew: no alert
        w2.add({"rank_ms": [1.0, 1.001], "skew_ms": 0.001})
    assert out == []


# -- two ranks on the CPU (gloo) ----------------------------------------------------------------

def _cfg(tp, model="tiny", schedule=(), steps_len="fixed:12", device="cpu", **kw):
    return EngineConfig(model=model, device=device, max_seq=64, tensor_parallel_size=tp, sample_interval_s=0.2,
                        schedule=tuple(parse_scheduled(s) for s in schedule),
                        workload=WorkloadSpec(arrival="poisson:0.6", max_concurrency=4, max_seq=64,
                                              prompt_len="uniform:4:12", output_len=steps_len, seed=1), **kw)


def _run(cfg, steps, during=None):
    """Run on rank 0 (this process); returns (records, tokens per step, summary)."""
    recs, tokens = [], []
    e = Engine(cfg, recs.append)
    decode = e.state.decode

    def recorded(rows):
        logits, new = decode(rows)
        tokens.append(new[:rows].tolist())
        return logits, new
    e.state.decode = recorded
    if during:
        during(e)
    try:
        e.run(steps)
    finally:
        summary = e.close()
    return recs, tokens, summary


SCHEDULE = ("5:eager", "8:graph", "10:recapture=1,2,4", "12:padding=0.25", "14:mark=x", "16:rate=1.0")


def test_two_ranks_greedy_tokens_equal_one_rank_with_commands():
    r1, t1, s1 = _run(_cfg(1, schedule=SCHEDULE), 30)
    r2, t2, s2 = _run(_cfg(2, schedule=SCHEDULE), 30)
    assert t1 and t2 == t1                                    # fp32, same weights, split over 2 ranks
    assert s2["steps"] == 30 and "reason" not in s2
    steps = [r for r in r2 if r["type"] == "step"]
    assert [r["i"] for r in steps] == list(range(30))        # every step, in order
    assert all(len(r["rank_ms"]) == 2 and None not in r["rank_ms"] for r in steps)
    assert all(r["skew_ms"] == pytest.approx(max(r["rank_ms"]) - min(r["rank_ms"]), abs=1e-3) for r in steps)
    kinds = [r["kind"] for r in r2 if r["type"] == "event"]
    for k in ("mode", "recapture", "max_padding_ratio", "mark", "rate"):
        assert k in kinds
    assert "rank_ms" not in [r for r in r1 if r["type"] == "step"][0]   # N=1 traces are unchanged


def test_pause_heartbeats_and_resume():
    def resume_later(e):
        e.submit(Command("pause", True))
        threading.Timer(1.0, lambda: e.submit(Command("pause", False))).start()
    recs, tokens, summary = _run(_cfg(2), 6, during=resume_later)
    pauses = [r["paused"] for r in recs if r["type"] == "event" and r["kind"] == "pause"]
    assert pauses == [True, False] and summary["steps"] == 6


@pytest.fixture
def hf_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=101, max_position_embeddings=256)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    return str(tmp_path)


def test_two_ranks_equal_one_rank_on_a_local_checkpoint(hf_checkpoint):
    _, t1, _ = _run(_cfg(1, model=hf_checkpoint), 12)
    _, t2, _ = _run(_cfg(2, model=hf_checkpoint), 12)
    assert t1 and t2 == t1


def test_two_ranks_with_fused_kernels_equal_one_rank_plain(hf_checkpoint, triton_interpret):
    """The fused kernels on each rank's share of the heads (Triton's interpreter on the CPU), the
    all-reduces between them: the greedy tokens of one plain rank (fp32)."""
    _, t1, _ = _run(_cfg(1, model=hf_checkpoint, kernels="plain"), 10)
    r2, t2, _ = _run(_cfg(2, model=hf_checkpoint, kernels="fused"), 10)
    assert t1 and t2 == t1
    assert [r["kernels"] for r in r2 if r.get("kind") == "state"][0] == "fused"


def test_bad_tensor_parallel_settings_are_one_line_errors(tmp_path):
    with pytest.raises(CgwatchError, match="not divisible by 3"):
        Engine(_cfg(3), lambda r: None)
    with pytest.raises(CgwatchError, match="rank 5 is not a rank"):
        Engine(_cfg(2, fail_capture_on=((8, 5),)), lambda r: None)
    with pytest.raises(CgwatchError, match="use auto, cuda or cpu"):
        Engine(EngineConfig(device="cuda:1", tensor_parallel_size=2), lambda r: None)


def _settle_rank(rank, port, q):
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=60),
                                       wait_for_workers=False)
    r = RK.Ranks(rank, 2, store, cuda=False)
    ok = rank == 0
    q.put((rank, r.settle_capture(ok, None if ok else "host_sync", None if ok else "hint", None if ok else "boom"),
           r.settle_capture(True, None, None, None)))
    r.stopped = True


def _two_ranks(target) -> list[tuple]:
    """Run ``target(rank, port, queue)`` in two spawned processes (a free port for their store); what each
    put on the queue, bounded waits, no process left behind."""
    import multiprocessing as mp
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        return [q.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def test_capture_agreement_names_the_failing_rank():
    """GraphManager settles every bucket with Ranks.settle_capture: a bucket failing on rank 1 only is
    disabled on both, with rank 1's cause (the GPU test does it through real capture)."""
    got = {item[0]: item[1:] for item in _two_ranks(_settle_rank)}
    for rank in (0, 1):
        assert got[rank][0] == (1, "host_sync", "hint", "boom")
        assert got[rank][1] == (None, None, None, None)


# -- the command line: a run with two ranks, a rank killed mid-run --------------------------------

def _cgwatch(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "cgwatch", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _records(path):
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass                            # a partial last line while it is written
    return out


def test_killed_rank_ends_the_run_with_a_reason(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _cgwatch("run", "--headless", "--tp", "2", "--max-concurrency", "4", "--max-seq", "64",
                 "--record", str(trace), "--sample-interval", "0.2")
    try:
        deadline = time.monotonic() + 180
        while sum(r.get("type") == "step" for r in _records(trace)) < 10:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no steps within 180 s"
            time.sleep(0.2)
        head = _records(trace)[0]
        assert head["tensor_parallel_size"] == 2 and [r["rank"] for r in head["ranks"]] == [0, 1]
        os.kill(head["ranks"][1]["pid"], signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1
    assert "rank 1 was killed by SIGKILL" in err and "Traceback" not in err
    end = _records(trace)[-1]
    assert end["type"] == "end" and end["outcome"] == "error" and end["reason"] == "rank 1 was killed by SIGKILL"
    assert sum(r["type"] == "step" for r in _records(trace)) >= 10   # what was recorded stays


def _run_until_steps(trace, n: int):
    """A headless two-rank run in a process group of its own, once it has recorded ``n`` steps."""
    p = _cgwatch("run", "--headless", "--tp", "2", "--max-concurrency", "4", "--max-seq", "64",
                 "--record", str(trace), start_new_session=True)
    deadline = time.monotonic() + 180
    while sum(r.get("type") == "step" for r in _records(trace)) < n:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no steps within 180 s"
        time.sleep(0.2)
    return p


def test_a_stop_sent_to_the_whole_group_ends_the_run_as_on_one_rank(tmp_path):
    """``timeout``, a systemd stop or a closed terminal signal every process of the group: rank 0 ends the run
    ("interrupted", the trace closed) before a follower's grace is up; without the grace the follower died
    first and the run ended as an error, "rank 1 was killed by SIGTERM"."""
    trace = tmp_path / "t.jsonl"
    p = _run_until_steps(trace, 10)
    try:
        follower = _records(trace)[0]["ranks"][1]["pid"]
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    end = _records(trace)[-1]
    assert end["type"] == "end" and end["outcome"] == "interrupted" and "reason" not in end, end
    assert "interrupted" in out + err and "Traceback" not in err and "RankLost" not in err
    deadline = time.monotonic() + 30
    while _alive(follower) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(follower)


def test_sigterm_to_one_follower_ends_the_run_after_its_grace(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _run_until_steps(trace, 10)
    try:
        os.kill(_records(trace)[0]["ranks"][1]["pid"], signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 1 and "rank 1 was killed by SIGTERM" in err and "Traceback" not in err
    end = _records(trace)[-1]
    assert end["outcome"] == "error" and end["reason"] == "rank 1 was killed by SIGTERM"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_killed_rank_0_leaves_no_rank_behind(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _cgwatch("run", "--headless", "--tp", "2", "--max-concurrency", "4", "--max-seq", "64",
                 "--record", str(trace))
    try:
        deadline = time.monotonic() + 180
        while sum(r.get("type") == "step" for r in _records(trace)) < 3:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no steps within 180 s"
            time.sleep(0.2)
        follower = _records(trace)[0]["ranks"][1]["pid"]
        p.kill()
        p.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while _alive(follower) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(follower)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_bench_with_two_ranks(capsys, tmp_path):
    """The bench drives both ranks through Engine.call_all/step; rows get the all-reduce share, the plan cost
    and the skew."""
    from cgwatch.cli import main
    assert main(["bench", "--tp", "2", "--batch-sizes", "1,2", "--steps", "4", "--warmup", "1", "--tokens", "4",
                 "--max-seq", "64", "--prompt-len", "8", "--json", "--record", str(tmp_path / "b.jsonl")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tensor_parallel_size"] == 2 and [r["batch"] for r in res["rows"]] == [1, 2]
    for row in res["rows"]:
        e = row["eager"]
        assert e["n"] == 4 and e["plan_us_p50"] > 0 and e["skew_ms_p50"] is not None
        assert 0 < e["allreduce_pct"] < 100
    steps = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines() if '"type":"step"' in x]
    assert steps and all(len(s["rank_ms"]) == 2 for s in steps)
    assert main(["bench", "--tp", "2", "--with-compile", "--no-record"]) == 2


class _FakeGraph:
    def __init__(self):
        self.was_reset = False

    def reset(self):
        self.was_reset = True


class _FakeState:
    def snapshot(self):
        return None

    def restore(self, snap):
        pass


def _capture_round(rank, port, q):
    """One rank of GraphManager.capture with real gloo agreement; the CUDA parts are test doubles (no GPU
    here): bucket 4's capture fails on rank 1 only."""
    from cgwatch.engine.graphs import BucketGraph, GraphManager
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=60),
                                       wait_for_workers=False)
    r = RK.Ranks(rank, 2, store, cuda=False)
    torch.cuda.Stream = lambda *a, **k: None
    torch.cuda.synchronize = lambda *a, **k: None
    gm = GraphManager(_FakeState(), None, None, pool="private", ranks=r)
    graphs = {}

    def capture_graph(size, snap):
        if rank == 1 and size == 4:
            return BucketGraph(size, ok=False, cause="host_sync", hint="no .item()", error="operation not permitted")
        graphs[size] = g = _FakeGraph()
        return BucketGraph(size, ok=True, graph=g, pool_bytes=size * 100)
    gm._capture_graph = capture_graph
    gm._check = lambda b, snap: {"tokens_equal": True, "rel_err": 0.0}
    seen = []
    done = gm.capture([1, 2, 4, 8], lambda b: seen.append(b.event_fields()))
    q.put((rank, done["sizes"], done["failed"], seen, {s: g.was_reset for s, g in graphs.items()}))
    r.stopped = True


def test_a_capture_failing_on_one_rank_is_disabled_on_both():
    got = {item[0]: item[1:] for item in _two_ranks(_capture_round)}
    for rank in (0, 1):
        sizes, failed, events, reset = got[rank]
        assert (sizes, failed) == ([1, 2, 8], [4])
        ev4 = next(e for e in events if e["bucket"] == 4)
        assert not ev4["ok"] and ev4["failed_rank"] == 1 and ev4["cause"] == "host_sync"
        assert [(row["rank"], row["ok"]) for row in ev4["ranks"]] == [(0, True), (1, False)]
        assert ev4["ranks"][0]["check"] is None        # disabled before its check: no replay on either rank
        ev8 = next(e for e in events if e["bucket"] == 8)
        assert ev8["ok"] and [row["pool_bytes"] for row in ev8["ranks"]] == [800, 800]
        assert all(row["check"] == {"tokens_equal": True, "rel_err": 0.0} for row in ev8["ranks"])
    assert got[0][3] == {8: False, 4: True, 2: False, 1: False}   # rank 0 dropped its good graph of 4


def test_the_per_gpu_view_says_vllm_stats_are_per_engine():
    from cgwatch.tui.ranks import rank_lines
    from cgwatch.tui.state import ViewState
    st = ViewState()
    st.reset({"backend": "vllm", "tensor_parallel_size": 2})
    assert "per engine, not per rank" in "\n".join(rank_lines(st))
    st.reset({"backend": "pytorch"})
    assert rank_lines(st) == ["one GPU: no per-rank view (run with --tensor-parallel-size N)"]


class _DeadProc:
    pid = 4242

    def poll(self):
        return -signal.SIGKILL


def _bare_ranks(monkeypatch):
    monkeypatch.setattr(RK, "WATCHDOG_S", 0.01)
    monkeypatch.setattr(RK, "GRACE_S", 0.2)
    r = object.__new__(RK.Ranks)          # no process group: only the watchdog's state
    r.rank, r.procs, r.lost, r.stopped, r.store = 0, [_DeadProc()], None, False, None
    r._noticed, r._parent = threading.Event(), os.getppid()
    return r


def test_watchdog_ends_a_run_whose_main_thread_is_stuck(monkeypatch):
    """A GPU stuck in an all-reduce with a dead peer blocks rank 0's main thread in a CUDA sync: the
    watchdog then ends the run itself (Engine._abort_stuck), with the dead rank's reason."""
    r = _bare_ranks(monkeypatch)
    called = threading.Event()
    r.on_stuck = lambda reason: (setattr(r, "why", reason), called.set())
    threading.Thread(target=r._watch, daemon=True).start()
    assert called.wait(30) and r.why == "rank 1 was killed by SIGKILL" and r.lost == r.why


def test_watchdog_leaves_it_to_a_main_thread_that_noticed(monkeypatch):
    r = _bare_ranks(monkeypatch)
    r.on_stuck = lambda reason: pytest.fail("the watchdog must not end a run the main thread ends")
    t = threading.Thread(target=r._watch, daemon=True)
    r._noticed.set()                      # the main thread's collective failed and it ends the run
    t.start()
    t.join(30)
    assert not t.is_alive() and r.lost == "rank 1 was killed by SIGKILL"


def test_abort_stuck_writes_the_end_and_exits(monkeypatch):
    out, ends = [], []
    e = object.__new__(Engine)
    e.emit, e.on_abort, e.t0, e.i, e.tokens = out.append, ends.append, time.perf_counter(), 7, 30

    def fake_exit(code):
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        e._abort_stuck("rank 1 was killed by SIGKILL")
    assert out[0]["kind"] == "alert" and out[0]["message"] == "run stopped: rank 1 was killed by SIGKILL"
    assert ends[0]["outcome"] == "error" and ends[0]["reason"] == "rank 1 was killed by SIGKILL"
    assert ends[0]["steps"] == 7


def test_rank_0_failing_mid_step_ends_the_other_ranks():
    """An error on rank 0 inside a step leaves rank 1 waiting in an all-reduce: close() must not ask it
    to stop (it would wait for the group's timeout) but end it, and say so."""
    recs = []
    e = Engine(_cfg(2), recs.append)
    decode = e.state.decode
    calls = []

    def failing(rows):
        calls.append(rows)
        if len(calls) == 4:
            raise RuntimeError("injected")
        return decode(rows)
    e.state.decode = failing
    follower = e.ranks.procs[0]
    with pytest.raises(RuntimeError, match="injected"):
        e.run(50)
    t = time.monotonic()
    summary = e.close()
    assert time.monotonic() - t < 60
    assert summary["reason"].startswith("rank 0 stopped in the middle of a step")
    assert follower.poll() is not None
    RK.HARD_EXIT = False   # this process goes on (the CLI would exit at once)


def test_rank_processes_import_this_cgwatch_wherever_they_start(tmp_path, monkeypatch):
    """A ``cgwatch/`` folder in the working directory (the parent of a clone) is not what a rank imports."""
    (tmp_path / "cgwatch").mkdir()
    (tmp_path / "cgwatch" / "__init__.py").write_text("raise ImportError('the decoy cgwatch was imported')\n")
    monkeypatch.chdir(tmp_path)
    _, tokens, summary = _run(_cfg(2), 3)
    assert summary["steps"] == 3 and "reason" not in summary and len(tokens) == 3


def test_daemon_with_two_ranks_takes_commands_and_stops(tmp_path):
    """What the TUI drives: a daemon whose engine has two ranks; a client's command runs on both (the
    ack carries the new state), SIGTERM stops the run and its rank process, the trace gets its end."""
    from cgwatch.client import connect
    from waiting import wait_until
    sock, trace = tmp_path / "d.sock", tmp_path / "d.jsonl"
    p = _cgwatch("daemon", "--tp", "2", "--max-concurrency", "4", "--max-seq", "64", "--listen", f"unix:{sock}",
                 "--record", str(trace))
    try:
        line = p.stdout.readline()
        assert "listening on" in line, line + p.stderr.read() if p.poll() is not None else line
        wait_until(lambda: sum(r.get("type") == "step" for r in _records(trace)) >= 5, 180, "5 steps")
        follower = _records(trace)[0]["ranks"][1]["pid"]
        with connect(f"unix:{sock}", timeout=30) as conn:
            ack = conn.wait_ack(conn.send("mode", "eager"), timeout=120)
            assert ack["ok"] and ack["state"]["mode"] == "eager"
            ack = conn.wait_ack(conn.send("mark", "two ranks"), timeout=120)
            assert ack["ok"]
        n = sum(r.get("type") == "step" for r in _records(trace))
        wait_until(lambda: sum(r.get("type") == "step" for r in _records(trace)) >= n + 3, 180, "3 more steps")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0
    wait_until(lambda: not _alive(follower), 60, "rank 1 to exit")
    recs = _records(trace)
    assert recs[-1]["type"] == "end" and recs[-1]["outcome"] == "interrupted" and "reason" not in recs[-1]
    t_mode = next(r["t"] for r in recs if r.get("kind") == "mode" and r.get("mode") == "eager")
    after = [r for r in recs if r["type"] == "step" and r["t"] > t_mode]   # (on the CPU every step is no_cuda)
    assert len(after) >= 3 and all(len(r["rank_ms"]) == 2 for r in after)


# -- a rank lost while the ranks start; what a rank ends with ---------------------------------------

def test_a_rank_dead_before_the_rendezvous_ends_the_start(monkeypatch):
    """Rank 0 waits for every rank in Ranks._rendezvous, where a dead one is seen (init_process_group would
    wait for it holding the GIL, so no watchdog could end the wait before its timeout)."""
    r = _bare_ranks(monkeypatch)
    r.size = 2
    r.store = torch.distributed.TCPStore("127.0.0.1", 0, 2, True, timeout=timedelta(seconds=30),
                                         wait_for_workers=False)
    with pytest.raises(RK.RankLost, match="^rank 1 was killed by SIGKILL$"):
        r._rendezvous()
    assert r.lost == "rank 1 was killed by SIGKILL"


def test_a_rank_killed_as_the_ranks_start_ends_the_run_with_one_line():
    """The CLI: rank 1 killed as soon as it exists. Before: rank 0 waited 120 s in the rendezvous, then
    'internal error: DistStoreError'. Now one line naming the rank, rc 1, no rank left behind."""
    import psutil
    p = _cgwatch("run", "--headless", "--tp", "2", "--max-concurrency", "4", "--max-seq", "64", "--steps", "20")
    kids = []
    try:
        deadline = time.monotonic() + 60
        while not kids:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            kids = psutil.Process(p.pid).children()
            time.sleep(0.01)
        kids[0].kill()
        out, err = p.communicate(timeout=100)   # (the rendezvous' own timeout: 120 s)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, err
    assert "rank 1 was killed by SIGKILL" in err and "internal error" not in err and "Traceback" not in err
    assert not any(psutil.pid_exists(k.pid) and k.status() != psutil.STATUS_ZOMBIE for k in kids)


class _Ended:
    def __init__(self, pid, code):
        self.pid, self.code = pid, code

    def poll(self):
        return self.code


def test_a_rank_that_lost_its_peers_is_not_blamed():
    """A follower whose collective failed because another rank died exits with EXIT_PEER_LOST and says
    nothing; rank 0 names the rank that died even if the survivor's exit is seen first."""
    r = object.__new__(RK.Ranks)
    r.rank, r.store, r._parent = 0, None, os.getppid()
    r.procs = [_Ended(1, None), _Ended(2, RK.EXIT_PEER_LOST), _Ended(3, -signal.SIGKILL)]
    assert r._dead_rank() == "rank 3 was killed by SIGKILL"
    r.procs = [_Ended(1, None), _Ended(2, RK.EXIT_PEER_LOST)]
    assert r._dead_rank() == "rank 2 lost the other ranks"
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:4301: "
                        "Connection reset by peer")
    assert RK.peer_gone(gloo) and RK.peer_gone(RK.RankLost("x"))
    assert not RK.peer_gone(RuntimeError("CUDA out of memory")) and not RK.peer_gone(ValueError("bad"))


def test_shutdown_after_a_lost_rank_ends_the_rest_at_one_deadline():
    """Ranks still there after a lost rank are killed at one shared deadline (was: 2 s, then SIGTERM and
    10 s more, one rank after the other: 25 s with four ranks)."""
    r = object.__new__(RK.Ranks)
    r.rank, r.cuda, r.lost, r.stopped = 0, True, "rank 1 was killed by SIGKILL", False
    r._noticed = threading.Event()
    r.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(3)]
    try:
        t = time.monotonic()
        r.shutdown()
        assert time.monotonic() - t < 60
        assert all(p.poll() is not None for p in r.procs)
    finally:
        RK.HARD_EXIT = False
        for p in r.procs:
            p.kill()
            p.wait()


def test_fail_capture_bucket_outside_the_sizes_is_noted():
    out = []
    e = object.__new__(Engine)
    e.cfg, e.rank, e.cuda, e.sizes = _cfg(2, fail_capture=(3,), fail_capture_on=((2, 1),)), 0, True, [1, 2, 4]
    e.emit, e.t0 = out.append, time.perf_counter()
    e._note_fail_capture()
    assert out[0]["message"] == ("--fail-capture-bucket [2, 3]: 3 not among the capture sizes [1, 2, 4] "
                                 "(a recapture that adds it fails)")
    out.clear()
    e.cfg = _cfg(2, fail_capture=(4,))
    e._note_fail_capture()
    assert out == []


def test_a_load_error_on_every_rank_is_one_line(tmp_path):
    """A checkpoint every rank fails to load (here: no weights) is rank 0's one line, not one a rank: a
    follower's reason goes to rank 0 through the store, and it prints its own only if that failed."""
    import json
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 101}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = _cgwatch("run", "--headless", "--tp", "2", "--model", str(tmp_path), "--max-concurrency", "2",
                 "--max-seq", "64", "--steps", "2")
    out, err = p.communicate(timeout=180)
    assert p.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgwatch: ") and "no *.safetensors files" in lines[0], err
