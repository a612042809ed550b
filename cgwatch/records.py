"""The event schema: every record the engine emits, as plain dicts.

Data flows one way: engine -> records -> sinks (trace file, socket, Prometheus) -> views.
Each record is a JSON-ready dict with a ``type`` key; docs/TRACE_FORMAT.md describes the fields.
Times: ``t`` is seconds since the run started (host monotonic clock); durations carry their unit
in the key name (``_ms``, ``_us``, ``_s``, ``_bytes``). A value that could not be measured is
``None`` (JSON null), shown as "n/a" -- never a made-up number.
"""

from __future__ import annotations

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


_STEP_NUMBERS = (("host_us", False), ("gpu_ms", True), ("gap_us", True), ("batch", False),
                 ("padded", True), ("tokens", False), ("rows", True), ("prompt_tokens", True),
                 ("skew_ms", True), ("plan_us", True))   # (field, may be null)


def bad_step_field(rec: dict) -> str | None:
    """Why a step record cannot be counted (a number field that is not a number), or None. Readers
    (report, TUI) check this before any arithmetic, so a hand-edited trace gets a clear message."""
    for key, nullable in _STEP_NUMBERS:
        v = rec.get(key)
        if not isinstance(v, (int, float)) and not (v is None and nullable):
            return f"{key} is {v!r}, not a number"
    return None


def step_ms(rec: dict) -> float:
    """A step's duration: GPU time where measured, else host time (CPU runs are synchronous)."""
    return rec["gpu_ms"] if rec["gpu_ms"] is not None else rec["host_us"] / 1000.0


def event(kind: str, t: float, **fields) -> dict:
    return {"type": EVENT, "kind": kind, "t": round(t, 6), **fields}


def alert(t: float, message: str, level: str = "warn", **fields) -> dict:
    return event(EV_ALERT, t, level=level, message=message, **fields)
