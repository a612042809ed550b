"""The engine on the CPU (tiny preset, fp32, eager): numerics of the KV cache, slot isolation,
padding isolation, and a whole run through the loop."""

import torch

from cgwatch import records as R
from cgwatch.engine.control import parse_scheduled
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.engine.model import PRESETS, ModelArgs, build_random
from cgwatch.engine.step import DecodeState
from cgwatch.workload import WorkloadSpec

SMALL = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)


def make_state(args=SMALL, slots=4, max_seq=64, seed=0):
    torch.manual_seed(seed)
    model = build_random(args, torch.device("cpu"), torch.float32, seed)
    model.setup_caches(slots, max_seq)
    return DecodeState(model, max_batch=slots), model


def kv(model, slot, upto):
    return torch.stack([torch.stack([l.self_attn.cache.k[slot, :, :upto], l.self_attn.cache.v[slot, :, :upto]])
                        for l in model.layers])


@torch.inference_mode()
def test_decode_with_kv_cache_matches_full_recompute():
    st, model = make_state()
    prompt = torch.randint(SMALL.vocab_size, (7,))
    logits = model.prefill(prompt, 0)
    seq = prompt.tolist()
    st.pos[0] = 7
    for _ in range(5):
        tok = int(logits.argmax())
        seq.append(tok)
        st.next_token[0] = tok
        st.set_slots([0], 1)
        logits = st.decode(1)[0][0]
        ref = model.prefill(torch.tensor(seq), 3)   # whole sequence from scratch in another slot
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def two_requests_three_steps():
    st, model = make_state()
    st.prefill(0, 5)
    st.prefill(1, 9)
    for _ in range(3):
        st.set_slots([0, 1], 2)
        st.decode(2)
    return st, model


@torch.inference_mode()
def test_reusing_a_finished_slot_leaves_live_rows_alone():
    st, model = two_requests_three_steps()
    live_kv, live_pos, live_tok = kv(model, 1, 12).clone(), int(st.pos[1]), int(st.next_token[1])
    st.prefill(0, 20)                  # request in slot 0 finished; a new one takes the slot
    assert torch.equal(kv(model, 1, 12), live_kv)
    assert (int(st.pos[1]), int(st.next_token[1])) == (live_pos, live_tok)
    st.set_slots([1], 1)
    reused = st.decode(1)[0]
    st2, _ = two_requests_three_steps()   # the same step where slot 0 was never reused
    st2.set_slots([1], 1)
    torch.testing.assert_close(st2.decode(1)[0], reused)


@torch.inference_mode()
def test_padding_rows_touch_only_the_scratch_slot():
    st, model = make_state(slots=4)
    for s, n in ((0, 6), (2, 11)):
        st.prefill(s, n)
    before = {s: kv(model, s, 64).clone() for s in range(4)}
    snap = st.snapshot()
    st.set_slots([0, 2], 2)
    plain = st.decode(2)[0].clone()
    kv_plain = {s: kv(model, s, 64).clone() for s in range(4)}
    st.restore(snap)
    st.set_slots([0, 2], 4)            # the same batch padded to a bucket of 4
    padded = st.decode(4)[0]
    torch.testing.assert_close(padded[:2], plain, rtol=1e-5, atol=1e-5)
    for s in range(4):                 # live rows identical, free slots untouched
        torch.testing.assert_close(kv(model, s, 64), kv_plain[s], rtol=1e-5, atol=1e-5)
    assert torch.equal(kv(model, 1, 64), before[1]) and torch.equal(kv(model, 3, 64), before[3])
    assert st.slot_buf[:4].tolist() == [0, 2, st.scratch, st.scratch]
    assert int(st.pos[st.scratch]) == 0


@torch.inference_mode()
def test_temperature_sampling_is_seeded_and_valid():
    from cgwatch.engine.step import sample
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, 0.0), logits.argmax(-1))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = sample(logits, 0.8, g1), sample(logits, 0.8, g2)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 50


def run_engine(steps=30, **kw):
    recs = []
    wl = WorkloadSpec(arrival=kw.pop("arrival", "poisson:0.6"), prompt_len="uniform:4:16", output_len="uniform:4:24",
                      max_concurrency=8, max_seq=64, seed=3)
    cfg = EngineConfig(model="tiny", max_seq=64, workload=wl, sample_interval_s=0.05, **kw)
    eng = Engine(cfg, recs.append)
    eng.run(steps)
    summary = eng.close()
    return eng, recs, summary


def test_tiny_runs_on_cpu_eager_with_no_cuda_reason():
    eng, recs, summary = run_engine(25)
    steps = [r for r in recs if r["type"] == R.STEP]
    assert [r["i"] for r in steps] == list(range(25))
    assert all(r["reason"] == R.REASON_NO_CUDA and r["bucket"] is None and r["gpu_ms"] is None for r in steps)
    assert all(r["host_us"] > 0 and r["tokens"] == r["batch"] >= 1 for r in steps)
    assert summary["tokens"] == sum(r["tokens"] for r in steps)
    alerts = [r for r in recs if r["type"] == R.EVENT and r["kind"] == R.EV_ALERT]
    assert any("need CUDA" in a["message"] for a in alerts)
    prefill = [r for r in recs if r["type"] == R.PREFILL]
    assert prefill and prefill[0]["i"] == 0
    assert any(r["type"] == R.SAMPLE for r in recs)
    assert eng.header()["model"]["name"] == "tiny"


