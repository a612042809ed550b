"""One accumulator for the numbers of a run: ``RunStats.add(record)`` folds step, prefill, sample and
event records; ``row(key)`` / ``rows()`` / ``totals()`` give the definitions below. ``cgwatch
report`` builds it over a whole trace, the TUI's ``ViewState`` folds live (or replayed) records into
it, and the Prometheus collector reads its counters -- so the three cannot drift. It does not know
whether a record is live or replayed. Step fields are read through the records.py helpers
(``step_rows``, ``step_runtime_mode``, ``step_phase``), so traces from before those fields count
with their old meaning (rows = batch; FULL on a graph step, NONE on an eager one; decode).

Definitions (the product's contract; docs/TRACE_FORMAT.md has the record fields)
--------------------------------------------------------------------------------

A *forward* is one step record: one forward of the model.

Rows: forwards are grouped by ``target`` (the smallest capture size >= rows in force at that
forward); target None is the "over max" row. A bucket with a capture event gets a row even with 0
forwards. Per row, and summed over all rows in the totals:

  forwards (steps)   forwards whose target is this bucket
  graph_steps        of those, forwards a captured graph served (``bucket`` not None) = full + piecewise
  full, piecewise    graph forwards by runtime mode: PIECEWISE where ``runtime_mode`` says so (vLLM's
                     piecewise graphs: attention runs eager between captured pieces), else FULL (one
                     graph ran the whole forward; all of cgwatch's own graphs)
  eager              forwards no graph served (``bucket`` None; runtime mode NONE)
  decode, mixed,     forwards by ``phase``: decode tokens only / prompt tokens and decode tokens in one
  prefill            forward / prompt tokens only; ``non_decode`` = mixed + prefill
  by_mode_phase      forwards by (runtime mode FULL / PIECEWISE / NONE as above, phase)
  requests           sum of ``batch``: requests in the forwards
  rows               sum of ``rows``: tokens the forwards computed, unpadded (= requests in
                     cgwatch's own engine; more with vLLM's mixed forwards or speculative decoding)
  prompt_tokens      sum of ``prompt_tokens`` (the prompt tokens among the rows)
  tokens             sum of ``tokens``: tokens the forwards produced
  padded             sum of ``padded`` (= bucket - rows) over graph forwards
  graph_rows         sum of ``bucket`` over graph forwards: rows the graphs computed, padding included
  misses             eager forwards by ``reason`` ("unknown" if none)
  graph_mode         forwards that ran in graph mode: forwards - misses["eager_mode"] (the user's
                     choice of eager is not a miss)
  hit_pct            100 * graph_steps / graph_mode: the share of graph-mode forwards a graph served
  graph_share_pct    100 * graph_steps / forwards: the share of all forwards a graph served
  full_pct           100 * full / forwards;  piecewise_pct  100 * piecewise / forwards
                     (full_pct + piecewise_pct = graph_share_pct)
  padding_waste_pct  100 * padded / graph_rows: the share of the rows graphs computed that was padding
  graph_p50/p99_ms,  percentiles of records.step_ms (GPU time, else host time) of the row's
  eager_p50/p99_ms   graph / eager forwards; ``graph_n`` / ``eager_n`` values (= graph_steps / eager)
  host_us_graph_p50, p50 of host_us (host time to launch the forward) of graph / eager forwards
  host_us_eager_p50
  gap_us_graph_p50,  p50 of gap_us (GPU idle before a back-to-back forward) of graph / eager forwards
  gap_us_eager_p50   that have both gap_us and gpu_ms; ``gap_us_graph_n`` / ``gap_us_eager_n`` values
  capture, last_ok   the bucket's last capture event / last successful one (views show them)

Percentiles are linearly interpolated (numpy's default "linear" method): over the n sorted values
x[0..n-1], rank r = p/100 * (n - 1), value = x[floor r] + (r - floor r) * (x[ceil r] - x[floor r]);
None with no values. Every view shows or gives n next to them, since a p99 of 4 values says little.
A ``RunStats(window=N)`` keeps only the last N values per row and kind (the TUI: a live run has no
end); ``window=None`` keeps all (the report; compactly, as array('d')); ``window=0`` none (Prometheus).

Totals (besides the sums above):
  duration_s         last forward t - first forward t + the last one's step_ms / 1000 (first/last by t)
  tokens_per_s       tokens / duration_s
  gpu_busy_pct       100 * sum(gpu_ms) / (duration_s * 1000); None if no forward has gpu_ms
  nvml_util_pct      mean of the non-None gpu_util of sample records
  graph_pool_mib     pool_bytes of the latest capture_done event (MiB)
  gpu_idle_graph_pct 100 * sum(gap_us) / (sum(gap_us) + sum(gpu_ms in µs)) over the graph / eager
  gpu_idle_eager_pct forwards that have a gap: the share of back-to-back GPU time lost waiting for
                     the host between forwards; None without gaps
  prefills, prefill_tokens   prefill records and their prompt tokens
  mode_switches, recaptures  mode / recapture events;  alerts  alert events by level
  graph_hit_rate_pct the same value as hit_pct (the key older scripts read)
Any value that cannot be computed is None ("n/a" on screen).

Per rank (tensor parallelism: ``RunStats.ranks``, a ``RankStats``; empty for a one-GPU run). From
the step records' ``rank_ms`` / ``skew_ms``, the samples' ``gpus`` and the capture events' ``ranks``,
by rank r (the GPU cuda:r):
  steps              forwards with a time measured on rank r (rank_ms[r] not None)
  step_p50/p99_ms    percentiles of rank_ms[r] (GPU time, else host time), n = steps
  slowest, slowest_pct  forwards where rank r had the largest time (every rank measured); its share
                     of those forwards. With the all-reduces in every layer, ranks wait for each
                     other inside a step: the rank that starts a step first waits longest, so a
                     rank that is slower to *launch* shows a *shorter* GPU time (docs/TRACE_FORMAT.md)
  nvml_util_pct      mean of the samples' gpus[r].gpu_util;  mem_used_mib  the last gpus[r].mem_used_bytes
  graph_pool_mib     rank_pool_bytes[r] of the latest capture_done event (MiB)
  captured, failed   buckets whose last capture event has ranks[r].ok true / false (a failure of that
                     rank's own capture; the bucket is disabled on every rank either way)
  check_mismatch     buckets whose last capture event has ranks[r].check.tokens_equal false
Totals: skew_p50/p99_ms (percentiles of skew_ms: slowest minus fastest rank, per forward), skew_n.
"""

