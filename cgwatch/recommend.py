"""``cgwatch recommend TRACE``: the capture sizes that minimise the expected decode step time.

Inputs, measured in a trace (``--costs`` takes the costs from another one, e.g. ``cgwatch bench``); both go
through the validation every reader shares first (``Trace.screened()``): a record that cannot be trusted
(a NaN or negative time, a null batch, a missing bucket, a duplicate step, ...) is left out of every cost
and count, and one warning line on stderr says which.
  p(b)          share of the step records with batch b (always from TRACE)
  graph_ms(s)   median records.step_ms of the graph steps served by bucket s, over every capture round
                (a size measured again is one pool of samples: its median, not the newest round's)
  eager_ms(b)   median step_ms of eager steps at batch b
A size with >= MIN_STEPS steps is measured (if no size has that many, every observed size is). A larger
batch never makes a step cheaper, so the measured medians are made non-decreasing in size before anything
else: a median above the next larger size's is pooled with it (isotonic regression by the pool-adjacent-
violators algorithm, each median weighted by its steps), so one noisy point (a graph at batch 16 measured
slower than at 24) cannot make the larger graph look cheaper and steer the answer. The output names the
measured sizes, the pooled ones (median -> value used) and the fitted ones. The rest are fitted:
piecewise-linear between measured points; past the ends, the least-squares slope of all points (>= 0)
through the end point; a single point extends flat. The whole curve is then non-decreasing too.

Dispatch as engine/buckets.py: batch b runs on the smallest chosen size s >= b, eager if there is
none or if (s - b) / s > the padding ratio. E[T](S) = sum_b p(b) * (graph_ms(s) or eager_ms(b)).

Memory model, from the capture events (captured largest-first into one shared pool):
  M(S) = first(max S) + extra * (|S| - 1)
  first(s)  the device memory (nvml_bytes, else pool_bytes) of a round's first, largest graph:
            the pool grows for it. Newest measurement per size; fitted over s like the times (not
            pooled), except that a single point scales in proportion to s (activations grow with rows).
  extra     the mean that each further graph of the newest round with several graphs added:
            driver-side graph memory (~2 MiB) plus pool growth when it missed the larger graphs'
            blocks. With no such round, 2 MiB (assumed, and said so).
M depends only on the largest size and the count, so the search is exact, over sizes 1..B
(B = the largest observed batch): with seg(a, s) the cost of batches a+1..s served by size s,
  f[j][s] = min_{a < s} f[j-1][a] + seg(a, s)       (j sizes, the largest s; f[0][0] = 0)
  best    = min over m, j with M = first(m) + extra*(j-1) <= budget, j <= K of f[j][m] + tail(m),
and the empty list (all eager). Ties go to fewer graphs, then less memory. O(K B^2) time,
O(B^2 + K B) memory.

A budget below the cheapest single graph is an error, not a "no graphs" answer: it is most likely
a unit slip (MiB), and the message says that the alternative is to run eager.
"""

from __future__ import annotations

import bisect
import math
import operator
import sys
import textwrap

import numpy as np
from dataclasses import dataclass, field

from cgwatch import records as R
from cgwatch.engine.buckets import DEFAULT_CAPTURE_SIZES, check_ratio, dispatch, padding_ratio
from cgwatch.errors import CgwatchError
from cgwatch.aggregate import percentile
from cgwatch.jsonl import dump_strict

MIB = 2 ** 20
MIN_STEPS = 3                      # steps a size needs for its median to count as measured
DEFAULT_RATIO = 0.5                # --max-padding-ratio when neither the flag nor the trace has one
ASSUMED_EXTRA_BYTES = 2 * MIB      # per further graph, when no capture round had several graphs
TIE_REL = 1e-9                     # expected times this close (relative) are a tie


# ---- cost curves ----

