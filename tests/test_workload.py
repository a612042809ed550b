"""Tests for the continuous-batching simulator (cgwatch.workload)."""

from __future__ import annotations

import json
import math
import random

import pytest

from cgwatch.errors import CgwatchError
from cgwatch.workload import (MAX_RATE, Admit, StepPlan, Workload, WorkloadError, WorkloadSpec, _poisson_draw,
                              parse_length)


def plans(w: Workload, n: int) -> list[StepPlan]:
    out = []
    for _ in range(n):
        p = w.next_step()
        if p is None:
            break
        out.append(p)
    return out


class Engine:
    """Plays the engine's part and checks every invariant of every plan it is given."""

    def __init__(self, max_concurrency: int, replay: bool = False) -> None:
        self.cap = max_concurrency
        self.replay = replay               # replay may retire requests early
        self.live: dict[int, Admit] = {}   # slot -> request, in admission order
        self.decoded: dict[int, int] = {}  # req_id -> decode steps so far
        self.done: list[Admit] = []        # requests freed after all their steps
        self.retired: list[Admit] = []     # requests freed early (replay shrink)
        self.slot_uses: dict[int, int] = {}
        self.step = 0

    def apply(self, p: StepPlan) -> None:
        assert p.step == self.step
        assert p.idle_steps >= 0
        # Every request that decoded all its steps is freed now, and nothing else unless replay retires it.
        due = {s for s, a in self.live.items() if self.decoded[a.req_id] == a.output_len}
        assert due <= set(p.finished), "a completed request was not freed"
        assert len(set(p.finished)) == len(p.finished), "slot freed twice"
        for slot in p.finished:
            assert slot in self.live, f"freed slot {slot} was not live"
            a = self.live.pop(slot)
            if slot in due:
                self.done.append(a)
            else:
                assert self.replay, "request freed before its output_len steps"
                self.retired.append(a)
        old = list(self.live)
        for a in p.admitted:
            free = [s for s in range(self.cap) if s not in self.live]
            assert free and a.slot == free[0], "not the lowest free slot"
            assert a.req_id not in self.decoded, "req_id reused"
            assert a.prompt_len >= 1 and a.output_len >= 1
            self.live[a.slot] = a
            self.decoded[a.req_id] = 0
            self.slot_uses[a.slot] = self.slot_uses.get(a.slot, 0) + 1
        assert p.active == old + [a.slot for a in p.admitted], "active order"
        assert 1 <= len(p.active) <= self.cap
        for slot in p.active:
            self.decoded[self.live[slot].req_id] += 1
        self.step += 1


# ---------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("arrival", ["poisson:0.5", "poisson:3", "fixed:8"])
def test_same_seed_same_plans(arrival):
    spec = WorkloadSpec(arrival=arrival, output_len="lognormal:60:0.8", seed=7)
    assert plans(Workload(spec), 2000) == plans(Workload(spec), 2000)


def test_different_seed_different_plans():
    a = plans(Workload(WorkloadSpec(seed=1)), 2000)
    b = plans(Workload(WorkloadSpec(seed=2)), 2000)
    assert a != b


# ---------------------------------------------------------------------------------------------
# Slot and request invariants


@pytest.mark.parametrize("arrival,cap", [("poisson:0.3", 64), ("poisson:2", 16), ("poisson:0.02", 8)])
def test_poisson_invariants(arrival, cap):
    w = Workload(WorkloadSpec(arrival=arrival, output_len="uniform:1:120", max_concurrency=cap,
                              seed=3))
    eng = Engine(cap)
    for _ in range(5000):
        p = w.next_step()
        eng.apply(p)
        assert w.live == len(p.active) <= cap
    assert len(eng.done) > 50
    assert all(eng.decoded[a.req_id] == a.output_len for a in eng.done)
    assert not eng.retired
    assert max(eng.slot_uses.values()) > 1, "freed slots are never reused"


