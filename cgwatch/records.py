"""The event schema: every record the engine emits, as plain dicts.

Data flows one way: engine -> records -> sinks (trace file, socket, Prometheus) -> views.
Each record is a JSON-ready dict with a ``type`` key; docs/TRACE_FORMAT.md describes the fields.
Times: ``t`` is seconds since the run started (host monotonic clock); durations carry their unit
in the key name (``_ms``, ``_us``, ``_s``, ``_bytes``). A value that could not be measured is
``None`` (JSON null), shown as "n/a" -- never a made-up number.
"""

from __future__ import annotations

import math
from bisect import bisect_right

# Record types
HEADER = "header"    # first record of a trace: format, version, run metadata
STEP = "step"        # one decode step
PREFILL = "prefill"  # eager prefill of newly admitted requests
SAMPLE = "sample"    # periodic NVML / host / allocator sample
EVENT = "event"      # something happened: capture, alert, mode switch, recapture, mark, ...
END = "end"          # last record of a cleanly closed trace

# Why a step ran eager (``reason`` of a step record); None when a graph served it.
REASON_EAGER_MODE = "eager_mode"        # the user chose eager mode
REASON_OVER_MAX = "over_max"            # batch above the largest capture size
REASON_PADDING = "padding_ratio"        # padding would exceed --max-padding-ratio
REASON_BUCKET_FAILED = "bucket_failed"  # the bucket's capture failed; it is disabled
REASON_NO_CUDA = "no_cuda"              # graphs need CUDA; this run has none
REASON_NO_GRAPHS = "no_graphs"          # graph mode, but no bucket is captured (empty size list)
REASON_VLLM_NO_GRAPH = "vllm_no_graph"  # vLLM backend: graphs on and the batch fits, but vLLM ran eager

# Event kinds (``kind`` of an event record)
EV_CAPTURE = "capture"          # one bucket captured (or failed to): per-bucket measurements
EV_CAPTURE_DONE = "capture_done"  # a capture round finished: sizes, pool bytes, seconds
EV_ALERT = "alert"              # something the user must see (level warn/error)
EV_MODE = "mode"                # eager/graph switch
EV_RECAPTURE = "recapture"      # recapture requested with a new size list
EV_RELEASE = "release"          # old graphs and pool released
EV_PADDING = "max_padding_ratio"  # --max-padding-ratio changed
EV_MARK = "mark"                # a user mark
EV_INFO = "info"                # anything else worth a line in the log
EV_STATE = "state"              # the engine's controllable state, after start and after every command
EV_RATE = "rate"                # workload arrival rate changed
EV_PAUSE = "pause"              # loop paused / resumed (``paused``: bool)
EV_RESTART = "restart"          # vLLM backend: the engine was rebuilt with another config (docs/VLLM.md)


# What ran a forward (``runtime_mode`` of a step record; vLLM's ``CUDAGraphMode`` names)
RUNTIME_FULL = "FULL"            # one captured graph ran the whole forward (cgwatch's own graphs are all FULL)
RUNTIME_PIECEWISE = "PIECEWISE"  # graphs ran the pieces between eager attention (vLLM)
RUNTIME_NONE = "NONE"            # no graph: eager
RUNTIME_MODES = (RUNTIME_FULL, RUNTIME_PIECEWISE, RUNTIME_NONE)

# What a forward computed (``phase`` of a step record)
PHASE_DECODE = "decode"    # decode tokens only (one per request, or 1 + drafts with speculative decoding)
PHASE_MIXED = "mixed"      # prompt tokens (a prefill chunk, a resumed request) and decode tokens in one forward
PHASE_PREFILL = "prefill"  # prompt tokens only
PHASES = (PHASE_DECODE, PHASE_MIXED, PHASE_PREFILL)