@dataclass
class Curve:
    """A cost over sizes: the values used at measured sizes, fitted elsewhere (see the module docstring)."""
    points: dict[int, float]       # size -> value used there (for times: the monotone fit of the medians)
    single: str = "flat"           # how one point extends: "flat" or "proportional"
    counts: dict[int, int] = field(default_factory=dict)   # size -> steps behind the median
    medians: dict[int, float] = field(default_factory=dict)   # size -> the measured median (times only)
    _xs: list[int] = field(init=False, repr=False)
    _slope: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._xs = sorted(self.points)
        self._slope = max(0.0, _least_squares_slope([(x, self.points[x]) for x in self._xs]))
        if not self.medians:
            self.medians = dict(self.points)

    def measured(self, x: int) -> bool:
        return x in self.points

    def pooled(self, x: int) -> bool:
        """Measured, but its median was pooled with a neighbour's to keep the curve non-decreasing."""
        return x in self.points and not math.isclose(self.points[x], self.medians[x], rel_tol=1e-9, abs_tol=1e-12)

    def __call__(self, x: int) -> float:
        if x in self.points:
            return self.points[x]
        xs, ys = self._xs, self.points
        if len(xs) == 1:
            x0 = xs[0]
            return ys[x0] * x / x0 if self.single == "proportional" else ys[x0]
        if x < xs[0]:
            return max(0.0, ys[xs[0]] - self._slope * (xs[0] - x))
        if x > xs[-1]:
            return ys[xs[-1]] + self._slope * (x - xs[-1])
        i = bisect.bisect_left(xs, x)
        x0, x1 = xs[i - 1], xs[i]
        return ys[x0] + (ys[x1] - ys[x0]) * (x - x0) / (x1 - x0)


def _least_squares_slope(pts: list[tuple[int, float]]) -> float:
    if len(pts) < 2:
        return 0.0
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den


def isotonic(values: list[float], weights: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent
    violators): a run of values that decreases is replaced by its weighted mean."""
    blocks: list[list[float]] = []   # [weighted sum, weight, count]
    for v, w in zip(values, weights):
        blocks.append([v * w, w, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            s, w2, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w2
            blocks[-1][2] += n
    out: list[float] = []
    for s, w, n in blocks:
        out += [s / w] * int(n)
    return out


def _median_curve(samples: dict[int, list[float]]) -> Curve:
    """Median per size (sizes with fewer than MIN_STEPS samples are left to the fit), made non-decreasing
    in size (isotonic, weighted by steps)."""
    keep = {s: v for s, v in samples.items() if len(v) >= MIN_STEPS} or samples
    sizes = sorted(keep)
    medians = [percentile(np.sort(np.asarray(keep[s], dtype=np.float64)), 50) for s in sizes]
    used = isotonic(medians, [float(len(keep[s])) for s in sizes])
    return Curve(dict(zip(sizes, used)), counts={s: len(keep[s]) for s in sizes}, medians=dict(zip(sizes, medians)))


@dataclass
class Costs:
    source: str          # the trace the costs come from
    graph_ms: Curve      # by capture size
    eager_ms: Curve      # by batch size
    first_bytes: Curve   # the largest graph of a round, by its size
    extra_bytes: float   # each further graph
    extra_note: str      # where extra_bytes comes from

    def memory_bytes(self, largest: int, count: int) -> float:
        """M(S) for a list of ``count`` sizes whose largest is ``largest``."""
        return 0.0 if count == 0 else self.first_bytes(largest) + self.extra_bytes * (count - 1)

    def list_bytes(self, sizes: list[int]) -> float:
        return self.memory_bytes(max(sizes), len(sizes)) if sizes else 0.0


def _capture_bytes(ev: dict) -> int | None:
    return ev.get("nvml_bytes") if ev.get("nvml_bytes") is not None else ev.get("pool_bytes")


class _View:
    """The screened trace as recommend reads it: the steps' ``batch``, ``bucket`` (-1: eager) and ``ms``
    (records.step_ms) as numpy arrays in file order, the other records it accepts (``others``), and the
    warning line. A compact trace goes through fold.py (no record decoded but the few that are not
    columnar); JSON Lines through Trace.screened()."""

    def __init__(self, trace):
        self.others: list[dict] = list(trace.opening or ())   # a window's: the capture events before it
        if trace.compact is not None:
            from cgwatch.fold import fold
            _, scr = fold(trace, window=0, on_record=self.others.append, steps=True, count=False)   # no stats
            st = scr.steps
            self.batch, self.bucket, self.ms = st["batch"], st["bucket"], st["ms"]
            self.warning = scr.warning
        else:
            scr = trace.screened()
            steps = [r for r in scr.records if r.get("type") == R.STEP]
            self.others += [r for r in scr.records if r.get("type") != R.STEP]
            self.batch = np.array([r["batch"] for r in steps], dtype=np.int64)
            self.bucket = np.array([-1 if r["bucket"] is None else r["bucket"] for r in steps], dtype=np.int64)
            self.ms = np.array([R.step_ms(r) for r in steps], dtype=np.float64)
            self.warning = scr.warning


def view(trace) -> _View:
    """The trace's _View, computed once."""
    v = getattr(trace, "_recommend_view", None)
    if v is None:
        v = trace._recommend_view = _View(trace)
    return v


