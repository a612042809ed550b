import itertools
import json
import random

import pytest

from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.engine.buckets import dispatch
from cgwatch.recommend import (MIB, Curve, isotonic, optimal_sizes, sglang_default, vllm_default)
from cgwatch.samples import sample_path
from cgwatch.trace import TraceWriter

SAMPLE = str(sample_path())


# ---- the exact search against brute force ----

def brute_force(p, graph_ms, eager_ms, ratio, max_graphs, memory, budget):
    """Every subset of 1..B within the limits, priced through the engine's own dispatch."""
    B = len(p) - 1
    best = None
    for k in range(0, min(max_graphs, B) + 1):
        for sizes in itertools.combinations(range(1, B + 1), k):
            if k and memory(max(sizes), k) > budget:
                continue
            t = expected_time(list(sizes), p, graph_ms, eager_ms, ratio)
            if best is None or t < best[0]:
                best = (t, list(sizes))
    return best


def expected_time(sizes, p, graph_ms, eager_ms, ratio):
    total = 0.0
    for b in range(1, len(p)):
        d = dispatch(b, sizes, max_padding_ratio=ratio)
        total += p[b] * (eager_ms[b] if d.bucket is None else graph_ms[d.bucket])
    return total


def random_case(rng):
    B = rng.randint(1, 9)
    weights = [0.0] + [rng.choice([0.0, rng.random(), rng.random() * 10]) for _ in range(B)]
    if not any(weights):
        weights[rng.randint(1, B)] = 1.0
    p = [w / sum(weights) for w in weights]
    graph, eager = [0.0], [0.0]
    g, e = rng.uniform(1, 5), rng.uniform(2, 20)
    for _ in range(B):   # monotone-ish: mostly rising, sometimes a dip; eager sometimes cheaper
        g = max(0.1, g + rng.uniform(-0.3, 1.0))
        e = max(0.1, e + rng.uniform(-1.0, 2.0))
        graph.append(g)
        eager.append(e if rng.random() > 0.1 else g * rng.uniform(0.5, 1.0))
    first = [0.0] + [rng.uniform(0.5, 3.0) * s + rng.uniform(0, 5) for s in range(1, B + 1)]
    extra = rng.choice([0.0, rng.uniform(0.1, 4.0)])
    memory = lambda m, j: first[m] + extra * (j - 1)  # noqa: E731
    budget = rng.uniform(0.8 * min(first[1:]), max(first) + extra * B)   # some cases fit nothing
    ratio = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.random()])
    return p, graph, eager, ratio, rng.randint(1, B + 1), memory, budget


def test_search_matches_brute_force_on_random_cases():
    rng = random.Random(1234)
    for _ in range(600):
        p, graph, eager, ratio, k, memory, budget = random_case(rng)
        time, sizes = optimal_sizes(p, graph, eager, ratio, k, memory, budget)
        want, _ = brute_force(p, graph, eager, ratio, k, memory, budget)
        assert time == pytest.approx(want, rel=1e-9, abs=1e-12)
        # the list it returns is valid and really has that expected time
        assert sizes == sorted(set(sizes)) and all(1 <= s < len(p) for s in sizes)
        assert len(sizes) <= k
        assert not sizes or memory(max(sizes), len(sizes)) <= budget
        assert expected_time(sizes, p, graph, eager, ratio) == pytest.approx(time, rel=1e-9, abs=1e-12)


def test_search_prefers_fewer_graphs_on_a_tie():
    p = [0.0, 0.0, 0.0, 1.0]                  # every batch is 3; sizes 1 and 2 serve nothing
    flat = [0.0, 2.0, 2.0, 2.0]
    time, sizes = optimal_sizes(p, flat, [0.0, 9.0, 9.0, 9.0], 0.5, 3, lambda m, j: m + j, 100.0)
    assert (time, sizes) == (2.0, [3])


def test_search_returns_no_graphs_when_eager_is_cheaper():
    p = [0.0, 0.5, 0.5]
    _, sizes = optimal_sizes(p, [0.0, 5.0, 6.0], [0.0, 1.0, 1.0], 0.5, 2, lambda m, j: 1.0, 10.0)
    assert sizes == []


# ---- cost curves and the comparison lists ----