def step(i: int, t: float, batch: int, target: int | None, bucket: int | None, reason: str | None,
         host_us: float, gpu_ms: float | None, tokens: int, *, rows: int | None = None,
         runtime_mode: str | None = None, phase: str = PHASE_DECODE, prompt_tokens: int = 0) -> dict:
    """A decode step: one forward of the model.

    ``batch``: requests in the forward. ``rows``: tokens the forward computed, unpadded (None: =
    batch, as in cgwatch's own loop, one token per request; with vLLM a mixed forward's prompt
    tokens, or speculative drafts, make rows > batch). ``target``: the smallest capture size >= rows
    in the size list in force (None above the largest, or with no sizes) -- the bucket that should
    serve this forward. ``bucket``: the graph that did serve it (None: eager, and ``reason`` says
    why). ``runtime_mode``: FULL / PIECEWISE / NONE (None: FULL on a graph step, NONE on an eager
    one). ``phase``: decode / mixed / prefill; ``prompt_tokens``: the prompt tokens among ``rows``.
    ``padded`` rows = bucket - rows on a graph step, 0 on an eager one. ``host_us``: host clock
    from step start until the last launch returned (no sync). ``gpu_ms``: CUDA events around the
    step, read once they completed; None on the CPU, where ops run synchronously and ``host_us``
    is the step time. ``gap_us``: GPU time from the previous step's end to this step's start, while
    the loop runs free (no prefill, command or sync in between; else None): near 0 when the host
    keeps ahead of the GPU; else the host work between steps (scheduling, bookkeeping) the GPU waited
    for. Launch gaps inside an eager step are not in it: the events bracket the whole step, so they
    show in its ``gpu_ms``. ``tokens``: tokens the forward produced.

    Tensor parallelism adds (rank 0's engine, engine/rank_merge.py; absent with one rank):
    ``rank_ms`` [each rank's step time: GPU time where measured, else host; None: not measured],
    indexed by rank, ``skew_ms`` (max - min of rank_ms; None unless every rank measured) and
    ``plan_us`` (rank 0's host time sending this step's plan to the other ranks and taking their
    step times back, before ``t``: cgwatch's own cost of running N ranks). The other fields are
    rank 0's (every rank runs the same step).
    """
    rows = batch if rows is None else rows
    if runtime_mode is None:
        runtime_mode = RUNTIME_NONE if bucket is None else RUNTIME_FULL
    return {"type": STEP, "i": i, "t": round(t, 6), "batch": batch, "rows": rows, "target": target,
            "bucket": bucket,
            "mode": "eager" if bucket is None else "graph", "runtime_mode": runtime_mode, "reason": reason,
            "padded": 0 if bucket is None else bucket - rows,
            "host_us": round(host_us, 2),
            "gpu_ms": None if gpu_ms is None else round(gpu_ms, 4), "gap_us": None, "tokens": tokens,
            "phase": phase, "prompt_tokens": prompt_tokens}


def prefill(i: int, t: float, requests: int, tokens: int, host_ms: float) -> dict:
    """Eager prefill of ``requests`` newly admitted requests (``tokens`` prompt tokens) before step ``i``."""
    return {"type": PREFILL, "t": round(t, 6), "i": i, "requests": requests, "tokens": tokens,
            "host_ms": round(host_ms, 4)}


def capture_done(t: float, *, sizes: list[int], failed: list[int], pool_bytes: int | None, seconds: float,
                 pool: str, pools: int | None, **fields) -> dict:
    """A capture round finished: the sizes captured and failed, the graph memory and seconds of the
    round, the pool mode and pools used; ``fields``: what a backend adds (TRACE_FORMAT.md, VLLM.md)."""
    return event(EV_CAPTURE_DONE, t, sizes=sizes, failed=failed, pool_bytes=pool_bytes, seconds=seconds,
                 pool=pool, pools=pools, **fields)


def step_rows(rec: dict) -> int:
    """Tokens a step computed (unpadded); traces before the field: the batch."""
    rows = rec.get("rows")
    return rec["batch"] if rows is None else rows


def step_runtime_mode(rec: dict) -> str:
    """FULL / PIECEWISE / NONE; traces before the field: FULL on a graph step, NONE on an eager one."""
    m = rec.get("runtime_mode")
    if m in RUNTIME_MODES:
        return m
    return RUNTIME_NONE if rec.get("bucket") is None else RUNTIME_FULL


def step_phase(rec: dict) -> str:
    """decode / mixed / prefill; traces before the field: decode."""
    p = rec.get("phase")
    return p if p in PHASES else PHASE_DECODE