def test_close_after_a_device_fault_keeps_the_steps_in_flight():
    """A CUDA fault poisons the context and every event query raises: close still emits the steps
    whose GPU times never came, without them, and says so."""
    recs = []
    wl = WorkloadSpec(arrival="fixed:2", max_concurrency=4, max_seq=64, seed=0)
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_seq=64, workload=wl, sample_interval_s=10), recs.append)
    eng.run(3)
    pending = [R.step(3 + k, 0.0, 2, 2, 2, None, 10.0, None, 2) for k in range(2)]
    eng.timer._pending.extend((rec, None, None) for rec in pending)

    def fault():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")

    eng.timer.drain = fault
    eng.close()
    alerts = [r for r in recs if r.get("kind") == R.EV_ALERT and r["level"] == "error"]
    assert [a["message"] for a in alerts] == [
        "GPU times of the last 2 steps lost: RuntimeError: CUDA error: an illegal memory access was encountered"]
    steps = [r for r in recs if r["type"] == R.STEP]
    assert [r["i"] for r in steps] == [0, 1, 2, 3, 4] and steps[-1]["gpu_ms"] is None
    assert recs[-1]["type"] == R.SAMPLE


def test_schedule_applies_commands_between_steps():
    sched = tuple(parse_scheduled(s) for s in ("5:eager", "8:padding=0.25", "10:recapture=1,4", "12:mark=here"))
    eng, recs, _ = run_engine(15, schedule=sched)
    ev = [(r["kind"], r.get("mode") or r.get("sizes") or r.get("value") or r.get("text"))
          for r in recs if r["type"] == R.EVENT and r["kind"] not in (R.EV_ALERT, R.EV_INFO, R.EV_STATE)]
    assert ev == [("mode", "eager"), ("max_padding_ratio", 0.25), ("recapture", [1, 4]), ("mark", "here")]
    steps = {r["i"]: r for r in recs if r["type"] == R.STEP}
    assert all(steps[i]["target"] in (1, 4, None) for i in range(10, 15))
    assert eng.max_padding_ratio == 0.25
    # no CUDA: the mode and the sizes apply (the dispatch follows them), and the run says nothing is captured
    notes = [r["message"] for r in recs if r.get("kind") == R.EV_ALERT and r["message"].startswith("no CUDA: ")]
    assert len(notes) == 2 and all("(no_cuda)" in n for n in notes)
    assert notes[0].endswith("the mode is the run's state only") and "the sizes only set the bucket" in notes[1]


def test_commands_are_acknowledged_with_the_new_state_or_an_error():
    from cgwatch.engine.control import Command, command_from_message
    eng, recs, _ = run_engine(2)
    replies = []
    for msg in ({"cmd": "rate", "value": 2.0}, {"cmd": "mode", "value": "eager"}, {"cmd": "pause"},
                {"cmd": "resume"}, {"cmd": "padding", "value": 0.1}, {"cmd": "recapture", "value": [2, 8]}):
        c = command_from_message(msg)
        eng.submit(Command(c.name, c.value, replies.append))
    eng.submit(Command("rate", -1.0, replies.append))          # invalid: refused, engine goes on
    eng.apply_pending()
    assert [r["ok"] for r in replies] == [True] * 6 + [False]
    last = replies[5]["state"]
    assert last["rate"] == 2.0 and last["mode"] == "eager" and last["max_padding_ratio"] == 0.1
    assert last["sizes"] == [2, 8] and last["paused"] is False
    assert "rate" in replies[6]["error"]
    states = [r for r in recs if r["type"] == R.EVENT and r["kind"] == R.EV_STATE]
    assert len(states) == 1 + 6                                  # at start, then one per applied command
    pauses = [r["paused"] for r in recs if r["type"] == R.EVENT and r["kind"] == R.EV_PAUSE]
    assert pauses == [True, False]


def test_malformed_client_commands_are_refused():
    import pytest
    from cgwatch.engine.control import command_from_message
    from cgwatch.errors import CgwatchError
    for msg in ({}, {"cmd": "mode", "value": "fast"}, {"cmd": "recapture", "value": "a,b"},
                {"cmd": "padding", "value": "x"}, {"cmd": "padding", "value": True}, {"cmd": "rm -rf"},
                {"cmd": "mark", "value": ""}, {"cmd": "padding", "value": 3}):
        with pytest.raises(CgwatchError):
            command_from_message(msg)


def test_same_seed_same_steps():
    _, a, _ = run_engine(20)
    _, b, _ = run_engine(20)
    key = lambda recs: [(r["i"], r["batch"], r["target"]) for r in recs if r["type"] == R.STEP]
    assert key(a) == key(b)


def test_presets_have_the_published_shapes():
    assert PRESETS["llama-1b"].n_params() == 1_235_814_400    # Llama-3.2-1B
    assert PRESETS["llama-8b"].n_params() == 8_030_261_248    # Llama-3-8B