def test_freed_slot_reused_lowest_first():
    # Output lengths 1..3 with a saturated queue: slots free and refill every step.
    w = Workload(WorkloadSpec(arrival="poisson:20", output_len="uniform:1:3", max_concurrency=4))
    eng = Engine(4)
    for p in plans(w, 300):
        eng.apply(p)  # checks lowest-free-first on each admission
        assert sorted(p.active) == [0, 1, 2, 3]
    assert w.queued > 0


def test_saturated_queue_grows():
    w = Workload(WorkloadSpec(arrival="poisson:100", max_concurrency=8))
    for p in plans(w, 200):
        assert len(p.active) == 8
    assert w.queued > 100 * 200 * 0.9


def test_idle_fast_forward():
    # rate 0.01 and 1-step requests: the system is nearly always empty between arrivals.
    w = Workload(WorkloadSpec(arrival="poisson:0.01", output_len="fixed:1", seed=5))
    ps = plans(w, 2000)
    assert all(p.active for p in ps)
    ticks = sum(1 + p.idle_steps for p in ps)
    arrivals = sum(len(p.admitted) for p in ps)
    assert arrivals == pytest.approx(0.01 * ticks, rel=0.1)
    assert max(p.idle_steps for p in ps) > 100


# ---------------------------------------------------------------------------------------------
# fixed and replay


@pytest.mark.parametrize("b", [1, 5, 16])
def test_fixed_keeps_exactly_b(b):
    w = Workload(WorkloadSpec(arrival=f"fixed:{b}", output_len="uniform:1:50", max_concurrency=16))
    eng = Engine(16)
    ps = plans(w, 1000)
    assert len(ps) == 1000
    for p in ps:
        eng.apply(p)
        assert len(p.active) == b and p.idle_steps == 0 and w.queued == 0
    assert len(ps[0].admitted) == b
    assert len(eng.done) > 1000 * b / 50


def test_replay_follows_file(tmp_path):
    f = tmp_path / "sizes.txt"
    f.write_text("# a trace\n4, 4 6\n\n2   # shrink\n 1,3,\t8,8\n5 # end\n")
    sizes = [4, 4, 6, 2, 1, 3, 8, 8, 5]
    w = Workload(WorkloadSpec(arrival=f"replay:{f}", output_len="uniform:1:4", max_concurrency=8))
    eng = Engine(8, replay=True)
    prev: list[int] = []
    for k, size in enumerate(sizes):
        p = w.next_step()
        assert p is not None and len(p.active) == size
        retired_before = len(eng.retired)
        eng.apply(p)
        retired = [a.slot for a in eng.retired[retired_before:]]
        if retired:  # the extras retired are the most recently admitted survivors
            survivors = [s for s in prev if s not in p.finished or s in retired]
            assert sorted(retired) == sorted(survivors[len(survivors) - len(retired):])
        prev = p.active
    assert w.next_step() is None and w.next_step() is None
    assert eng.retired  # the shrinking steps retired someone early
    assert w.describe()["replay_steps"] == len(sizes)