def _by(keys: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """values grouped by key (each group in file order)."""
    small = len(keys) and -(1 << 15) <= int(keys.min()) and int(keys.max()) < 1 << 15
    order = np.argsort(keys.astype(np.int16) if small else keys, kind="stable")   # int16: a radix sort
    ks, vs = keys[order], values[order]
    cuts = np.flatnonzero(np.diff(ks)) + 1
    return {int(g[0]): v for g, v in zip(np.split(ks, cuts), np.split(vs, cuts))} if len(ks) else {}


def measure_costs(trace) -> Costs:
    """Step times and graph memory measured in ``trace``; CgwatchError if one is missing."""
    v = view(trace)
    on = v.bucket >= 0
    graph = _by(v.bucket[on], v.ms[on])
    eager = _by(v.batch[~on], v.ms[~on])
    rounds: list[list[dict]] = []     # successful capture events of each capture round
    pending: list[dict] = []
    for rec in v.others:
        typ = rec.get("type")
        if typ == R.EVENT and rec.get("kind") == R.EV_CAPTURE and rec.get("ok"):
            pending.append(rec)
        elif typ == R.EVENT and rec.get("kind") == R.EV_CAPTURE_DONE:
            rounds.append(pending)
            pending = []
    if pending:                       # a round the trace cut short still measured its graphs
        rounds.append(pending)

    path = trace.path
    hint = "pass --costs with a trace that has them (e.g. from 'cgwatch bench')"
    if not graph:
        raise CgwatchError(f"{path} has no graph steps to time the graphs; {hint}")
    if not eager:
        raise CgwatchError(f"{path} has no eager steps to price eager fallback; {hint}, "
                           "or record a run with some eager steps (--at STEP:eager)")
    first, extra, extra_note = _memory_points(rounds)
    if not first:
        raise CgwatchError(f"{path} has no capture event with a memory measurement; {hint}")
    first_curve = Curve({s: float(b) for s, b in first.items()}, single="proportional")
    return Costs(path, _median_curve(graph), _median_curve(eager), first_curve, extra, extra_note)


def _memory_points(rounds: list[list[dict]]) -> tuple[dict[int, int], float, str]:
    """first(s) points (the newest per size), and extra bytes per further graph with its source."""
    first: dict[int, int] = {}
    extra, note = None, ""
    for n, caps in enumerate(rounds, 1):
        if not caps:
            continue
        largest = max(caps, key=lambda ev: ev["bucket"])
        if _capture_bytes(largest) is not None:
            first[largest["bucket"]] = _capture_bytes(largest)
        others = [_capture_bytes(ev) for ev in caps if ev is not largest and _capture_bytes(ev) is not None]
        if others:
            extra = sum(others) / len(others)
            note = (f"mean of the {len(others)} further graphs of capture round {n} "
                    f"(of {len(rounds)})")
    if extra is None:
        extra, note = ASSUMED_EXTRA_BYTES, "assumed (no capture round with several graphs)"
    return first, float(extra), note


# ---- evaluating a size list ----

@dataclass
class Mix:
    """The observed batch-size distribution."""
    counts: dict[int, int]         # batch -> steps

    @property
    def steps(self) -> int:
        return sum(self.counts.values())

    @property
    def max_batch(self) -> int:
        return max(self.counts)

    @property
    def mean_batch(self) -> float:
        return sum(b * n for b, n in self.counts.items()) / self.steps

    def probs(self) -> list[float]:
        """p[b] for b = 0..max_batch (p[0] = 0)."""
        p = [0.0] * (self.max_batch + 1)
        for b, n in self.counts.items():
            p[b] = n / self.steps
        return p


def batch_mix(trace) -> Mix:
    b = view(trace).batch
    sizes, n = np.unique(b[b >= 1], return_counts=True)
    counts = {int(s): int(k) for s, k in zip(sizes, n)}
    if not counts:
        what = f"{trace.path} has" if _window(trace) is None else f"the window {_window(trace)} of {trace.path} holds"
        raise CgwatchError(f"{what} no step records: no batch sizes to recommend for")
    return Mix(dict(counts))


def evaluate(name: str, sizes: list[int], mix: Mix, costs: Costs, ratio: float, budget_bytes: float) -> dict:
    """One size list under the dispatch rules: the table row (JSON-ready)."""
    sizes = sorted(set(sizes))
    time = graph_share = padded = computed = 0.0
    for b, n in mix.counts.items():
        p = n / mix.steps
        d = dispatch(b, sizes, max_padding_ratio=ratio)
        if d.bucket is None:
            time += p * costs.eager_ms(b)
        else:
            time += p * costs.graph_ms(d.bucket)
            graph_share += p
            padded += p * (d.bucket - b)
            computed += p * d.bucket
    mem = costs.list_bytes(sizes)
    return {"name": name, "sizes": sizes, "graphs": len(sizes), "expected_step_ms": time,
            "tokens_per_s": 1000.0 * mix.mean_batch / time if time > 0 else None,
            "graph_hit_pct": 100.0 * graph_share,
            "padding_waste_pct": 100.0 * padded / computed if computed else None,
            "graph_mib": mem / MIB, "fits_budget": mem <= budget_bytes}


# ---- the exact search ----

def optimal_sizes(p: list[float], graph_ms: list[float], eager_ms: list[float], ratio: float,
                  max_graphs: int, memory, budget: float) -> tuple[float, list[int]]:
    """Exact minimum of the expected step time over size lists S within 1..B (B = len(p) - 1),
    |S| <= max_graphs and memory(max S, |S|) <= budget. ``p``, ``graph_ms`` (by size) and
    ``eager_ms`` (by batch) are indexed 1..B. Returns (expected time, sorted sizes)."""
    B = len(p) - 1
    seg = _segment_costs(p, graph_ms, eager_ms, ratio)
    tail = [0.0] * (B + 2)                      # tail[m]: batches above m, all eager
    for b in range(B, 0, -1):
        tail[b - 1] = tail[b] + p[b] * eager_ms[b]
    allowed = [0] + [_most_graphs(m, max_graphs, memory, budget) for m in range(1, B + 1)]
    candidates = [(tail[0], 0, 0.0, 0)]         # (time, graphs, memory, largest): the empty list
    f_prev = [0.0] + [math.inf] * B             # f[0]: only "nothing chosen yet" at a = 0
    parents: list[list[int]] = []
    for j in range(1, max(allowed) + 1):
        f, par = [math.inf] * (B + 1), [0] * (B + 1)
        for s in range(j, B + 1):
            vals = list(map(operator.add, f_prev[:s], seg[s]))
            f[s] = min(vals)
            par[s] = vals.index(f[s])
        parents.append(par)
        candidates += [(f[m] + tail[m], j, memory(m, j), m) for m in range(j, B + 1)
                       if j <= allowed[m] and f[m] < math.inf]
        f_prev = f
    best = min(c[0] for c in candidates)
    time, j, _, m = min((c for c in candidates if c[0] <= best + TIE_REL * max(1.0, abs(best))),
                        key=lambda c: c[1:])
    sizes = []
    while j > 0:
        sizes.append(m)
        m = parents[j - 1][m]
        j -= 1
    return time, sorted(sizes)


def _segment_costs(p, graph_ms, eager_ms, ratio) -> list[list[float]]:
    """seg[s][a]: expected cost of batches a+1..s when size s serves them (a < s)."""
    B = len(p) - 1
    seg: list[list[float]] = [[]]
    for s in range(1, B + 1):
        col, acc = [0.0] * s, 0.0
        for b in range(s, 0, -1):
            served = graph_ms[s] if padding_ratio(b, s) <= ratio else eager_ms[b]
            acc += p[b] * served
            col[b - 1] = acc
        seg.append(col)
    return seg


def _most_graphs(largest: int, max_graphs: int, memory, budget: float) -> int:
    """The most graphs (<= max_graphs) whose memory fits when the largest size is ``largest``."""
    n = 0
    while n < min(max_graphs, largest) and memory(largest, n + 1) <= budget:
        n += 1
    return n


def recommend(mix: Mix, costs: Costs, ratio: float, budget_bytes: float, max_graphs: int) -> list[int]:
    B = mix.max_batch
    cheapest = min(range(1, B + 1), key=lambda s: costs.memory_bytes(s, 1))
    if costs.memory_bytes(cheapest, 1) > budget_bytes:
        raise CgwatchError(f"--memory-budget {budget_bytes / MIB:g} MiB fits no graph: the cheapest "
                           f"(size {cheapest}) needs {costs.memory_bytes(cheapest, 1) / MIB:.1f} MiB; "
                           "raise the budget, or run eager (--enforce-eager)")
    sizes = range(B + 1)
    _, best = optimal_sizes(mix.probs(), [costs.graph_ms(s) if s else 0.0 for s in sizes],
                            [costs.eager_ms(b) if b else 0.0 for b in sizes], ratio,
                            max_graphs, costs.memory_bytes, budget_bytes)
    return best


# ---- the lists to compare with ----

def vllm_default(max_num_seqs: int) -> list[int]:
    """vLLM's default capture sizes: 1, 2, 4, multiples of 8 below 256, then of 16, up to
    min(2 * max_num_seqs, 512)."""
    cap = min(2 * max_num_seqs, 512)
    return [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)] if s <= cap]