def test_curve_interpolates_and_extrapolates():
    c = Curve({2: 2.0, 4: 4.0, 8: 4.0})
    assert c(2) == 2.0 and c.measured(2) and not c.measured(3)
    assert c(3) == pytest.approx(3.0) and c(6) == pytest.approx(4.0)
    slope = 2 / 7                                   # least-squares slope of the three points
    assert c(10) == pytest.approx(4.0 + 2 * slope) and c(1) == pytest.approx(2.0 - slope)
    assert Curve({4: 3.0})(9) == 3.0                      # one time point: flat
    assert Curve({4: 8.0}, single="proportional")(2) == 4.0   # one memory point: scales with size
    assert Curve({2: 5.0, 4: 1.0})(9) == 1.0              # a falling fit extends flat, not down


def test_isotonic_pools_adjacent_violators():
    assert isotonic([1.0, 3.0, 2.0, 4.0], [1, 1, 1, 1]) == [1.0, 2.5, 2.5, 4.0]
    assert isotonic([1.0, 3.0, 2.0], [1, 1, 3]) == [1.0, 2.25, 2.25]        # weighted by steps
    assert isotonic([5.0, 4.0, 3.0], [1, 1, 1]) == [4.0, 4.0, 4.0]
    assert isotonic([1.0, 2.0, 2.0, 7.0], [3, 1, 2, 1]) == [1.0, 2.0, 2.0, 7.0]   # already monotone: unchanged
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 12)
        ys, ws = [rng.uniform(0, 10) for _ in range(n)], [rng.randint(1, 50) for _ in range(n)]
        fit = isotonic(ys, ws)
        assert all(a <= b + 1e-12 for a, b in zip(fit, fit[1:]))
        assert sum(w * f for w, f in zip(ws, fit)) == pytest.approx(sum(w * y for w, y in zip(ws, ys)))
        # no non-decreasing sequence is closer: nudging any block level up or down costs more
        cost = lambda f: sum(w * (a - b) ** 2 for w, a, b in zip(ws, f, ys))   # noqa: E731
        for k in range(n):
            for d in (-1e-3, 1e-3):
                g = [f + d if f == fit[k] else f for f in fit]
                if all(a <= b for a, b in zip(g, g[1:])):
                    assert cost(g) >= cost(fit) - 1e-9


def noisy_cost_records(slow16=5.0):
    """Graph steps at 8, 16, 24, 32 (5 each): 2.4, ``slow16``, 3.2, 3.6 ms (the 16 graph measured slow, as a
    noisy bench can); eager 10 ms; the first graph's memory 1 MiB per row."""
    recs = [capture(32, 32), capture(24, 2), capture(16, 2), capture(8, 2),
            R.event(R.EV_CAPTURE_DONE, 0.0, sizes=[8, 16, 24, 32], failed=[], pool_bytes=32 * MIB, seconds=1.0,
                    pool="shared")]
    i = 0
    for _ in range(5):
        for size, ms in ((8, 2.4), (16, slow16), (24, 3.2), (32, 3.6)):
            recs += [step(i, size, size, ms), step(i + 1, size, None, 10.0)]
            i += 2
    return recs


def test_one_noisy_point_no_longer_steers_the_answer(tmp_path, capsys):
    """Half the steps are batch 16, half batch 30; two graphs allowed. The 16 graph measured slower (5.0 ms) than
    the 24 (3.2) and 32 (3.6) ones. The old cost model believed the larger graph 1.8 ms cheaper and answered
    [24, 30]: batch 16 on the 24 graph, for a saving that is noise. A larger batch is never cheaper: the
    medians of 16, 24 and 32 are pooled (their mean, 3.933), no graph looks cheaper than a smaller one, and
    one graph at 30 serves both batches as well as two would (the tie goes to fewer graphs). The output says
    which costs were pooled. With a clean measurement of 16 (2.8 ms) the answer is [16, 30], as before."""
    mix = write_trace(tmp_path / "mix.jsonl", [step(i, 16 if i % 2 else 30, None, 10.0) for i in range(50)], ratio=0.5)
    costs = write_trace(tmp_path / "costs.jsonl", noisy_cost_records())
    args = [mix, "--costs", costs, "--memory-budget", "100", "--max-buckets", "2"]
    out = recommend_json(capsys, *args)
    assert out["recommended"] == [30] and out["lists"][0]["expected_step_ms"] == pytest.approx(11.8 / 3)
    g = out["costs"]["graph_ms"]
    assert g["measured"] == {"8": 2.4, "16": 5.0, "24": 3.2, "32": 3.6}            # the medians, as measured
    assert g["used"]["16"] == g["used"]["24"] == g["used"]["32"] == pytest.approx((5.0 + 3.2 + 3.6) / 3)
    assert g["pooled"] == [16, 24, 32] and g["used"]["8"] == 2.4
    assert out["per_size"] == [{"size": 30, "batches": "16, 30", "steps_pct": 100.0, "graph_ms": pytest.approx(11.8 / 3),
                                "measured": False, "pooled": False}]
    assert main(["recommend", *args]) == 0
    text = capsys.readouterr().out
    assert "pooled (median -> used): 16 5.000, 24 3.200, 32 3.600 -> 3.933" in text
    clean = write_trace(tmp_path / "clean.jsonl", noisy_cost_records(slow16=2.8))
    assert recommend_json(capsys, mix, "--costs", clean, "--memory-budget", "100", "--max-buckets", "2")["recommended"] \
        == [16, 30]