from __future__ import annotations

import math
from array import array
from collections import deque

from . import records as R

MIB = 2 ** 20
_NUM = frozenset((int, float))
_PHASES = frozenset(R.PHASES)
OVER_MAX = "over_max"   # the label of the target-None row where a label must be a string (Prometheus)


def percentile(sorted_values, p: float) -> float | None:
    """Linearly interpolated percentile (numpy's default method) of already sorted values; None if empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    r = p / 100.0 * (n - 1)
    lo = math.floor(r)
    hi = min(lo + 1, n - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    return a + (r - lo) * (b - a) if b != a else a


def pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def gpu_idle_pct(acc: list[float]) -> float | None:
    """[sum of gap µs, sum of GPU step µs] of the gapped forwards -> the idle share in %."""
    return pct(acc[0], acc[0] + acc[1])


def _values(window: int | None):
    if window is None:
        return array("d")
    if window == 0:
        return None
    return deque(maxlen=window)


class Row:
    """The per-target accumulator (see the module docstring for each field)."""
    __slots__ = ("forwards", "graph_steps", "full", "piecewise", "eager", "phases", "by_mode_phase",
                 "requests", "rows", "prompt_tokens", "tokens", "padded", "graph_rows", "misses",
                 "graph_ms", "eager_ms", "graph_host", "eager_host", "graph_gap", "eager_gap",
                 "capture", "last_ok")

    def __init__(self, window: int | None = None) -> None:
        self.forwards = self.graph_steps = self.full = self.piecewise = self.eager = 0
        self.requests = self.rows = self.prompt_tokens = self.tokens = self.padded = self.graph_rows = 0
        self.phases: dict[str, int] = dict.fromkeys(R.PHASES, 0)
        self.by_mode_phase: dict[tuple[str, str], int] = {}
        self.misses: dict[str, int] = {}
        self.graph_ms, self.eager_ms = _values(window), _values(window)
        self.graph_host, self.eager_host = _values(window), _values(window)
        self.graph_gap, self.eager_gap = _values(window), _values(window)
        self.capture: dict | None = None   # last capture event
        self.last_ok: dict | None = None   # last successful capture event

    @property
    def graph_mode(self) -> int:
        return self.forwards - self.misses.get(R.REASON_EAGER_MODE, 0)

    def summary(self) -> dict:
        """The row's numbers by the module's definitions (JSON-ready)."""
        out = counts(self.forwards, self.graph_steps, self.full, self.piecewise, self.eager, self.phases,
                     self.requests, self.rows, self.prompt_tokens, self.tokens, self.padded,
                     self.graph_rows, self.misses)
        for name, values, ps in (("graph", self.graph_ms, (50, 99)), ("eager", self.eager_ms, (50, 99))):
            s = sorted(values) if values is not None else []
            for p in ps:
                out[f"{name}_p{p}_ms"] = percentile(s, p)
            out[f"{name}_n"] = len(s)
        for key, values in (("host_us_graph", self.graph_host), ("host_us_eager", self.eager_host)):
            out[f"{key}_p50"] = percentile(sorted(values) if values is not None else [], 50)
        for key, values in (("gap_us_graph", self.graph_gap), ("gap_us_eager", self.eager_gap)):
            s = sorted(values) if values is not None else []
            out[f"{key}_p50"] = percentile(s, 50)
            out[f"{key}_n"] = len(s)
        out["by_mode_phase"] = {f"{m}/{ph}": n for (m, ph), n in sorted(self.by_mode_phase.items())}
        return out


def counts(forwards, graph, full, piecewise, eager, phases, requests, rows, prompt_tokens, tokens, padded,
           graph_rows, misses) -> dict:
    """The count fields and their ratios, for a row or for the totals (one definition for both)."""
    graph_mode = forwards - misses.get(R.REASON_EAGER_MODE, 0)
    return {
        "steps": forwards, "forwards": forwards, "graph_steps": graph, "full": full, "piecewise": piecewise,
        "eager": eager, "decode": phases[R.PHASE_DECODE], "mixed": phases[R.PHASE_MIXED],
        "prefill": phases[R.PHASE_PREFILL], "non_decode": forwards - phases[R.PHASE_DECODE],
        "graph_mode": graph_mode, "requests": requests, "rows": rows, "prompt_tokens": prompt_tokens,
        "tokens": tokens, "padded": padded, "graph_rows": graph_rows,
        "hit_pct": pct(graph, graph_mode), "graph_share_pct": pct(graph, forwards),
        "full_pct": pct(full, forwards), "piecewise_pct": pct(piecewise, forwards),
        "padding_waste_pct": pct(padded, graph_rows),
        "misses": dict(sorted(misses.items())),
    }


def check_step(rec: dict) -> None:
    """Raise ValueError (or KeyError for a missing field) if a step record cannot be counted; called
    before anything is counted, so a bad record changes nothing."""
    bad = R.bad_step_field(rec)
    if bad:
        raise ValueError(bad)
    t = rec["t"]
    if not isinstance(t, (int, float)):
        raise ValueError(f"t is {t!r}, not a number")
    rec["target"], rec["bucket"]   # noqa: B018 -- KeyError if missing
    if rec["bucket"] is not None and not isinstance(rec["bucket"], int):
        raise ValueError(f"bucket is {rec['bucket']!r}, not an integer")


class RankStats:
    """Per-rank numbers of a tensor-parallel run (module docstring, "Per rank")."""

    def __init__(self, window: int | None = None) -> None:
        self.window = window
        self.size = 0
        self.ms: dict[int, object] = {}            # rank -> step times (percentile values)
        self.steps: dict[int, int] = {}
        self.ms_sum: dict[int, float] = {}
        self.slowest: dict[int, int] = {}
        self.complete = 0                          # forwards every rank measured
        self.skew = _values(window)
        self.skew_n = 0
        self.skew_sum = 0.0
        self.util: dict[int, list[float]] = {}     # rank -> [sum, n]
        self.mem: dict[int, int] = {}
        self.pool: list | None = None
        self.captures: dict[int, dict[int, dict]] = {}   # bucket -> rank -> its row of the capture event

    def add_step(self, rank_ms: list, skew) -> None:
        if not isinstance(rank_ms, list):
            return
        self.size = max(self.size, len(rank_ms))
        best, best_ms, all_in = None, None, True
        for r, v in enumerate(rank_ms):
            if type(v) not in _NUM:
                all_in = False
                continue
            if r not in self.steps:
                self.steps[r], self.ms_sum[r], self.ms[r] = 0, 0.0, _values(self.window)
            self.steps[r] += 1
            self.ms_sum[r] += v
            if self.window != 0:
                self.ms[r].append(v)
            if best_ms is None or v > best_ms:
                best, best_ms = r, v
        if all_in and best is not None:
            self.complete += 1
            self.slowest[best] = self.slowest.get(best, 0) + 1
        if type(skew) in _NUM:
            self.skew_n += 1
            self.skew_sum += skew
            if self.window != 0:
                self.skew.append(skew)

    def add_sample(self, gpus: list) -> None:
        for g in gpus if isinstance(gpus, list) else ():
            r = g.get("gpu") if isinstance(g, dict) else None
            if not isinstance(r, int):
                continue
            self.size = max(self.size, r + 1)
            if type(g.get("gpu_util")) in _NUM:
                acc = self.util.setdefault(r, [0.0, 0])
                acc[0] += g["gpu_util"]
                acc[1] += 1
            if type(g.get("mem_used_bytes")) in _NUM:
                self.mem[r] = g["mem_used_bytes"]

    def add_capture(self, rec: dict) -> None:
        rows = rec.get("ranks")
        if isinstance(rows, list):
            self.captures[rec["bucket"]] = {row["rank"]: row for row in rows
                                            if isinstance(row, dict) and isinstance(row.get("rank"), int)}
            self.size = max([self.size, *(r + 1 for r in self.captures[rec["bucket"]])])

    def add_capture_done(self, rec: dict) -> None:
        pools = rec.get("rank_pool_bytes")
        if isinstance(pools, list):
            self.pool = pools
            self.size = max(self.size, len(pools))

    def rows(self) -> list[dict]:
        """One dict a rank (rank 0 first); empty when the run had one rank."""
        out = []
        for r in range(self.size if self.size > 1 else 0):
            vals = sorted(self.ms.get(r) or ())
            util = self.util.get(r)
            pool = self.pool[r] if self.pool and r < len(self.pool) else None
            caps = {b: rows[r] for b, rows in self.captures.items() if r in rows}
            out.append({
                "rank": r, "steps": self.steps.get(r, 0),
                "step_p50_ms": percentile(vals, 50), "step_p99_ms": percentile(vals, 99),
                "step_mean_ms": self.ms_sum[r] / self.steps[r] if self.steps.get(r) else None,
                "slowest": self.slowest.get(r, 0), "slowest_pct": pct(self.slowest.get(r, 0), self.complete),
                "nvml_util_pct": util[0] / util[1] if util else None,
                "mem_used_mib": self.mem[r] / MIB if r in self.mem else None,
                "graph_pool_mib": None if type(pool) not in _NUM else pool / MIB,
                "captured": sorted(b for b, c in caps.items() if c.get("ok")),
                "failed": sorted(b for b, c in caps.items() if not c.get("ok")),
                "check_mismatch": sorted(b for b, c in caps.items()
                                         if isinstance(c.get("check"), dict) and c["check"].get("tokens_equal") is False),
            })
        return out

    def totals(self) -> dict:
        vals = sorted(self.skew) if self.skew is not None else []
        return {"skew_p50_ms": percentile(vals, 50), "skew_p99_ms": percentile(vals, 99), "skew_n": self.skew_n,
                "skew_mean_ms": self.skew_sum / self.skew_n if self.skew_n else None}


class RunStats:
    """The accumulator. ``window``: percentile values kept per row and kind (None: all, 0: none)."""

    def __init__(self, window: int | None = None) -> None:
        self.window = window
        self.buckets: dict[int | None, Row] = {}
        self.sizes_seen: set[int] = set()   # capture sizes seen in capture / capture_done events
        self.n = self.graph = self.tokens = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.last_ms = 0.0
        self.gpu_ms_sum, self.gpu_ms_any = 0.0, False
        self.util_sum, self.util_n = 0.0, 0
        self.pool_bytes: int | None = None
        self.prefills = self.prefill_tokens = self.mode_switches = self.recaptures = 0
        self.alerts: dict[str, int] = {}
        self.no_cuda = False   # a forward ran eager for lack of CUDA: no graphs, no pool
        self.idle = {"graph": [0.0, 0.0], "eager": [0.0, 0.0]}   # mode -> [sum gap µs, sum gpu µs]
        self.ranks = RankStats(window)

    def row(self, key: int | None) -> Row:
        row = self.buckets.get(key)
        if row is None:
            row = self.buckets[key] = Row(self.window)
        return row

    # -- folding -----------------------------------------------------------------------------------
    def add(self, rec: dict) -> None:
        typ = rec.get("type")
        if typ == R.STEP:
            self.add_step(rec)
        elif typ == R.SAMPLE:
            if rec.get("gpu_util") is not None:
                self.util_sum += rec["gpu_util"]
                self.util_n += 1
            if "gpus" in rec:
                self.ranks.add_sample(rec["gpus"])
        elif typ == R.PREFILL:
            self.prefills += 1
            self.prefill_tokens += rec.get("tokens") or 0
        elif typ == R.EVENT:
            self._event(rec)

    def add_step(self, rec: dict) -> None:
        # the hot path (the daemon's Prometheus sink runs it in the engine thread): fields read once, the
        # records.py helpers (step_rows, step_phase, step_runtime_mode) inlined, and check_step only when a
        # type is off, so a bad record raises before anything is counted
        t, batch, host_us, gpu_ms = rec["t"], rec["batch"], rec["host_us"], rec["gpu_ms"]
        target, bucket, tokens = rec["target"], rec["bucket"], rec["tokens"]
        rows, padded, gap, prompt = rec.get("rows"), rec.get("padded"), rec.get("gap_us"), rec.get("prompt_tokens")
        if (type(t) not in _NUM or type(batch) not in _NUM or type(host_us) not in _NUM or type(tokens) not in _NUM
                or (gpu_ms is not None and type(gpu_ms) not in _NUM) or (rows is not None and type(rows) not in _NUM)
                or (padded is not None and type(padded) not in _NUM) or (gap is not None and type(gap) not in _NUM)
                or (prompt is not None and type(prompt) not in _NUM)
                or (bucket is not None and type(bucket) is not int)):
            check_step(rec)
        ms = gpu_ms if gpu_ms is not None else host_us / 1000.0   # records.step_ms
        if rows is None:
            rows = batch
        phase = rec.get("phase")
        if phase not in _PHASES:
            phase = R.PHASE_DECODE
        row = self.buckets.get(target)
        if row is None:
            row = self.row(target)
        row.forwards += 1
        row.requests += batch
        row.rows += rows
        if prompt:
            row.prompt_tokens += prompt
        row.tokens += tokens
        row.phases[phase] += 1
        graph = bucket is not None
        if graph:
            if rec.get("runtime_mode") == R.RUNTIME_PIECEWISE:
                mode = R.RUNTIME_PIECEWISE
                row.piecewise += 1
            else:
                mode = R.RUNTIME_FULL
                row.full += 1
            row.graph_steps += 1
            row.padded += padded or 0
            row.graph_rows += bucket
            self.graph += 1
        else:
            mode = R.RUNTIME_NONE
            row.eager += 1
            reason = rec.get("reason") or "unknown"
            row.misses[reason] = row.misses.get(reason, 0) + 1
            if reason == R.REASON_NO_CUDA:
                self.no_cuda = True
        key = (mode, phase)
        by = row.by_mode_phase
        by[key] = by.get(key, 0) + 1
        keep = self.window != 0
        if keep:
            if graph:
                row.graph_ms.append(ms)
                row.graph_host.append(host_us)
            else:
                row.eager_ms.append(ms)
                row.eager_host.append(host_us)
        if gpu_ms is not None:
            self.gpu_ms_sum += gpu_ms
            self.gpu_ms_any = True
            if gap is not None:
                acc = self.idle["graph" if graph else "eager"]
                acc[0] += gap
                acc[1] += gpu_ms * 1000.0
                if keep:
                    (row.graph_gap if graph else row.eager_gap).append(gap)
        self.tokens += tokens
        self.n += 1
        rank_ms = rec.get("rank_ms")
        if rank_ms is not None:
            self.ranks.add_step(rank_ms, rec.get("skew_ms"))
        # forwards are emitted when their GPU time is read: use min/max t
        if self.first_t is None or t < self.first_t:
            self.first_t = t
        if self.last_t is None or t >= self.last_t:
            self.last_t, self.last_ms = t, ms

    def _event(self, rec: dict) -> None:
        kind = rec.get("kind")
        if kind == R.EV_CAPTURE:
            b = rec["bucket"]
            self.sizes_seen.add(b)
            row = self.row(b)
            row.capture = rec
            if rec.get("ok"):
                row.last_ok = rec
            if "ranks" in rec:
                self.ranks.add_capture(rec)
        elif kind == R.EV_CAPTURE_DONE:
            self.sizes_seen.update(rec.get("sizes") or (), rec.get("failed") or ())
            self.pool_bytes = rec.get("pool_bytes")
            if "rank_pool_bytes" in rec:
                self.ranks.add_capture_done(rec)
        elif kind == R.EV_MODE:
            self.mode_switches += 1
        elif kind == R.EV_RECAPTURE:
            self.recaptures += 1
        elif kind == R.EV_ALERT:
            level = str(rec.get("level", "warn"))
            self.alerts[level] = self.alerts.get(level, 0) + 1

    # -- reading -----------------------------------------------------------------------------------
    def keys(self) -> list[int | None]:
        """Row keys, sorted, over max last. (A copy: safe while another thread adds rows.)"""
        return sorted(list(self.buckets), key=lambda k: (k is None, k or 0))

    def largest_size(self) -> int | None:
        sizes = self.sizes_seen | {k for k in list(self.buckets) if k is not None}
        return max(sizes) if sizes else None

    def totals(self) -> dict:
        rows = [self.buckets[k] for k in self.keys()]
        phases = dict.fromkeys(R.PHASES, 0)
        misses: dict[str, int] = {}
        for r in rows:
            for ph, n in r.phases.items():
                phases[ph] += n
            for reason, n in r.misses.items():
                misses[reason] = misses.get(reason, 0) + n
        total = lambda field: sum(getattr(r, field) for r in rows)   # noqa: E731
        out = counts(total("forwards"), total("graph_steps"), total("full"), total("piecewise"), total("eager"),
                     phases, total("requests"), total("rows"), total("prompt_tokens"), total("tokens"),
                     total("padded"), total("graph_rows"), misses)
        duration = None if self.first_t is None else self.last_t - self.first_t + self.last_ms / 1000.0
        out.update({
            "graph_hit_rate_pct": out["hit_pct"],
            "duration_s": duration,
            "tokens_per_s": out["tokens"] / duration if duration else None,
            "gpu_busy_pct": pct(self.gpu_ms_sum, duration * 1000.0) if self.gpu_ms_any and duration else None,
            "nvml_util_pct": self.util_sum / self.util_n if self.util_n else None,
            "graph_pool_mib": None if self.pool_bytes is None else self.pool_bytes / MIB,
            "gpu_idle_graph_pct": gpu_idle_pct(self.idle["graph"]),
            "gpu_idle_eager_pct": gpu_idle_pct(self.idle["eager"]),
            "prefills": self.prefills, "prefill_tokens": self.prefill_tokens,
            "mode_switches": self.mode_switches, "recaptures": self.recaptures,
            "alerts": dict(sorted(self.alerts.items())),
        })
        return out

    def shows_runtime_modes(self) -> bool:
        """Any PIECEWISE forward: views then show the FULL / PIECEWISE / eager split."""
        return any(r.piecewise for r in list(self.buckets.values()))

    def shows_phases(self) -> bool:
        """Any forward that is not pure decode (a vLLM mixed or prefill forward): views show them."""
        return any(r.forwards != r.phases[R.PHASE_DECODE] for r in list(self.buckets.values()))

    def shows_rows(self) -> bool:
        """Rows differ from requests somewhere (mixed forwards, speculative decoding)."""
        return any(r.rows != r.requests for r in list(self.buckets.values()))
