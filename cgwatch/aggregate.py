"""One accumulator for the numbers of a run: ``RunStats.add(record)`` folds header, step, prefill, sample,
event and end records; ``epoch_rows()`` / ``totals()`` give the definitions below. ``cgwatch report``
builds it over a whole trace, the TUI's ``ViewState`` folds live (or replayed) records into it, and the
Prometheus collector reads its counters -- so the three cannot drift. It does not know whether a record
is live or replayed. Step fields are read through the records.py helpers (``step_rows``,
``step_runtime_mode``, ``step_phase``), so traces from before those fields count with their old meaning
(rows = batch; FULL on a graph step, NONE on an eager one; decode). It counts what it is given: the
readers screen the records first (records.Screen: NaN, negative times, duplicates, t out of order, a
graph smaller than its rows ... are skipped and said in one warning line), and a step whose fields have
the wrong types raises before anything is counted.
``RunStats.add_steps`` counts many forwards at once from numpy columns (``fold.py``, for a compact trace)
and reaches the same state as ``add_step`` on each (tests/test_fold.py); ``RunStats(bucket_values=False)``
keeps no percentile values in the run-long bucket rows (the report, which shows the epochs' rows).

Definitions (the product's contract; docs/TRACE_FORMAT.md has the record fields)
--------------------------------------------------------------------------------

A *forward* is one step record: one forward of the model.

Epochs: an epoch is a stretch of the run under one capture size list. The first starts with the run; a
``recapture`` event whose size list differs from the one in force starts the next at the event's t (a
``capture_done`` with another list does too, for a trace without the recapture event). A forward belongs
to the epoch in force at its t (not at its place in the file: a step still in flight when the recapture
came is written after the event but ran under the old list); a capture event, to the epoch at its t.
An epoch whose list is not known yet (no capture_done, no recapture) takes the first one that comes
without a new epoch, and so does an epoch that has no forwards yet; that one's rows of buckets the new list
does not have leave with the old list (no row shows a capture of a list no forward ran under).

Rows: in each epoch, forwards are grouped by ``target`` (the smallest capture size >= rows in that
epoch's list); target None is the "over max" row. So a bucket of two size lists is two rows (after a
recapture from 1,2,4,8,16,32 to ...,16,24,32, row 32 served rows 17-32 before and 25-32 after), never one
row that mixes them. A bucket with a capture event gets a row in its epoch even with 0 forwards. The
report shows every epoch's rows (grouped under their size list); the TUI the rows of the epoch in force.
The Prometheus counters are per bucket over the whole run (a counter never resets): the sum of the
report's rows of that bucket over the epochs (``RunStats.buckets``). Per row, and summed over all rows
in the totals:

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
  rows_min, rows_max the fewest / most rows of one forward of the row (None without forwards)
  prompt_tokens      sum of ``prompt_tokens`` (the prompt tokens among the rows)
  tokens             sum of ``tokens``: tokens the forwards produced
  padded             sum of bucket - rows over graph forwards (the trace's ``padded`` field must equal it;
                     a record where it does not is skipped by the screen)
  graph_rows         sum of ``bucket`` over graph forwards: rows the graphs computed, padding included
  misses             eager forwards by ``reason`` ("unknown" if none)
  graph_mode         forwards that could run on a graph: forwards - misses["eager_mode"] - misses["no_cuda"]
                     (neither is a miss: the user chose eager; a run without CUDA has no graphs)
  hit_pct            100 * graph_steps / graph_mode: the share of graph-mode forwards a graph served (None,
                     n/a, where no forward could: eager mode, no CUDA)
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
  capture, last_ok   the bucket's last capture event / last successful one in the epoch (views show them)

Percentiles are linearly interpolated (numpy's default "linear" method): over the n sorted values
x[0..n-1], rank r = p/100 * (n - 1), value = x[floor r] + (r - floor r) * (x[ceil r] - x[floor r]);
None with no values. Every view shows or gives n next to them, since a p99 of 4 values says little.
A ``RunStats(window=N)`` keeps only the last N values per row and kind (the TUI: a live run has no
end); ``window=None`` keeps all (the report; compactly, as array('d')); ``window=0`` none (Prometheus).

Totals (besides the sums above):
  duration_s         the run's wall time: from its start (t = 0, the header's time: every t counts from
                     it; a header ``t`` where one is given) to its end: the end record's t, or the latest t
                     of any record if that is later or there is no end record (a live run, a crash; a
                     step's "t" there is its end, t + step_ms). It includes captures, prefills, pauses and
                     restarts: what the run took, as its end record's duration_s says
  tokens_per_s       tokens / duration_s (None without forwards)
  gpu_busy_pct       100 * sum(gpu_ms) / (duration_s * 1000); None if no forward has gpu_ms
  nvml_util_pct      mean of the non-None gpu_util of sample records
  graph_pool_mib     pool_bytes of the latest capture_done event (MiB)
  gpu_idle_graph_pct 100 * sum(gap_us) / (sum(gap_us) + sum(gpu_ms in µs)) over the graph / eager
  gpu_idle_eager_pct forwards that have a gap: the share of back-to-back GPU time lost waiting for
                     the host between forwards; None without gaps
  prefills, prefill_tokens   prefill records and their prompt tokens
  mode_switches, recaptures  mode / recapture events;  alerts  alert events by level
  epochs             size lists the run's forwards ran under (epochs with forwards)
  graph_hit_rate_pct the same value as hit_pct (the key older scripts read)
Any value that cannot be computed is None ("n/a" on screen).

A window of the run (``cgwatch report`` / ``recommend`` with ``--from``, ``--to`` or ``--last``) counts the
records whose t lies in it (window.py), screened on their own, under the state it opens with: the size
list in force, the buckets' captures and graph memory, the padding ratio (the capture, capture_done,
recapture and padding events before it; ``RunStats.open_window``). Its epochs are those with forwards in
the window and the one in force, numbered from 1 within the window (the list in force at its start is its
list 1, "from the start" of the window: the steps before it are not read, so the run's numbering is not
known); ``duration_s`` runs from the window's start (the run's, if that is later) to its latest record;
mode_switches, recaptures and alerts are those in the window.

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
VIEW_WINDOW = 512   # percentile values a live view keeps per row and kind (the TUI; the daemon's aggregate)
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
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    return a + (r - lo) * (b - a) if b != a else a


def _sorted(values):
    """Sorted values (numpy for a long array('d'): the same order, without a list of Python floats)."""
    if values is None:
        return []
    if isinstance(values, array) and len(values) > 4096:
        import numpy as np
        return np.sort(np.frombuffer(values, dtype=np.float64))
    return sorted(values)


def _extend(values, v) -> None:
    """values (array('d') or deque) += a float64 numpy array, in order."""
    if isinstance(values, array):
        values.frombytes(_bytes(v))
    else:
        values.extend(v.tolist())


def _bytes(v):
    """A numpy array's float64 values as a bytes-like view (array('d').frombytes: one copy, not three)."""
    import numpy as np
    return np.ascontiguousarray(v, dtype=np.float64).view(np.uint8)


def pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def gpu_idle_pct(acc: list[float]) -> float | None:
    """[sum of gap µs, sum of GPU step µs] of the gapped forwards -> the idle share in %."""
    return pct(acc[0], acc[0] + acc[1])


def _seq_sum(start: float, v) -> float:
    """start + v[0] + v[1] + ..., added one by one (the record path's float sum, bit for bit: numpy's sum
    pairs them, rounding otherwise)."""
    import numpy as np
    return float(np.add.accumulate(np.concatenate([[start], v]))[-1])


def _values(window: int | None):
    if window is None:
        return array("d")
    if window == 0:
        return None
    return deque(maxlen=window)


class Row:
    """The per-target accumulator (see the module docstring for each field)."""
    __slots__ = ("forwards", "graph_steps", "full", "piecewise", "eager", "phases", "by_mode_phase",
                 "requests", "rows", "rows_min", "rows_max", "prompt_tokens", "tokens", "padded", "graph_rows", "misses",
                 "graph_ms", "eager_ms", "graph_host", "eager_host", "graph_gap", "eager_gap",
                 "capture", "last_ok")

    def __init__(self, window: int | None = None) -> None:
        self.forwards = self.graph_steps = self.full = self.piecewise = self.eager = 0
        self.requests = self.rows = self.prompt_tokens = self.tokens = self.padded = self.graph_rows = 0
        self.rows_min: int | None = None
        self.rows_max: int | None = None
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
        return graph_mode_forwards(self.forwards, self.misses)

    _COUNTS = ("forwards", "graph_steps", "full", "piecewise", "eager", "requests", "rows", "prompt_tokens",
               "tokens", "padded", "graph_rows")
    _VALUES = ("graph_ms", "eager_ms", "graph_host", "eager_host", "graph_gap", "eager_gap")

    def state(self) -> dict:
        """Everything this row holds, JSON-ready (``Row.from_state`` rebuilds it)."""
        out = {k: getattr(self, k) for k in self._COUNTS}
        out.update(rows_min=self.rows_min, rows_max=self.rows_max,
                   phases=dict(self.phases), misses=dict(self.misses), capture=self.capture, last_ok=self.last_ok,
                   by_mode_phase=[[m, ph, n] for (m, ph), n in self.by_mode_phase.items()])
        for k in self._VALUES:
            v = getattr(self, k)
            out[k] = None if v is None else list(v)
        return out

    @classmethod
    def from_state(cls, st: dict, window: int | None = None) -> "Row":
        row = cls(window)
        for k in cls._COUNTS:
            setattr(row, k, int(st.get(k) or 0))
        for k in ("rows_min", "rows_max"):
            setattr(row, k, st[k] if type(st.get(k)) is int else None)
        row.phases.update({ph: int(n) for ph, n in (st.get("phases") or {}).items() if ph in row.phases})
        row.misses = {str(r): int(n) for r, n in (st.get("misses") or {}).items()}
        row.by_mode_phase = {(str(m), str(ph)): int(n) for m, ph, n in st.get("by_mode_phase") or ()}
        row.capture, row.last_ok = st.get("capture"), st.get("last_ok")
        for k in cls._VALUES:
            dest = getattr(row, k)
            if dest is not None:
                dest.extend(float(x) for x in st.get(k) or ())
        return row

    def summary(self) -> dict:
        """The row's numbers by the module's definitions (JSON-ready)."""
        out = counts(self.forwards, self.graph_steps, self.full, self.piecewise, self.eager, self.phases,
                     self.requests, self.rows, self.prompt_tokens, self.tokens, self.padded,
                     self.graph_rows, self.misses)
        for name, values, ps in (("graph", self.graph_ms, (50, 99)), ("eager", self.eager_ms, (50, 99))):
            s = _sorted(values)
            for p in ps:
                out[f"{name}_p{p}_ms"] = percentile(s, p)
            out[f"{name}_n"] = len(s)
        for key, values in (("host_us_graph", self.graph_host), ("host_us_eager", self.eager_host)):
            out[f"{key}_p50"] = percentile(_sorted(values), 50)
        for key, values in (("gap_us_graph", self.graph_gap), ("gap_us_eager", self.eager_gap)):
            s = _sorted(values)
            out[f"{key}_p50"] = percentile(s, 50)
            out[f"{key}_n"] = len(s)
        out["by_mode_phase"] = {f"{m}/{ph}": n for (m, ph), n in sorted(self.by_mode_phase.items())}
        out["rows_min"], out["rows_max"] = self.rows_min, self.rows_max
        return out

    def count(self, batch, rows, prompt, tokens, phase, bucket, piecewise, reason) -> str:
        """Count one forward (no percentile values); returns its runtime mode."""
        self.forwards += 1
        self.requests += batch
        self.rows += rows
        if self.rows_min is None or rows < self.rows_min:
            self.rows_min = rows
        if self.rows_max is None or rows > self.rows_max:
            self.rows_max = rows
        if prompt:
            self.prompt_tokens += prompt
        self.tokens += tokens
        self.phases[phase] += 1
        if bucket is not None:
            if piecewise:
                mode = R.RUNTIME_PIECEWISE
                self.piecewise += 1
            else:
                mode = R.RUNTIME_FULL
                self.full += 1
            self.graph_steps += 1
            self.padded += bucket - rows
            self.graph_rows += bucket
        else:
            mode = R.RUNTIME_NONE
            self.eager += 1
            self.misses[reason] = self.misses.get(reason, 0) + 1
        key = (mode, phase)
        self.by_mode_phase[key] = self.by_mode_phase.get(key, 0) + 1
        return mode

    def add_counts(self, c: dict) -> None:
        """Many forwards at once (RunStats.add_steps): the sums ``count`` would reach one by one."""
        self.forwards += c["forwards"]
        self.requests += c["requests"]
        self.rows += c["rows"]
        for k, better in (("rows_min", min), ("rows_max", max)):
            cur = getattr(self, k)
            setattr(self, k, c[k] if cur is None else better(cur, c[k]))
        self.prompt_tokens += c["prompt_tokens"]
        self.tokens += c["tokens"]
        for ph, n in c["phases"].items():
            self.phases[ph] += n
        self.full += c["full"]
        self.piecewise += c["piecewise"]
        self.graph_steps += c["full"] + c["piecewise"]
        self.eager += c["eager"]
        self.padded += c["padded"]
        self.graph_rows += c["graph_rows"]
        for reason, n in c["misses"].items():
            self.misses[reason] = self.misses.get(reason, 0) + n
        for key, n in c["by_mode_phase"].items():
            self.by_mode_phase[key] = self.by_mode_phase.get(key, 0) + n

    def keep_many(self, graph: bool, ms, host_us, gap) -> None:
        """``keep`` for numpy arrays of many forwards of one kind, in file order (gap: its non-null values)."""
        if self.graph_ms is None:
            return
        for dest, vals in ((self.graph_ms if graph else self.eager_ms, ms),
                           (self.graph_host if graph else self.eager_host, host_us),
                           (self.graph_gap if graph else self.eager_gap, gap)):
            if not len(vals):
                continue
            if isinstance(dest, array):
                dest.frombytes(_bytes(vals))
            else:
                dest.extend(vals[-dest.maxlen:].tolist())

    def keep(self, graph: bool, ms: float, host_us: float, gap) -> None:
        """Keep one forward's values for the percentiles (a window=0 row keeps none)."""
        if self.graph_ms is None:
            return
        if graph:
            self.graph_ms.append(ms)
            self.graph_host.append(host_us)
            if gap is not None:
                self.graph_gap.append(gap)
        else:
            self.eager_ms.append(ms)
            self.eager_host.append(host_us)
            if gap is not None:
                self.eager_gap.append(gap)