def test_replay_shrink_retires_newest(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("3\n5\n2\n")
    w = Workload(WorkloadSpec(arrival=f"replay:{f}", output_len="fixed:100", max_concurrency=8))
    a, b, c = plans(w, 3)
    assert a.active == [0, 1, 2] and b.active == [0, 1, 2, 3, 4]
    assert sorted(c.finished) == [2, 3, 4] and c.active == [0, 1] and not c.admitted
    assert w.next_step() is None


# ---------------------------------------------------------------------------------------------
# Statistics


def test_littles_law():
    # Far under the cap, mean live = rate * mean output_len = 0.25 * 40 = 10.
    rate, lo, hi = 0.25, 20, 60
    w = Workload(WorkloadSpec(arrival=f"poisson:{rate}", output_len=f"uniform:{lo}:{hi}", seed=11))
    ps = plans(w, 40000)
    ticks = sum(1 + p.idle_steps for p in ps)
    mean_live = sum(len(p.active) for p in ps) / ticks
    assert mean_live == pytest.approx(rate * (lo + hi) / 2, rel=0.08)
    assert max(len(p.active) for p in ps) < 64


@pytest.mark.parametrize("rate", [0.05, 0.7, 4.0, 9.9, 10.0, 30.0, 100.0, 1e4])
def test_poisson_sampler_moments(rate):
    rng = random.Random(1)
    n = 20000
    xs = [_poisson_draw(rng, rate) for _ in range(n)]
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / n
    assert min(xs) >= 0
    assert abs(mean - rate) < 5 * math.sqrt(rate / n)
    assert var == pytest.approx(rate, rel=0.1)


def test_set_rate_changes_arrivals():
    w = Workload(WorkloadSpec(arrival="poisson:0.1", max_concurrency=1024, max_seq=4096, seed=2))
    slow = sum(len(p.admitted) for p in plans(w, 2000))
    w.set_rate(2.0)
    assert w.rate == 2.0 and w.describe()["rate"] == 2.0
    fast = sum(len(p.admitted) for p in plans(w, 2000))
    assert slow == pytest.approx(200, rel=0.25)
    assert fast == pytest.approx(4000, rel=0.1)


def test_rate_zero_drains_then_idles_and_recovers():
    """rate 0 means no new requests: once the live ones finished, the plans are empty (the engine then
    waits for commands) and use up no step; a later rate goes on from there."""
    w = Workload(WorkloadSpec(arrival="poisson:2", output_len="uniform:1:5"))
    plans(w, 20)
    w.set_rate(-0.0)
    assert w.rate == 0.0 and math.copysign(1, w.rate) == 1   # no "-0.0" in the state
    freed = []
    for _ in range(100):
        p = w.next_step()
        assert not p.admitted
        freed += p.finished
        if not p.active:
            break
    assert not p.active and w.live == 0
    step = p.step
    again = w.next_step()   # still nothing: the same step, nothing new
    assert again.step == step and not again.active and not again.finished and not again.admitted
    assert sorted(freed) == sorted(set(freed)) and freed
    w.set_rate(1.0)
    p = w.next_step()
    assert p.step == step and p.active and p.admitted


@pytest.mark.parametrize("bad", [1e308, math.inf, math.nan, -1, MAX_RATE * 2, "x"])
def test_set_rate_refuses_what_the_draw_cannot_take(bad):
    w = Workload(WorkloadSpec(arrival="poisson:1"))
    with pytest.raises(WorkloadError, match="rate"):
        w.set_rate(bad)
    assert w.rate == 1.0


def test_the_largest_rate_draws():
    w = Workload(WorkloadSpec(arrival=f"poisson:{MAX_RATE}", max_concurrency=4))
    assert len(w.next_step().active) == 4 and w.queued > MAX_RATE / 2


# ---------------------------------------------------------------------------------------------
# Lengths


def test_lengths_clamped_to_max_seq():
    w = Workload(WorkloadSpec(arrival="fixed:4", prompt_len="fixed:100", output_len="fixed:1000",
                              max_seq=64))
    a = w.next_step().admitted[0]
    assert (a.prompt_len, a.output_len) == (32, 31)
    w = Workload(WorkloadSpec(arrival="poisson:3", prompt_len="lognormal:200:1.5",
                              output_len="lognormal:300:2", max_seq=512))
    adm = [a for p in plans(w, 500) for a in p.admitted]
    assert adm and all(a.prompt_len + a.output_len + 1 <= 512 for a in adm)
    assert all(1 <= a.prompt_len <= 256 and a.output_len >= 1 for a in adm)
    assert any(a.prompt_len == 256 for a in adm)  # the clamp was hit


def test_parse_length_ranges():
    rng = random.Random(0)
    assert {parse_length("fixed:7")(rng) for _ in range(20)} == {7}
    xs = {parse_length("uniform:3:5")(rng) for _ in range(200)}
    assert xs == {3, 4, 5}
    ys = sorted(parse_length("lognormal:50:0.5")(rng) for _ in range(2001))
    assert ys[1000] == pytest.approx(50, rel=0.1) and ys[0] >= 1
    assert {parse_length("lognormal:5:0")(rng) for _ in range(10)} == {5}


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("bad", ["", "fixed", "fixed:0", "fixed:-3", "fixed:2.5", "fixed:x",
                                 "uniform:5", "uniform:0:5", "uniform:9:3", "uniform:1:2:3",
                                 "lognormal:0:1", "lognormal:10:-1", "lognormal:nan:1",
                                 "lognormal:10:inf", "normal:5:1", "16"])
def test_bad_length(bad):
    with pytest.raises(WorkloadError, match="bad length distribution") as e:
        parse_length(bad)
    assert repr(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WorkloadError, match="bad length distribution"):
        Workload(WorkloadSpec(output_len=bad))


@pytest.mark.parametrize("bad,msg", [("poisson", "bad arrival"), ("poisson:x", "bad arrival"),
                                     ("poisson:-1", "RATE"), ("poisson:nan", "RATE"),
                                     ("poisson:inf", "RATE"), ("poisson:1e308", "RATE"),
                                     ("poisson:0", "nothing to run"),
                                     ("fixed:0", "B must be"), ("fixed:65", "B must be"),
                                     ("fixed:a", "bad arrival"), ("replay:", "bad arrival"),
                                     ("burst:3", "bad arrival"), ("", "bad arrival")])
def test_bad_arrival(bad, msg):
    with pytest.raises(WorkloadError, match=msg) as e:
        Workload(WorkloadSpec(arrival=bad))
    assert isinstance(e.value, CgwatchError) and "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("max_concurrency", 0), ("max_seq", 2),
                                         ("max_concurrency", 2.5), ("seed", "x")])