def test_the_fitted_cost_curve_never_falls_with_size(tmp_path):
    from cgwatch.recommend import measure_costs
    from cgwatch.trace import read_trace
    costs = measure_costs(read_trace(write_trace(tmp_path / "c.jsonl", noisy_cost_records())))
    for curve in (costs.graph_ms, costs.eager_ms):
        values = [curve(s) for s in range(1, 70)]
        assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    for trace in (SAMPLE, sample_path("bench_llama1b_h100.jsonl")):
        costs = measure_costs(read_trace(trace))
        values = [costs.graph_ms(s) for s in range(1, 129)]
        assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))


def test_a_size_measured_again_is_the_median_of_all_its_steps(tmp_path):
    """Two capture rounds measured the 8 graph: 5 steps at 2.0 ms, then 3 at 9.0 ms. The median of the 8 steps
    (2.0), not the newest round's (9.0)."""
    from cgwatch.recommend import measure_costs
    from cgwatch.trace import read_trace
    done = lambda: R.event(R.EV_CAPTURE_DONE, 0.0, sizes=[8], failed=[], pool_bytes=8 * MIB, seconds=1.0,  # noqa: E731
                           pool="shared")
    recs = [capture(8, 8), done(), *[step(i, 8, 8, 2.0) for i in range(5)], step(5, 8, None, 10.0),
            capture(8, 8), done(), *[step(i, 8, 8, 9.0) for i in range(6, 9)]]
    costs = measure_costs(read_trace(write_trace(tmp_path / "c.jsonl", recs)))
    assert costs.graph_ms(8) == 2.0 and costs.graph_ms.counts == {8: 8}