def step_ms(rec: dict) -> float:
    """A step's duration: GPU time where measured, else host time (CPU runs are synchronous)."""
    gpu_ms = rec.get("gpu_ms")
    return gpu_ms if gpu_ms is not None else rec["host_us"] / 1000.0


def event(kind: str, t: float, **fields) -> dict:
    return {"type": EVENT, "kind": kind, "t": round(t, 6), **fields}


def alert(t: float, message: str, level: str = "warn", **fields) -> dict:
    return event(EV_ALERT, t, level=level, message=message, **fields)


# ---- validation: the one check every reader runs before it counts a record -----------------------------
#
# report, export, recommend, replay and the TUI read traces that may have been edited by hand, cut, merged
# or written by a broken tool. A number that cannot be trusted must never reach a total, a percentile or a
# cost: every reader runs the records through a ``Screen`` (the whole trace at once: ``screen``; record by
# record, live: ``Screen.check``), which skips what cannot be trusted, counts it, and words ONE warning line
# with the first few records and the count. What is skipped:
#   - a record of a known type whose fields are not what the format says (check_record): a missing field, a
#     string or null where a number goes, NaN or infinity, a negative time or count, a step whose graph
#     (``bucket``) or ``target`` is smaller than its rows, a ``padded`` that is not bucket - rows;
#   - a step whose ``i`` was seen before: a duplicate (the first one counts);
#   - a step whose ``t`` runs against the order of ``i`` (one thread writes the steps, so their start times
#     never decrease with i): the whole-trace screen keeps the longest run of steps whose t never decreases
#     with i and skips the others; the live check skips a step that starts before the step with the largest
#     i seen so far.
# Records of unknown types and unknown fields are kept, as the format says; the readers ignore them.
# A compact trace (columnar.py) goes through the same rules a column batch at a time: fold.py (the rows its
# vector tests cannot clear are decoded and judged by check_record itself).

STEP_REQUIRED = ("i", "t", "batch", "target", "bucket", "host_us", "gpu_ms", "tokens")
SAMPLE_NUMBERS = ("gpu_util", "mem_util", "mem_used_bytes", "mem_total_bytes", "power_w", "sm_clock_mhz",
                  "cpu_pct", "rss_bytes", "torch_allocated_bytes", "torch_reserved_bytes", "gpu_busy")


def bad_number(key: str, v: object, *, nullable: bool = False, whole: bool = False,
               minimum: float | None = 0.0) -> str | None:
    """Why ``v`` cannot be the value of ``key``, or None: a finite number (an integer if ``whole``), not
    below ``minimum`` (None: any sign), or null where ``nullable``."""
    if v is None:
        return None if nullable else f"{key} is null, not a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{key} is {v!r}, not a number"
    if not math.isfinite(v):
        return f"{key} is {v!r}, not a finite number"
    if whole and not isinstance(v, int):
        return f"{key} is {v!r}, not an integer"
    if minimum is not None and v < minimum:
        return f"{key} is {v!r}, negative" if minimum == 0 else f"{key} is {v!r}, below {minimum:g}"
    return None


def check_step(rec: dict) -> str | None:
    """Why a step record cannot be counted on its own, or None (the fields above; duplicates and t order
    need the other steps: ``Screen``)."""
    for key in STEP_REQUIRED:
        if key not in rec:
            return f"missing field {key}"
    for key, nullable, whole in (("i", False, True), ("t", False, False), ("batch", False, True),
                                 ("rows", True, True), ("host_us", False, False), ("gpu_ms", True, False),
                                 ("gap_us", True, False), ("tokens", False, True), ("prompt_tokens", True, True),
                                 ("padded", True, True), ("skew_ms", True, False), ("plan_us", True, False)):
        why = bad_number(key, rec.get(key), nullable=nullable, whole=whole, minimum=None if key == "padded" else 0.0)
        if why:
            return why
    rank_ms = rec.get("rank_ms")
    if rank_ms is not None and (not isinstance(rank_ms, list)
                                or any(bad_number("rank_ms", v, nullable=True, minimum=0.0) for v in rank_ms)):
        return f"rank_ms is {rank_ms!r}, not a list of step times"
    rows = step_rows(rec)
    for key in ("target", "bucket"):
        why = bad_number(key, rec[key], nullable=True, whole=True, minimum=1)
        if why:
            return why
        if rec[key] is not None and rec[key] < rows:
            return f"{key} {rec[key]} is below the step's {rows} rows"
    padded = rec.get("padded")
    want = 0 if rec["bucket"] is None else rec["bucket"] - rows
    if padded is not None and padded != want:
        return f"padded is {padded}, not bucket - rows = {want}"
    return None