NOT_MISSES = (R.REASON_EAGER_MODE, R.REASON_NO_CUDA)   # eager forwards outside the hit rate


def graph_mode_forwards(forwards: int, misses: dict) -> int:
    """Forwards that could run on a graph: all but the NOT_MISSES ones (the hit rate's denominator)."""
    return forwards - sum(misses.get(reason, 0) for reason in NOT_MISSES)


def counts(forwards, graph, full, piecewise, eager, phases, requests, rows, prompt_tokens, tokens, padded,
           graph_rows, misses) -> dict:
    """The count fields and their ratios, for a row or for the totals (one definition for both)."""
    could = graph_mode_forwards(forwards, misses)
    return {
        "steps": forwards, "forwards": forwards, "graph_steps": graph, "full": full, "piecewise": piecewise,
        "eager": eager, "decode": phases[R.PHASE_DECODE], "mixed": phases[R.PHASE_MIXED],
        "prefill": phases[R.PHASE_PREFILL], "non_decode": forwards - phases[R.PHASE_DECODE],
        "graph_mode": could, "requests": requests, "rows": rows, "prompt_tokens": prompt_tokens,
        "tokens": tokens, "padded": padded, "graph_rows": graph_rows,
        "hit_pct": pct(graph, could), "graph_share_pct": pct(graph, forwards),
        "full_pct": pct(full, forwards), "piecewise_pct": pct(piecewise, forwards),
        "padding_waste_pct": pct(padded, graph_rows),
        "misses": dict(sorted(misses.items())),
    }