def test_bad_numbers(field, value):
    with pytest.raises(WorkloadError, match=field):
        Workload(WorkloadSpec(**{field: value}))


@pytest.mark.parametrize("text,line,token", [("4\n0\n", 2, "'0'"), ("1 2\n3, x\n", 2, "'x'"),
                                             ("# c\n\n9\n", 3, "'9'"), ("2.5", 1, "'2.5'"),
                                             ("1\n-1", 2, "'-1'")])
def test_bad_replay_line(tmp_path, text, line, token):
    f = tmp_path / "r.txt"
    f.write_text(text)
    with pytest.raises(WorkloadError) as e:
        Workload(WorkloadSpec(arrival=f"replay:{f}", max_concurrency=8))
    msg = str(e.value)
    assert str(f) in msg and f"line {line}" in msg and token in msg and "1..8" in msg


def test_replay_missing_or_empty(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(WorkloadError, match="cannot read replay file") as e:
        Workload(WorkloadSpec(arrival=f"replay:{missing}"))
    assert str(missing) in str(e.value)
    with pytest.raises(WorkloadError, match="cannot read replay file"):
        Workload(WorkloadSpec(arrival=f"replay:{tmp_path}"))  # a directory
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(WorkloadError, match="no batch sizes"):
        Workload(WorkloadSpec(arrival=f"replay:{empty}"))


def test_set_rate_errors(tmp_path):
    with pytest.raises(WorkloadError, match="poisson"):
        Workload(WorkloadSpec(arrival="fixed:2")).set_rate(1.0)
    w = Workload(WorkloadSpec())
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(WorkloadError, match="rate"):
            w.set_rate(bad)
    assert w.rate == 0.5


def test_describe_is_json(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("1 2 3")
    for arrival in ("poisson:1.5", "fixed:3", f"replay:{f}"):
        d = Workload(WorkloadSpec(arrival=arrival, seed=9)).describe()
        assert json.loads(json.dumps(d)) == d
        assert d["arrival"] == arrival and d["seed"] == 9 and d["max_concurrency"] == 64