bad_step_field = check_step   # the name readers used before the whole validation existed


def _bad_sizes(key: str, v: object, nullable: bool = True) -> str | None:
    if v is None and nullable:
        return None
    if not isinstance(v, list) or any(bad_number(key, x, whole=True, minimum=1) for x in v):
        return f"{key} is {v!r}, not a list of capture sizes"
    return None


def check_record(rec: dict) -> str | None:
    """Why a record of a known type cannot be trusted, or None (unknown types and fields are kept)."""
    typ = rec.get("type")
    if typ == STEP:
        return check_step(rec)
    if typ not in (PREFILL, SAMPLE, EVENT, END):
        return None
    if "t" not in rec:
        return "missing field t"
    why = bad_number("t", rec["t"])
    if why:
        return why
    if typ == PREFILL:
        for key, whole in (("requests", True), ("tokens", True), ("host_ms", False)):
            why = bad_number(key, rec.get(key), nullable=key not in rec, whole=whole)
            if why:
                return why
    elif typ == SAMPLE:
        for key in SAMPLE_NUMBERS:
            why = bad_number(key, rec.get(key), nullable=True)
            if why:
                return why
    elif typ == EVENT:
        kind = rec.get("kind")
        if kind == EV_CAPTURE:
            if "bucket" not in rec:
                return "missing field bucket"
            for key, nullable, whole, minimum in (("bucket", False, True, 1), ("capture_s", True, False, 0),
                                                  ("pool_bytes", True, False, 0), ("nvml_bytes", True, False, None),
                                                  ("kernels", True, True, 0)):
                why = bad_number(key, rec.get(key), nullable=nullable, whole=whole, minimum=minimum)
                if why:
                    return why
        elif kind == EV_CAPTURE_DONE:
            why = (_bad_sizes("sizes", rec.get("sizes")) or _bad_sizes("failed", rec.get("failed"))
                   or bad_number("pool_bytes", rec.get("pool_bytes"), nullable=True))
            if why:
                return why
        elif kind == EV_RECAPTURE:
            return _bad_sizes("sizes", rec.get("sizes"), nullable=False)
        elif kind == EV_PADDING:
            why = bad_number("value", rec.get("value"))
            if why or rec["value"] > 1:
                return why or f"value is {rec['value']!r}, above 1"
        elif kind == EV_RATE:
            return bad_number("rate", rec.get("rate"), nullable=True)
    return None


def describe(rec: dict) -> str:
    """A record in a few words, for a message that has no line number: 'step i=12', 'event capture'."""
    typ = rec.get("type")
    if typ == STEP:
        return f"step i={rec.get('i')!r}"
    if typ == EVENT:
        return f"event {rec.get('kind')}"
    return str(typ)