def check_step(rec: dict) -> None:
    """Raise ValueError (or KeyError for a missing field) if a step record cannot be counted
    (records.check_step); called before anything is counted, so a bad record changes nothing."""
    bad = R.check_step(rec)
    if bad:
        if bad.startswith("missing field "):
            raise KeyError(bad[len("missing field "):])
        raise ValueError(bad)


def _group(ep, tgt) -> tuple:
    """(the distinct keys epoch * 2**32 + tgt, sorted; each forward's index in them): np.unique's answer, by
    counting where the keys are few and small (they are: epochs and capture sizes)."""
    import numpy as np
    span = int(tgt.max()) + 1 if len(tgt) else 1
    dense = ep * span + tgt
    if len(tgt) and int(tgt.min()) >= 0 and int(dense.max()) < 1 << 20:
        present = np.flatnonzero(np.bincount(dense))
        lut = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        lut[present] = np.arange(len(present))
        return (present // span) * (1 << 32) + present % span, lut[dense]
    groups, inv = np.unique(ep * (1 << 32) + tgt, return_inverse=True)
    return groups, inv.reshape(-1)


def _sizes(values) -> list[int]:
    return sorted({v for v in values or () if type(v) is int})


def _finite(t) -> bool:
    return type(t) in _NUM and math.isfinite(t)


class Epoch:
    """A stretch of the run under one capture size list (module docstring): its rows by target."""
    __slots__ = ("n", "t", "sizes", "rows", "forwards", "sizes_seen")

    def __init__(self, n: int, t: float | None, sizes: list[int] | None) -> None:
        self.n = n                        # 1, 2, ...
        self.t = t                        # when it began (None: the run's start)
        self.sizes = sizes                # the size list (None: not known)
        self.rows: dict[int | None, Row] = {}
        self.forwards = 0
        self.sizes_seen: set[int] = set(sizes or ())   # capture sizes of its capture events and lists

    def keys(self) -> list[int | None]:
        """Row keys, sorted, over max last. (A copy: safe while another thread adds rows.)"""
        return sorted(list(self.rows), key=lambda k: (k is None, k or 0))

    def largest_size(self) -> int | None:
        """The largest capture size of its list (else of its captures and targets): the over-max label."""
        sizes = self.sizes_seen | {k for k in list(self.rows) if k is not None}
        return max(sizes) if sizes else None

    def summary(self) -> dict:
        return {"epoch": self.n, "t": self.t, "sizes": self.sizes, "forwards": self.forwards}


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

    def add_steps(self, ms, lens, skew) -> None:
        """``add_step`` on many steps at once (fold.py, a compact trace's columns): ``ms`` (steps x the longest
        list) with NaN where a rank's time is None or past the step's list, ``lens`` each list's length,
        ``skew`` (NaN: None). The same state: per-rank values and sums in step order."""
        import numpy as np
        if not len(lens):
            return
        self.size = max(self.size, int(lens.max()))
        have = ~np.isnan(ms)
        for r in range(ms.shape[1]):
            v = ms[have[:, r], r]
            if not len(v):
                continue
            if r not in self.steps:
                self.steps[r], self.ms_sum[r], self.ms[r] = 0, 0.0, _values(self.window)
            self.steps[r] += len(v)
            self.ms_sum[r] = _seq_sum(self.ms_sum[r], v)
            if self.window != 0:
                _extend(self.ms[r], v)
        some = have.any(axis=1)
        complete = some & (have.sum(axis=1) == lens)
        if complete.any():
            best = np.argmax(np.where(have, ms, -np.inf)[complete], axis=1)   # the first of equal maxima
            for r, k in zip(*np.unique(best, return_counts=True)):
                self.slowest[int(r)] = self.slowest.get(int(r), 0) + int(k)
            self.complete += int(complete.sum())
        s = skew[~np.isnan(skew)]
        if len(s):
            self.skew_n += len(s)
            self.skew_sum = _seq_sum(self.skew_sum, s)
            if self.window != 0:
                _extend(self.skew, s)

    def add_samples(self, gpu, gpu_ok, util, mem, mem_ok) -> None:
        """``add_sample`` on many samples' ``gpus`` items at once, flattened in order: ``gpu`` (``gpu_ok``:
        not None), ``gpu_util`` (NaN: None), ``mem_used_bytes`` (``mem_ok``: not None)."""
        import numpy as np
        for r in np.unique(gpu[gpu_ok]).tolist():
            mine = gpu_ok & (gpu == r)
            self.size = max(self.size, r + 1)
            u = util[mine]
            u = u[~np.isnan(u)]
            if len(u):
                acc = self.util.setdefault(r, [0.0, 0])
                acc[0] = _seq_sum(acc[0], u)
                acc[1] += len(u)
            m = mem[mine & mem_ok]
            if len(m):
                self.mem[r] = int(m[-1])

    def rows(self) -> list[dict]:
        """One dict a rank (rank 0 first); empty when the run had one rank."""
        out = []
        for r in range(self.size if self.size > 1 else 0):
            vals = _sorted(self.ms.get(r))
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

    def state(self) -> dict | None:
        """What it holds, JSON-ready (None for one rank); ``RankStats.from_state`` rebuilds it."""
        if not self.size:
            return None
        return {"size": self.size, "complete": self.complete, "skew_n": self.skew_n, "skew_sum": self.skew_sum,
                "skew": None if self.skew is None else list(self.skew), "pool": self.pool,
                "ranks": [[r, self.steps[r], self.ms_sum[r], None if self.ms[r] is None else list(self.ms[r])]
                          for r in sorted(self.steps)],
                "slowest": sorted(self.slowest.items()), "util": [[r, a[0], a[1]] for r, a in sorted(self.util.items())],
                "mem": sorted(self.mem.items()),
                "captures": [[b, list(rows.values())] for b, rows in sorted(self.captures.items())]}

    @classmethod
    def from_state(cls, st, window: int | None = None) -> "RankStats":
        out = cls(window)
        if not isinstance(st, dict):
            return out
        try:
            out.size, out.complete = int(st.get("size") or 0), int(st.get("complete") or 0)
            out.skew_n, out.skew_sum = int(st.get("skew_n") or 0), float(st.get("skew_sum") or 0.0)
            if out.skew is not None:
                out.skew.extend(float(x) for x in st.get("skew") or ())
            out.pool = st.get("pool") if isinstance(st.get("pool"), list) else None
            for r, n, total, values in st.get("ranks") or ():
                out.steps[int(r)], out.ms_sum[int(r)], out.ms[int(r)] = int(n), float(total), _values(window)
                if out.ms[int(r)] is not None:
                    out.ms[int(r)].extend(float(x) for x in values or ())
            out.slowest = {int(r): int(n) for r, n in st.get("slowest") or ()}
            out.util = {int(r): [float(a), int(n)] for r, a, n in st.get("util") or ()}
            out.mem = {int(r): b for r, b in st.get("mem") or ()}
            for b, rows in st.get("captures") or ():
                out.add_capture({"bucket": b, "ranks": rows})
        except (TypeError, ValueError):
            return cls(window)   # a state this version cannot read: start the per-rank numbers afresh
        return out

    def totals(self) -> dict:
        vals = _sorted(self.skew)
        return {"skew_p50_ms": percentile(vals, 50), "skew_p99_ms": percentile(vals, 99), "skew_n": self.skew_n,
                "skew_mean_ms": self.skew_sum / self.skew_n if self.skew_n else None}


class RunStats:
    """The accumulator. ``window``: percentile values kept per row and kind (None: all, 0: none)."""

    def __init__(self, window: int | None = None, bucket_values: bool = True) -> None:
        self.window = window
        # bucket_values=False: the run-long rows of each bucket (``buckets``) keep counts only, no values for
        # percentiles (the report shows the epochs' rows; at 10M steps their values are 240 MB)
        self.bucket_window = window if bucket_values else 0
        self.epochs: list[Epoch] = [Epoch(1, None, None)]
        self.buckets: dict[int | None, Row] = {}   # per bucket over all epochs (Prometheus' counters)
        self.sizes_seen: set[int] = set()   # capture sizes seen in capture / capture_done events
        self.n = self.graph = self.tokens = 0
        self.origin = 0.0                   # the run's start (t = 0, or the header's t)
        self.latest_t: float | None = None  # the latest t of any record (a forward: its end)
        self.end_t: float | None = None     # the end record's t
        self.gpu_ms_sum, self.gpu_ms_any = 0.0, False
        self.util_sum, self.util_n = 0.0, 0
        self.pool_bytes: int | None = None
        self.prefills = self.prefill_tokens = self.mode_switches = self.recaptures = 0
        self.alerts: dict[str, int] = {}
        self.no_cuda = False   # a forward ran eager for lack of CUDA: no graphs, no pool
        self.idle = {"graph": [0.0, 0.0], "eager": [0.0, 0.0]}   # mode -> [sum gap µs, sum gpu µs]
        self.ranks = RankStats(window)

    _FIELDS = ("n", "graph", "tokens", "origin", "latest_t", "end_t", "gpu_ms_sum", "gpu_ms_any", "util_sum",
               "util_n", "pool_bytes", "prefills", "prefill_tokens", "mode_switches", "recaptures", "no_cuda")

    def state(self) -> tuple[dict, list[dict]]:
        """What the accumulator holds, JSON-ready: (the run's fields with its epochs, one dict per row with
        its ``key`` and ``epoch``: an epoch's number, or None for the run-long row of a bucket).
        ``RunStats.from_state`` rebuilds an accumulator that goes on where this one is: the daemon sends
        it to a client that joins late (docs/PROTOCOL.md), so its totals and rows are the whole run's."""
        run = {k: getattr(self, k) for k in self._FIELDS}
        epochs = list(self.epochs)
        run.update(sizes_seen=sorted(self.sizes_seen), alerts=dict(self.alerts),
                   idle={k: list(v) for k, v in self.idle.items()}, ranks=self.ranks.state(),
                   epochs=[{**e.summary(), "sizes_seen": sorted(e.sizes_seen)} for e in epochs])
        rows = [{"key": k, "epoch": None, **self.buckets[k].state()} for k in self.keys()]
        rows += [{"key": k, "epoch": e.n, **e.rows[k].state()} for e in epochs for k in e.keys()]
        return run, rows

    @classmethod
    def from_state(cls, run: dict, rows: list[dict] = (), window: int | None = None) -> "RunStats":
        st = cls(window)
        for k in cls._FIELDS:
            if k in run:
                setattr(st, k, run[k])
        st.sizes_seen = set(_sizes(run.get("sizes_seen")))
        st.alerts = {str(lv): int(n) for lv, n in (run.get("alerts") or {}).items()}
        for k, v in (run.get("idle") or {}).items():
            if k in st.idle and isinstance(v, list) and len(v) == 2:
                st.idle[k] = [float(v[0]), float(v[1])]
        epochs = [e for e in run.get("epochs") or () if isinstance(e, dict) and type(e.get("epoch")) is int]
        if epochs:
            st.epochs = []
            for e in epochs:
                sizes = e.get("sizes")
                ep = Epoch(e["epoch"], e["t"] if _finite(e.get("t")) else None,
                           _sizes(sizes) if isinstance(sizes, list) else None)
                ep.forwards = int(e.get("forwards") or 0)
                ep.sizes_seen.update(_sizes(e.get("sizes_seen")))
                st.epochs.append(ep)
        st.ranks = RankStats.from_state(run.get("ranks"), window)
        for r in rows:
            st.add_row_state(r)
        return st

    def add_row_state(self, row: dict) -> None:
        """One row of ``state()`` (with its ``key`` and ``epoch``) into this accumulator."""
        key = row.get("key")
        key = key if type(key) is int else None
        n = row.get("epoch")
        if n is None:
            self.buckets[key] = Row.from_state(row, self.window)
            return
        epoch = next((e for e in self.epochs if e.n == n), None)
        if epoch is not None:
            epoch.rows[key] = Row.from_state(row, self.window)

    def row(self, key: int | None) -> Row:
        """The run-long row of a bucket (``buckets``)."""
        row = self.buckets.get(key)
        if row is None:
            row = self.buckets[key] = Row(self.bucket_window)
        return row

    @property
    def epoch(self) -> Epoch:
        """The epoch in force (the last one)."""
        return self.epochs[-1]

    def epoch_at(self, t) -> Epoch:
        """The epoch in force at ``t``."""
        last = self.epochs[-1]
        if last.t is None or not _finite(t) or t >= last.t:
            return last
        return next(e for e in reversed(self.epochs) if e.t is None or t >= e.t)

    def _epoch_row(self, epoch: Epoch, key: int | None) -> Row:
        row = epoch.rows.get(key)
        if row is None:
            row = epoch.rows[key] = Row(self.window)
        return row

    def _new_list(self, sizes: list[int], t) -> None:
        """A size list came (a recapture or capture_done): a new epoch if it differs from the one in force."""
        cur = self.epochs[-1]
        if cur.sizes == sizes:
            return
        if cur.sizes is None or cur.forwards == 0:
            if cur.sizes is not None:
                # a list replaced before any forward ran under it (a recapture before the first step; a window
                # opening after recaptures): its buckets that the new list drops leave with it, so that no row
                # shows an old list's capture and the over-max label is the new list's largest size
                cur.rows = {k: r for k, r in cur.rows.items() if k in sizes or r.forwards}
                cur.sizes_seen = set(sizes) | {k for k in cur.rows if k is not None}
            cur.sizes = sizes
        else:
            self.epochs.append(Epoch(cur.n + 1, t if _finite(t) else None, sizes))
        self.epochs[-1].sizes_seen.update(sizes)

    def _seen(self, t) -> None:
        if _finite(t) and (self.latest_t is None or t > self.latest_t):
            self.latest_t = t

    def open_window(self, opening: list[dict], lo: float) -> None:
        """A window of the run (``cgwatch report --from/--to/--last``) starts here: ``opening`` (the capture,
        capture_done, recapture and padding events before it: window.windowed) folded as the state it opens under,
        then every count zeroed and the duration measured from ``lo`` (where that is after the run's start)."""
        for rec in opening:
            self.add(rec)
        self.mode_switches = self.recaptures = 0
        self.alerts = {}
        self.latest_t = self.end_t = None
        if math.isfinite(lo) and lo > self.origin:
            self.origin = lo

    # -- folding -----------------------------------------------------------------------------------
    def add(self, rec: dict) -> None:
        typ = rec.get("type")
        if typ == R.STEP:
            self.add_step(rec)
            return
        if typ == R.HEADER:
            if _finite(rec.get("t")):
                self.origin = rec["t"]
            return
        if typ == R.END:
            if _finite(rec.get("t")):
                self.end_t = rec["t"]
            return
        self._seen(rec.get("t"))
        if typ == R.SAMPLE:
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
        rows, gap, prompt = rec.get("rows"), rec.get("gap_us"), rec.get("prompt_tokens")
        if (type(t) not in _NUM or type(batch) is not int or type(host_us) not in _NUM or type(tokens) is not int
                or (gpu_ms is not None and type(gpu_ms) not in _NUM) or (rows is not None and type(rows) is not int)
                or (gap is not None and type(gap) not in _NUM) or (prompt is not None and type(prompt) is not int)
                or (bucket is not None and type(bucket) is not int) or (target is not None and type(target) is not int)):
            check_step(rec)
        ms = gpu_ms if gpu_ms is not None else host_us / 1000.0   # records.step_ms
        if rows is None:
            rows = batch
        phase = rec.get("phase")
        if phase not in _PHASES:
            phase = R.PHASE_DECODE
        graph = bucket is not None
        piecewise = graph and rec.get("runtime_mode") == R.RUNTIME_PIECEWISE
        reason = None if graph else (rec.get("reason") or "unknown")
        epoch = self.epochs[-1]
        if epoch.t is not None and t < epoch.t:
            epoch = self.epoch_at(t)
        row = epoch.rows.get(target)
        if row is None:
            row = self._epoch_row(epoch, target)
        row.count(batch, rows, prompt, tokens, phase, bucket, piecewise, reason)
        cum = self.buckets.get(target)
        if cum is None:
            cum = self.row(target)
        cum.count(batch, rows, prompt, tokens, phase, bucket, piecewise, reason)
        epoch.forwards += 1
        if graph:
            self.graph += 1
        elif reason == R.REASON_NO_CUDA:
            self.no_cuda = True
        if gpu_ms is None:
            gap = None        # a gap counts only next to the GPU time it is a share of
        else:
            self.gpu_ms_sum += gpu_ms
            self.gpu_ms_any = True
            if gap is not None:
                acc = self.idle["graph" if graph else "eager"]
                acc[0] += gap
                acc[1] += gpu_ms * 1000.0
        if self.window != 0:
            row.keep(graph, ms, host_us, gap)
            if self.bucket_window != 0:
                cum.keep(graph, ms, host_us, gap)
        self.tokens += tokens
        self.n += 1
        rank_ms = rec.get("rank_ms")
        if rank_ms is not None:
            self.ranks.add_step(rank_ms, rec.get("skew_ms"))
        end = t + ms / 1000.0   # forwards are emitted when their GPU time is read: the latest end, not the last
        if self.latest_t is None or end > self.latest_t:
            self.latest_t = end

    def add_steps(self, c: dict) -> None:
        """Many forwards at once, as numpy columns in file order (fold.py builds them from a compact trace;
        screened, with the fields' types right): the same state as ``add_step`` on each one. ``t``;
        ``batch``; ``rows`` (batch where the record has none); ``target``, ``bucket`` (-1: None);
        ``prompt`` (0: None); ``tokens``; ``phase`` (index in records.PHASES; decode for any other);
        ``piecewise`` (runtime_mode is PIECEWISE); ``reason`` (index in ``reasons``, -1: None); ``host_us``,
        ``gpu_ms``, ``gap_us`` (NaN: None). Sums of floats are taken in file order, as one by one."""
        import numpy as np
        t, gpu, gap, host = c["t"], c["gpu_ms"], c["gap_us"], c["host_us"]
        n = len(t)
        has_gpu = ~np.isnan(gpu)
        ms = np.where(has_gpu, gpu, host / 1000.0)
        gap = np.where(has_gpu, gap, np.nan)          # a gap counts only next to the GPU time it is a share of
        graph = c["bucket"] >= 0
        # the epoch of each forward: the one in force, or the one in force at its t
        ep = np.full(n, len(self.epochs) - 1)
        last = self.epochs[-1]
        if last.t is not None:
            early = np.flatnonzero(t < last.t)
            for k in early:
                ep[k] = self.epochs.index(self.epoch_at(float(t[k])))
        reasons = [r or "unknown" for r in c["reasons"]]
        groups, inv = _group(ep, c["target"] + 1)
        ng = len(groups)
        rows, batch, phase = c["rows"], c["batch"], c["phase"].astype(np.int64)
        pw = c["piecewise"] & graph
        mode = np.where(graph, np.where(pw, 1, 0), 2)

        def total(w):   # per group, exact for integers (float64 sums below 2**53)
            return np.bincount(inv, weights=w, minlength=ng).round().astype(np.int64)

        forwards = np.bincount(inv, minlength=ng)
        sums = {k: total(v) for k, v in (("requests", batch), ("rows", rows), ("prompt_tokens", c["prompt"]),
                                          ("tokens", c["tokens"]), ("padded", np.where(graph, c["bucket"] - rows, 0)),
                                          ("graph_rows", np.where(graph, c["bucket"], 0)))}
        mp = np.bincount(inv * 9 + mode * 3 + phase, minlength=ng * 9).reshape(ng, 3, 3)
        nr = len(reasons) + 1
        eager = ~graph
        miss = np.bincount(inv[eager] * nr + c["reason"][eager] + 1, minlength=ng * nr).reshape(ng, nr)
        # by group, then eager after graph, each in file order: every (group, kind) a slice
        key = inv * 2 + eager
        by = np.argsort(key.astype(np.int16) if ng < 1 << 14 else key, kind="stable")   # int16: a radix sort
        cuts = np.concatenate([[0], np.cumsum(forwards)])
        srows = rows[by]
        if self.window != 0:
            kcuts = np.searchsorted(key[by], np.arange(2 * ng + 1))
            sms, shost, sgap = ms[by], host[by], gap[by]
        rmin = np.minimum.reduceat(srows, cuts[:-1]) if n else []
        rmax = np.maximum.reduceat(srows, cuts[:-1]) if n else []
        for g, k in enumerate(groups):
            epoch = self.epochs[int(k >> 32)]
            target = int(k & 0xFFFFFFFF) - 1
            target = None if target < 0 else target
            misses: dict[str, int] = {}
            for code in np.flatnonzero(miss[g]):
                name = "unknown" if code == 0 else reasons[code - 1]
                misses[name] = misses.get(name, 0) + int(miss[g, code])
            counts = {
                "forwards": int(forwards[g]), **{name: int(v[g]) for name, v in sums.items()},
                "rows_min": int(rmin[g]), "rows_max": int(rmax[g]),
                "phases": {ph: int(mp[g, :, j].sum()) for j, ph in enumerate(R.PHASES)},
                "full": int(mp[g, 0].sum()), "piecewise": int(mp[g, 1].sum()), "eager": int(mp[g, 2].sum()),
                "misses": misses,
                "by_mode_phase": {(m, ph): int(mp[g, a, j]) for a, m in enumerate(R.RUNTIME_MODES)
                                  for j, ph in enumerate(R.PHASES) if mp[g, a, j]},
            }
            row, cum = self._epoch_row(epoch, target), self.row(target)
            for r in (row, cum):
                r.add_counts(counts)
            epoch.forwards += int(forwards[g])
            if self.window != 0:
                for kind, a, z in ((True, kcuts[2 * g], kcuts[2 * g + 1]), (False, kcuts[2 * g + 1], kcuts[2 * g + 2])):
                    gp = sgap[a:z]
                    for r in (row, cum) if self.bucket_window != 0 else (row,):
                        r.keep_many(kind, sms[a:z], shost[a:z], gp[~np.isnan(gp)])
        self.graph += int(graph.sum())
        if c["reasons"] and R.REASON_NO_CUDA in c["reasons"]:
            code = c["reasons"].index(R.REASON_NO_CUDA)
            self.no_cuda = self.no_cuda or bool(((c["reason"] == code) & ~graph).any())
        g = gpu[has_gpu]
        if len(g):
            self.gpu_ms_sum = _seq_sum(self.gpu_ms_sum, g)
            self.gpu_ms_any = True
            for name, sel in (("graph", graph), ("eager", ~graph)):
                both = sel & has_gpu & ~np.isnan(gap)
                if both.any():
                    acc = self.idle[name]
                    acc[0] = _seq_sum(acc[0], gap[both])
                    acc[1] = _seq_sum(acc[1], gpu[both] * 1000.0)
        self.tokens += int(c["tokens"].sum())
        self.n += n
        end = float((t + ms / 1000.0).max())
        if self.latest_t is None or end > self.latest_t:
            self.latest_t = end

    def _event(self, rec: dict) -> None:
        kind = rec.get("kind")
        t = rec.get("t")
        if kind == R.EV_CAPTURE:
            b = rec["bucket"]
            if type(b) is not int:
                raise ValueError(f"bucket is {b!r}, not an integer")
            self.sizes_seen.add(b)
            epoch = self.epoch_at(t)
            epoch.sizes_seen.add(b)
            for row in (self._epoch_row(epoch, b), self.row(b)):
                row.capture = rec
                if rec.get("ok"):
                    row.last_ok = rec
            if "ranks" in rec:
                self.ranks.add_capture(rec)
        elif kind == R.EV_CAPTURE_DONE:
            sizes = _sizes([*(rec.get("sizes") or ()), *(rec.get("failed") or ())])
            self.sizes_seen.update(sizes)
            if sizes:
                self._new_list(sizes, t)
            self.pool_bytes = rec.get("pool_bytes")
            if "rank_pool_bytes" in rec:
                self.ranks.add_capture_done(rec)
        elif kind == R.EV_MODE:
            self.mode_switches += 1
        elif kind == R.EV_RECAPTURE:
            self.recaptures += 1
            self._new_list(_sizes(rec.get("sizes")), t)
        elif kind == R.EV_ALERT:
            level = str(rec.get("level", "warn"))
            self.alerts[level] = self.alerts.get(level, 0) + 1

    # -- reading -----------------------------------------------------------------------------------
    def keys(self) -> list[int | None]:
        """Bucket keys over the whole run (``buckets``), sorted, over max last. (A copy: safe while
        another thread adds rows.)"""
        return sorted(list(self.buckets), key=lambda k: (k is None, k or 0))

    def largest_size(self) -> int | None:
        sizes = self.sizes_seen | {k for k in list(self.buckets) if k is not None}
        return max(sizes) if sizes else None

    def shown_epochs(self) -> list[Epoch]:
        """The epochs the views show: those with forwards, and the one in force."""
        eps = list(self.epochs)
        return [e for e in eps if e.forwards or e is eps[-1]]

    def epoch_rows(self, epochs: list[Epoch] | None = None) -> list[tuple[Epoch, int | None, Row]]:
        """(epoch, target, row) by epoch, then target (over max last): the rows the views show."""
        return [(e, k, e.rows[k]) for e in (self.shown_epochs() if epochs is None else epochs) for k in e.keys()]

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
        ends = [t for t in (self.end_t, self.latest_t) if t is not None]
        duration = max(ends) - self.origin if ends else None
        out.update({
            "graph_hit_rate_pct": out["hit_pct"],
            "duration_s": duration,
            "tokens_per_s": out["tokens"] / duration if duration and out["forwards"] else None,
            "gpu_busy_pct": pct(self.gpu_ms_sum, duration * 1000.0) if self.gpu_ms_any and duration else None,
            "nvml_util_pct": self.util_sum / self.util_n if self.util_n else None,
            "graph_pool_mib": None if self.pool_bytes is None else self.pool_bytes / MIB,
            "gpu_idle_graph_pct": gpu_idle_pct(self.idle["graph"]),
            "gpu_idle_eager_pct": gpu_idle_pct(self.idle["eager"]),
            "prefills": self.prefills, "prefill_tokens": self.prefill_tokens,
            "mode_switches": self.mode_switches, "recaptures": self.recaptures,
            "epochs": sum(1 for e in list(self.epochs) if e.forwards),
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