def sglang_default(max_num_seqs: int) -> list[int]:
    """SGLang's decode default, clipped to the running-request cap as SGLang clips it."""
    return [s for s in [1, 2, 4, 8, 12, *range(16, 257, 8)] if s <= max_num_seqs]


def _max_concurrency(header: dict) -> int | None:
    for owner in (header.get("config") or {}, header):
        value = (owner.get("workload") or {}).get("max_concurrency")
        if isinstance(value, int) and value >= 1:
            return value
    return None


def _window(trace) -> str | None:
    """The label of a window's trace (window.windowed), None for a whole one."""
    return None if trace.opened_window is None else trace.opened_window.label()


def current_sizes(trace) -> list[int] | None:
    """The sizes of the trace's latest capture round."""
    sizes = None
    for rec in view(trace).others:
        if rec.get("type") == R.EVENT and rec.get("kind") == R.EV_CAPTURE_DONE:
            sizes = rec.get("sizes") or []
    return sizes


def trace_ratio(trace) -> tuple[float | None, str]:
    """The padding ratio in force at the end of the trace, and where it was found."""
    value, source = (trace.header.get("config") or {}).get("max_padding_ratio"), "trace header"
    for rec in view(trace).others:
        if rec.get("type") == R.EVENT and rec.get("kind") == R.EV_PADDING and rec.get("value") is not None:
            value, source = rec["value"], "trace, last change"
    return value, source