@pytest.mark.parametrize("edit, why", [
    (lambda r: {k: v for k, v in r.items() if k != "bucket"}, "missing field bucket"),
    (lambda r: {k: v for k, v in r.items() if k != "gpu_ms"}, "missing field gpu_ms"),
    (lambda r: r | {"batch": None}, "batch is null, not a number"),
    (lambda r: r | {"gpu_ms": float("nan")}, "gpu_ms is nan, not a finite number"),
    (lambda r: r | {"gpu_ms": -13.5}, "gpu_ms is -13.5, negative"),
])
def test_a_record_that_cannot_be_trusted_is_skipped_and_said(tmp_path, capsys, edit, why):
    """Was an internal error (KeyError / TypeError) or a cost at -13.5 ms: now the record is left out, the answer
    is the one without it, and one warning line names it."""
    recs = cost_records()
    clean = write_trace(tmp_path / "clean.jsonl", recs)
    k = next(n for n, r in enumerate(recs) if r["type"] == R.STEP and r["bucket"] == 8)
    bad = write_trace(tmp_path / "bad.jsonl", recs[:k] + [edit(recs[k])] + recs[k:])
    want = recommend_json(capsys, clean, "--memory-budget", "100", "--max-buckets", "2")
    assert main(["recommend", bad, "--memory-budget", "100", "--max-buckets", "2", "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    for out in (got, want):   # the paths differ; everything else is the same
        out.pop("trace"), out.pop("costs_trace"), out["costs"].pop("source")
    assert got == want
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"cgwatch: {bad}: skipped 1 record that cannot be trusted") and f": {why}" in line


def test_engine_default_lists():
    assert vllm_default(64) == [1, 2, 4, *range(8, 129, 8)]
    big = vllm_default(400)
    assert big[-1] == 512 and 248 in big and 256 in big and 272 in big and 264 not in big
    assert sglang_default(64) == [1, 2, 4, 8, 12, *range(16, 65, 8)]
    assert sglang_default(1000)[-1] == 256


# ---- synthetic traces through the command ----

def write_trace(path, recs, ratio=None, concurrency=None):
    config = {} if ratio is None else {"max_padding_ratio": ratio}
    if concurrency:
        config["workload"] = {"max_concurrency": concurrency}
    with TraceWriter(path, {"model": {"name": "toy"}, "gpu": "toy-gpu", "config": config}) as w:
        for rec in recs:
            w.write(rec)
    return str(path)


def step(i, batch, bucket, ms):
    reason = None if bucket is not None else R.REASON_EAGER_MODE
    return R.step(i, i * 0.01, batch, bucket, bucket, reason, 50.0, ms, batch)


def capture(bucket, mib):
    return R.event(R.EV_CAPTURE, 0.0, bucket=bucket, ok=True, capture_s=0.1, pool_bytes=int(mib * MIB),
                   nvml_bytes=int(mib * MIB), kernels=10, check=None, cause=None, hint=None, error=None)


def cost_records():
    """Graph steps at 1, 8, 32 (2 + 0.05 ms per row), eager steps 10 ms; a round 32, 8, 1:
    the first graph 32 MiB (1 MiB per row), 2 MiB each further graph."""
    recs = [capture(32, 32), capture(8, 2), capture(1, 2),
            R.event(R.EV_CAPTURE_DONE, 0.0, sizes=[1, 8, 32], failed=[], pool_bytes=32 * MIB, seconds=1.0,
                    pool="shared")]
    i = 0
    for _ in range(5):
        for s in (1, 8, 32):
            recs.append(step(i, s, s, 2 + 0.05 * s))
            recs.append(step(i + 1, s, None, 10.0))
            i += 2
    return recs


def mix_records(n3=50, n17=50):
    return [step(i, 3 if i < n3 else 17, None, 10.0) for i in range(n3 + n17)]


def recommend_json(capsys, *args):
    assert main(["recommend", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_known_answer_two_batch_sizes(tmp_path, capsys):
    mix = write_trace(tmp_path / "mix.jsonl", mix_records(), ratio=0.5)
    costs = write_trace(tmp_path / "costs.jsonl", cost_records())
    out = recommend_json(capsys, mix, "--costs", costs, "--memory-budget", "100", "--max-buckets", "2")
    assert out["recommended"] == [3, 17]
    rec = out["lists"][0]
    assert rec["graph_hit_pct"] == pytest.approx(100.0) and rec["padding_waste_pct"] == 0.0
    assert rec["expected_step_ms"] == pytest.approx(2 + 0.05 * 10)       # mean of 2.15 and 2.85
    assert rec["tokens_per_s"] == pytest.approx(1000 * 10 / 2.5)
    assert rec["graph_mib"] == pytest.approx(17 + 2)
    assert out["max_padding_ratio_source"] == "trace header"
    # one graph: 17 cannot serve 3 within ratio 0.5, so 3 (the cheaper graph) wins
    assert recommend_json(capsys, mix, "--costs", costs, "--memory-budget", "100",
                          "--max-buckets", "1")["recommended"] == [3]
    # the trace's ratio is honoured: at 1.0, 17 serves both
    loose = write_trace(tmp_path / "loose.jsonl", mix_records(), ratio=1.0)
    assert recommend_json(capsys, loose, "--costs", costs, "--memory-budget", "100",
                          "--max-buckets", "1")["recommended"] == [17]
    # 10 MiB: 17 (17 MiB) does not fit; a useless second size would tie, so just [3]
    assert recommend_json(capsys, mix, "--costs", costs, "--memory-budget", "10",
                          "--max-buckets", "4")["recommended"] == [3]


def test_costs_say_what_was_measured(tmp_path, capsys):
    mix = write_trace(tmp_path / "mix.jsonl", mix_records(), concurrency=24)
    costs = write_trace(tmp_path / "costs.jsonl", cost_records())
    out = recommend_json(capsys, mix, "--costs", costs, "--memory-budget", "100", "--max-buckets", "2")
    c = out["costs"]
    assert set(c["graph_ms"]["measured"]) == {"1", "8", "32"}
    assert 3 in c["fitted_graph_sizes"] and 8 not in c["fitted_graph_sizes"]
    assert c["first_graph_mib"]["measured"] == {"32": 32.0} and c["extra_graph_mib"] == 2.0
    assert out["max_num_seqs"] == 24 and out["max_padding_ratio_source"] == "default"
    names = [x["name"] for x in out["lists"]]
    assert names == ["recommended", "seed 2^k", "vLLM default", "SGLang default"]  # mix has no captures
    assert out["lists"][3]["sizes"] == [1, 2, 4, 8, 12, 16, 24]


def test_sample_trace_end_to_end(capsys):
    assert main(["recommend", SAMPLE, "--memory-budget", "512", "--max-buckets", "6"]) == 0
    text = capsys.readouterr().out
    assert "recommended: --cudagraph-capture-sizes " in text
    for name in ("current", "seed 2^k", "vLLM default", "SGLang default", "measured", "fitted"):
        assert name in text
    assert max(len(line) for line in text.splitlines()) <= 120

    out = recommend_json(capsys, SAMPLE, "--memory-budget", "512", "--max-buckets", "6")
    rec, *others = out["lists"]
    assert rec["name"] == "recommended" and 1 <= rec["graphs"] <= 6 and rec["fits_budget"]
    assert rec["sizes"] == out["recommended"] and max(rec["sizes"]) <= out["max_batch"] == 50
    assert others[0]["name"] == "current" and others[0]["sizes"] == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    # the optimum within the limits is at least as fast as every list that also fits them
    for x in others:
        if x["fits_budget"] and x["graphs"] <= 6:
            assert rec["expected_step_ms"] <= x["expected_step_ms"] + 1e-9
    assert out["steps"] == 4000 and out["max_padding_ratio"] == 0.5


def header_only(tmp_path):
    return write_trace(tmp_path / "empty.jsonl", [])


def no_eager(tmp_path):
    return write_trace(tmp_path / "graph_only.jsonl", [r for r in cost_records() if r.get("bucket", 1)])


def not_a_trace(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    return str(path)


@pytest.mark.parametrize("make, flags, needle", [
    (lambda tmp: "/no/such/trace", ["--memory-budget", "512", "--max-buckets", "6"], "no such trace"),
    (not_a_trace, ["--memory-budget", "512", "--max-buckets", "6"], "not a cgwatch trace"),
    (header_only, ["--memory-budget", "512", "--max-buckets", "6"], "no step records"),
    (no_eager, ["--memory-budget", "512", "--max-buckets", "6"], "no eager steps"),
    (lambda tmp: SAMPLE, ["--memory-budget", "0", "--max-buckets", "6"], "--memory-budget must be > 0"),
    (lambda tmp: SAMPLE, ["--memory-budget", "-5", "--max-buckets", "6"], "--memory-budget must be > 0"),
    (lambda tmp: SAMPLE, ["--memory-budget", "512", "--max-buckets", "0"], "--max-buckets must be >= 1"),
    (lambda tmp: SAMPLE, ["--memory-budget", "1", "--max-buckets", "6"], "fits no graph"),
    (lambda tmp: SAMPLE, ["--memory-budget", "512", "--max-buckets", "6", "--max-padding-ratio", "3"],
     "--max-padding-ratio"),
    (lambda tmp: SAMPLE, ["--memory-budget", "512", "--max-buckets", "6", "--costs", "/no/such/costs"],
     "no such trace"),
    (lambda tmp: SAMPLE, ["--max-buckets", "6"], "--memory-budget"),
])
def test_bad_input_is_one_line(tmp_path, capsys, make, flags, needle):
    assert main(["recommend", make(tmp_path), *flags]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgwatch: ") and needle in lines[0]


def test_costs_from_another_model_are_flagged(tmp_path, capsys):
    mix = write_trace(tmp_path / "mix.jsonl", mix_records(), ratio=0.5)
    costs = write_trace(tmp_path / "costs.jsonl", cost_records())
    assert main(["recommend", mix, "--costs", costs, "--memory-budget", "100", "--max-buckets", "2"]) == 0
    assert capsys.readouterr().err == ""   # same model, GPU and dtype: no warning
    other = tmp_path / "other.jsonl"
    with TraceWriter(other, {"model": {"name": "llama-1b"}, "gpu": "toy-gpu", "config": {}}) as w:
        for rec in cost_records():
            w.write(rec)
    assert main(["recommend", mix, "--costs", str(other), "--memory-budget", "100", "--max-buckets", "2"]) == 0
    assert "warning: --costs model is llama-1b, the trace's is toy" in capsys.readouterr().err


def test_bench_sample_as_costs(capsys):
    """The shipped H100 bench sweep prices the shipped Poisson run: every bench size is measured."""
    bench = sample_path("bench_llama1b_h100.jsonl")
    out = recommend_json(capsys, SAMPLE, "--costs", bench, "--memory-budget", "256", "--max-buckets", "6")
    c = out["costs"]
    assert c["source"] == bench
    assert sorted(int(k) for k in c["graph_ms"]["measured"]) == [1, 2, 4, 8, 16, 32, 64]
    assert sorted(int(k) for k in c["eager_ms"]["measured"]) == [1, 2, 4, 8, 16, 32, 64]
    rec, *others = out["lists"]
    assert rec["fits_budget"] and rec["graphs"] <= 6
    for x in others:
        if x["fits_budget"] and x["graphs"] <= 6:
            assert rec["expected_step_ms"] <= x["expected_step_ms"] + 1e-9