class Screen:
    """Counts the records that cannot be trusted and words the one warning line; ``check`` screens a
    stream record by record (live). ``window``: step indices remembered for the duplicate check (None:
    all; a live run has no end); a step more than ``window`` below the largest i seen is skipped too."""

    SHOW = 3   # records named in the warning line

    def __init__(self, window: int | None = None) -> None:
        self.count = 0
        self.first: list[tuple[str, str]] = []   # (where, why) of the first SHOW skipped records
        self.window = window
        self._seen: set[int] = set()
        self._last: tuple[int, float] | None = None   # (i, t) of the accepted step with the largest i

    def skip(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.first) < self.SHOW:
            self.first.append((where, why))

    def check(self, rec: dict, where: str | None = None) -> str | None:
        """Why this record cannot be trusted (then it is counted as skipped), or None (then it counts)."""
        why = check_record(rec)
        if why is None and rec.get("type") == STEP:
            why = self._duplicate(rec) or self._backwards(rec)
            if why is None:
                self._accept(rec)
        if why is not None:
            self.skip(where or describe(rec), why)
        return why

    def _duplicate(self, rec: dict) -> str | None:
        i = rec["i"]
        if i in self._seen:
            return f"a duplicate of step i={i}"
        if self.window is not None and self._last is not None and i < self._last[0] - self.window:
            return f"i={i} is more than {self.window} steps behind i={self._last[0]}"
        return None

    def _backwards(self, rec: dict) -> str | None:
        last = self._last
        if last is not None and rec["i"] > last[0] and rec["t"] < last[1]:
            return f"t goes back {last[1] - rec['t']:.6g} s from step i={last[0]}"
        return None

    def _accept(self, rec: dict) -> None:
        i = rec["i"]
        self._seen.add(i)
        if self._last is None or i > self._last[0]:
            self._last = (i, rec["t"])
        if self.window is not None and len(self._seen) > 2 * self.window:
            floor = self._last[0] - self.window
            self._seen = {k for k in self._seen if k >= floor}

    def warning(self) -> str | None:
        """The one line (None when nothing was skipped)."""
        if not self.count:
            return None
        named = "; ".join(f"{where}: {why}" for where, why in self.first)
        more = f"; and {self.count - len(self.first):,} more" if self.count > len(self.first) else ""
        return (f"skipped {self.count:,} record{'s' if self.count != 1 else ''} that cannot be trusted, left out "
                f"of every number: {named}{more}")


def screen(items) -> tuple[set, Screen]:
    """The whole-trace screen: ``items`` = (key, where, record) in file order (key: any sortable id, e.g. the
    line number; where: how the warning names the record). Returns the keys of the records to skip, and the
    Screen that counted them (its warning names them in file order)."""
    sc = Screen()
    bad: dict = {}
    steps: list[tuple[int, float, object, str]] = []
    for key, where, rec in items:
        why = check_record(rec)
        if why is None and rec.get("type") == STEP:
            why = sc._duplicate(rec)
            if why is None:
                sc._seen.add(rec["i"])
                steps.append((rec["i"], rec["t"], key, where))
        if why is not None:
            bad[key] = (where, why)
    steps.sort(key=lambda s: s[0])
    kept = _longest_nondecreasing([s[1] for s in steps])
    before, last = [None] * len(steps), None   # the nearest kept step before / after each position
    for pos in range(len(steps)):
        before[pos] = last
        if pos in kept:
            last = steps[pos]
    after, last = [None] * len(steps), None
    for pos in range(len(steps) - 1, -1, -1):
        after[pos] = last
        if pos in kept:
            last = steps[pos]
    for pos, (i, t, key, where) in enumerate(steps):
        if pos not in kept:
            bad[key] = (where, _out_of_order(t, before[pos], after[pos]))
    for key in sorted(bad):
        sc.skip(*bad[key])
    return set(bad), sc


def _longest_nondecreasing(values: list[float]) -> set[int]:
    """Positions of one longest non-decreasing subsequence (patience sorting, O(n log n))."""
    tails: list[float] = []      # tails[k]: the smallest last value of a run of length k + 1
    tail_pos: list[int] = []
    prev = [-1] * len(values)
    for pos, v in enumerate(values):
        k = bisect_right(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_pos.append(pos)
        else:
            tails[k], tail_pos[k] = v, pos
        prev[pos] = tail_pos[k - 1] if k else -1
    out, pos = set(), tail_pos[-1] if tail_pos else -1
    while pos >= 0:
        out.add(pos)
        pos = prev[pos]
    return out


def _out_of_order(t: float, before: tuple | None, after: tuple | None) -> str:
    """Why a step is out of order, against the nearest kept steps (i, t, ...) before and after it in i."""
    if before is not None and t < before[1]:
        return f"t goes back {before[1] - t:.6g} s from step i={before[0]}"
    if after is not None and t > after[1]:
        return f"t jumps {t - after[1]:.6g} s past step i={after[0]}"
    return f"t={t!r} is out of step order"