# ---- the command ----

def add_parser(sub) -> None:
    p = sub.add_parser("recommend", help="capture sizes that minimise the expected step time of a trace's batch mix")
    p.add_argument("trace", help="a trace file, or sample:NAME: its batch-size distribution (and costs, "
                                 "without --costs)")
    p.add_argument("--memory-budget", type=float, required=True, metavar="MiB", help="graph memory budget, MiB")
    p.add_argument("--max-buckets", type=int, required=True, metavar="K", help="at most K capture sizes")
    p.add_argument("--costs", metavar="TRACE2", help="take step times and graph memory from this trace "
                   "(e.g. one from 'cgwatch bench')")
    p.add_argument("--max-padding-ratio", type=float, default=None, metavar="R",
                   help=f"dispatch ratio (default: the trace's, else {DEFAULT_RATIO})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    from cgwatch.window import add_arguments
    add_arguments(p, "steps (the batch mix, and the costs without --costs)")
    p.set_defaults(func=run)


def run(a) -> int:
    from cgwatch.trace import read_trace

    if not 0 < a.memory_budget < float("inf"):
        raise CgwatchError(f"--memory-budget must be > 0 and finite (MiB), got {a.memory_budget:g}")
    if a.max_buckets < 1:
        raise CgwatchError(f"--max-buckets must be >= 1, got {a.max_buckets}")
    from cgwatch.window import of_args, windowed
    window = of_args(a)   # a bad time: one line, before the trace is read
    trace = read_trace(a.trace)
    if window is not None:   # the window's steps, under the captures before it
        trace = windowed(trace, window)
    cost_trace = read_trace(a.costs) if a.costs else trace
    views = [(t, view(t)) for t in ((trace,) if cost_trace is trace else (trace, cost_trace))]
    # (the views first: their pass finds the end record, so warnings() needs no pass of its own)
    if trace.window_past_end():   # nothing of the run to recommend for: the one line says why
        raise CgwatchError(f"{trace.path}: {trace.window_past_end()}: no batch sizes to recommend for")
    for t, v in views:
        for w in t.warnings() + ([v.warning] if v.warning else []):
            print(f"cgwatch: {t.path}: {w}", file=sys.stderr)
    for what in ("model", "gpu", "dtype"):   # costs of another model or card answer another question
        mine, theirs = _name(trace.header.get(what)), _name(cost_trace.header.get(what))
        if mine != theirs:
            print(f"cgwatch: warning: --costs {what} is {theirs}, the trace's is {mine}", file=sys.stderr)
    result = build_recommendation(trace, cost_trace, a.memory_budget, a.max_buckets, a.max_padding_ratio)
    if a.json:   # strict JSON: a value that is not a finite number is null
        dump_strict(result, sys.stdout)
    else:
        sys.stdout.write(format_recommendation(result) + "\n")
    return 0


def build_recommendation(trace, cost_trace, budget_mib: float, max_graphs: int,
                         ratio: float | None = None) -> dict:
    """Everything the command prints, as a JSON-ready dict."""
    mix = batch_mix(trace)
    costs = measure_costs(cost_trace)
    if ratio is not None:
        ratio, ratio_source = check_ratio(ratio), "--max-padding-ratio"
    else:
        ratio, ratio_source = trace_ratio(trace)
        ratio, ratio_source = (DEFAULT_RATIO, "default") if ratio is None else (ratio, ratio_source)
    budget = budget_mib * MIB
    best = recommend(mix, costs, ratio, budget, max_graphs)
    concurrency = _max_concurrency(trace.header)
    max_num_seqs = concurrency or mix.max_batch
    lists = [("recommended", best)]
    current = current_sizes(trace)
    if current is not None:
        lists.append(("current", current))
    lists += [("seed 2^k", list(DEFAULT_CAPTURE_SIZES)), ("vLLM default", vllm_default(max_num_seqs)),
              ("SGLang default", sglang_default(max_num_seqs))]
    return {
        "trace": trace.path, "costs_trace": cost_trace.path,
        "window": _window(trace), "costs_window": _window(cost_trace),
        "model": _name(trace.header.get("model")), "gpu": _name(trace.header.get("gpu")),
        "steps": mix.steps, "max_batch": mix.max_batch, "mean_batch": mix.mean_batch,
        "batch_counts": {str(b): mix.counts[b] for b in sorted(mix.counts)},
        "max_padding_ratio": ratio, "max_padding_ratio_source": ratio_source,
        "memory_budget_mib": budget_mib, "max_buckets": max_graphs,
        "max_num_seqs": max_num_seqs,
        "max_num_seqs_source": "trace max concurrency" if concurrency else "max observed batch",
        "recommended": best,
        "lists": [evaluate(name, sizes, mix, costs, ratio, budget) for name, sizes in lists],
        "per_size": _per_size(best, mix, costs, ratio),
        "costs": _costs_summary(costs, mix.max_batch, best),
    }


def _name(v) -> str | None:
    return v.get("name") if isinstance(v, dict) else v


def _per_size(sizes: list[int], mix: Mix, costs: Costs, ratio: float) -> list[dict]:
    """For each recommended size: the batches its graph serves, their share of steps, its cost."""
    rows = []
    for s in sizes:
        served = [b for b in mix.counts if dispatch(b, sizes, max_padding_ratio=ratio).bucket == s]
        rows.append({"size": s, "batches": _ranges(sorted(served)),
                     "steps_pct": 100.0 * sum(mix.counts[b] for b in served) / mix.steps,
                     "graph_ms": costs.graph_ms(s), "measured": costs.graph_ms.measured(s),
                     "pooled": costs.graph_ms.pooled(s)})
    return rows


def _costs_summary(costs: Costs, max_batch: int, sizes: list[int]) -> dict:
    def curve(c: Curve, unit: float = 1.0) -> dict:
        return {"measured": {str(s): c.medians[s] / unit for s in sorted(c.points)},
                "used": {str(s): c.points[s] / unit for s in sorted(c.points)},
                "pooled": [s for s in sorted(c.points) if c.pooled(s)],
                "steps": {str(s): n for s, n in sorted(c.counts.items())}}
    return {"source": costs.source,
            "graph_ms": curve(costs.graph_ms), "eager_ms": curve(costs.eager_ms),
            "first_graph_mib": curve(costs.first_bytes, MIB),
            "extra_graph_mib": costs.extra_bytes / MIB, "extra_graph_source": costs.extra_note,
            "fitted_graph_sizes": [s for s in range(1, max_batch + 1) if not costs.graph_ms.measured(s)],
            "fitted_eager_batches": [b for b in range(1, max_batch + 1) if not costs.eager_ms.measured(b)],
            "recommended_largest": None if not sizes else {
                "size": max(sizes), "mib": costs.first_bytes(max(sizes)) / MIB,
                "measured": costs.first_bytes.measured(max(sizes))}}


# ---- text ----

def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> '1-3, 5, 7-8'."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out) or "none"


def _abbrev(sizes: list[int], keep: int = 12) -> str:
    if not sizes:
        return "none (eager)"
    if len(sizes) <= keep:
        return ",".join(map(str, sizes))
    return ",".join(map(str, sizes[:keep - 3])) + ",..," + ",".join(map(str, sizes[-2:]))


def _opt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _table(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
            for cells in (header, *rows)]


def format_recommendation(r: dict) -> str:
    """The recommendation as plain text (no trailing newline)."""
    best = r["recommended"]
    lines = [f"cgwatch recommend: {r['model'] or 'n/a'} on {r['gpu'] or 'n/a'}; {r['steps']:,} steps, "
             f"batch 1-{r['max_batch']} (mean {r['mean_batch']:.1f})"
             + (f", window {r['window']}" if r.get("window") else ""),
             f"budget {r['memory_budget_mib']:g} MiB, at most {r['max_buckets']} graphs; max padding ratio "
             f"{r['max_padding_ratio']:g} ({r['max_padding_ratio_source']}); costs from "
             + ("this trace" if (r["costs_trace"], r.get("costs_window")) == (r["trace"], r.get("window"))
                else r["costs_trace"] + (" (the whole run)" if r["costs_trace"] == r["trace"] else "")),
             "",
             f"recommended: --cudagraph-capture-sizes {','.join(map(str, best))}" if best
             else "recommended: no graphs (none lowers the expected step time within the limits)", ""]
    head = ["list", "sizes", "graphs", "step ms", "tok/s", "hit %", "pad waste %", "graph MiB", "fits"]
    rows = [[x["name"], _abbrev(x["sizes"]), str(x["graphs"]), f"{x['expected_step_ms']:.3f}",
             _opt(x["tokens_per_s"], ",.0f"), f"{x['graph_hit_pct']:.1f}", _opt(x["padding_waste_pct"], ".1f"),
             f"{x['graph_mib']:.1f}", "yes" if x["fits_budget"] else "NO"] for x in r["lists"]]
    lines += _table(head, rows, left={0, 1})
    lines += ["(step ms: expected decode step time over the batch mix; tok/s: mean batch / mean step time;",
              f" max num seqs for the vLLM and SGLang lists: {r['max_num_seqs']} ({r['max_num_seqs_source']}))"]
    if r["per_size"]:
        lines += ["", "recommended sizes:"]
        rows = [[str(x["size"]), x["batches"], f"{x['steps_pct']:.1f}", f"{x['graph_ms']:.3f}",
                 "pooled" if x.get("pooled") else "measured" if x["measured"] else "fitted"] for x in r["per_size"]]
        lines += ["  " + s for s in _table(["size", "graph serves batches", "steps %", "graph ms", ""],
                                           rows, left={1, 4})]
    lines += ["", "costs (step ms: the median of a size's steps, measured where it has >= 3; made non-decreasing in size,",
              " since a larger batch is never cheaper: a median above a larger size's is pooled with it, weighted by",
              " steps; the rest fitted, piecewise-linear):"]
    lines += _cost_lines(r["costs"], r["max_batch"])
    return "\n".join(lines)


def _cost_lines(c: dict, max_batch: int) -> list[str]:
    def sizes(d: dict) -> str:
        return _ranges(sorted(int(s) for s in d))
    first = c["first_graph_mib"]["measured"]
    first_text = ", ".join(f"{v:.1f} MiB at {s}" for s, v in first.items())
    largest = c["recommended_largest"]
    fit_first = "scaled in proportion to size elsewhere" if len(first) == 1 else "fitted elsewhere"
    return [f"  graph step ms  measured at sizes {sizes(c['graph_ms']['measured'])}",
            *_pooled_lines(c["graph_ms"]),
            f"                 fitted at {_ranges(c['fitted_graph_sizes'])}",
            f"  eager step ms  measured at batches {sizes(c['eager_ms']['measured'])}",
            *_pooled_lines(c["eager_ms"]),
            f"                 fitted at {_ranges(c['fitted_eager_batches'])}",
            f"  graph memory   largest graph {first_text} (measured), {fit_first};",
            f"                 + {c['extra_graph_mib']:.1f} MiB per further graph: {c['extra_graph_source']}"] + (
        [] if largest is None else
        [f"                 the recommended largest, {largest['size']}: {largest['mib']:.1f} MiB "
         f"({'measured' if largest['measured'] else 'fitted'})"])


def _pooled_lines(curve: dict, width: int = 118) -> list[str]:
    """The pooled sizes, a block per value used: 'pooled (median -> used): 16 4.237, 32 4.024 -> 4.130'
    (a block of more than 3 sizes gives its range of medians), wrapped under the cost lines."""
    pooled = curve.get("pooled") or []
    if not pooled:
        return []
    blocks: list[list[int]] = []
    for s in pooled:
        if blocks and curve["used"][str(blocks[-1][-1])] == curve["used"][str(s)]:
            blocks[-1].append(s)
        else:
            blocks.append([s])
    items = []
    for sizes in blocks:
        med = [curve["measured"][str(s)] for s in sizes]
        used = curve["used"][str(sizes[0])]
        if len(sizes) <= 3:
            items.append(", ".join(f"{s} {m:.3f}" for s, m in zip(sizes, med)) + f" -> {used:.3f}")
        else:
            items.append(f"{_ranges(sizes)} ({min(med):.3f} to {max(med):.3f}) -> {used:.3f}")
    return textwrap.wrap("pooled (median -> used): " + "; ".join(items), width,
                         initial_indent=" " * 17, subsequent_indent=" " * 19)
