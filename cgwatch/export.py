"""``cgwatch export``: a trace as Chrome Trace Event JSON (Perfetto UI, chrome://tracing) or CSV.

Perfetto layout (one process, pid 1, named after the model and GPU; ``ts`` and ``dur`` in µs, ts 0 =
the run's t = 0):

- track "host: decode loop" (tid 1): one complete slice (``X``) per decode step, ``dur`` = host_us,
  named by the rows the step computed, "graph b32" (the bucket, as the NVTX range; "graph b32
  PIECEWISE" for vLLM's piecewise graphs) or "eager b40 (over_max)" (the rows), with " mixed" /
  " prefill" added to a forward with prompt tokens; its args carry the step's fields, rows /
  runtime_mode / phase / prompt_tokens filled from records.py's helpers for traces that predate
  them; one slice per prefill, "prefill 3 req", ``dur`` = host_ms.
- track "GPU: decode steps" (tid 2): one slice per step whose gpu_ms was measured. The trace holds
  the GPU duration (CUDA events) and the host time t at which the step's start event was enqueued,
  but not when the GPU began. The GPU runs the steps on one stream in order, so slice i is placed at
  max(t_i, end of slice i-1 + gap_us_i), gap_us being the measured GPU gap of a back-to-back step
  (0 where none): never later than the truth (unmeasured work on the stream, such as eager prefill,
  only delays it more), and slices on the track cannot overlap. Each slice's args say so (``start:
  lower bound``) and give ``queued_us``, the wait behind the previous step so placed.
- track "CUDA graphs" (tid 3): one slice per bucket capture ("capture b64", or "... failed
  (cause)"), ``dur`` = capture_s, placed to end at the event's t (it is reported after the
  replay-vs-eager check, so this is at most the check's time late); instants for capture_done,
  recapture and release.
- track "events" (tid 4): instants for mode switches, marks, padding-ratio and rate changes, pause,
  state, info, other event kinds and the end record. Track "alerts" (tid 5): one instant per alert.
- counters (``C``): "host launch" (us), "GPU gap" (us, back-to-back steps only), "batch" (rows:
  tokens computed, unpadded; padded: stacked they make the rows computed; requests),
  and from samples, where measured: GPU util, GPU memory util, GPU memory used, GPU power, SM clock,
  GPU busy (CUDA events), host CPU, host RSS, torch allocated / reserved. A null is skipped, never
  drawn as a number.

Slices on one track never overlap: records are put back in t order (the engine and the sampler
thread write them a little out of order), and a slice that would start before the previous one on
its track ended starts at that end instead (only rounding of t can do that on the host track; the
shift is in its args as ``shifted_us``). Host and GPU slices are placed in integer ns (``slice_ns``; ts and
dur are those / 1000), so a long run's times carry no float drift.

CSV: a header and one row per step record, the schema's columns first (records.step), then any
other step field in the trace; null is an empty cell. rows, runtime_mode, phase and prompt_tokens
are filled for traces that predate them (records.step_rows / step_runtime_mode / step_phase; 0
prompt tokens), so every row has them. A tensor-parallel trace's ``rank_ms`` list becomes one column
a rank (``rank0_ms``, ``rank1_ms``, ...); Perfetto gets a ``rank step ms`` counter (one series a rank),
a ``rank skew`` counter, and per-GPU sample counters (``GPU util gpu1``, ...).

Both stream through the trace; a truncated tail is skipped, like every reader does. A first pass runs the
records through the validation every reader shares (records.screen: NaN, negative or missing numbers,
duplicate steps, t out of order, a graph smaller than its rows, ...): what cannot be trusted is left out of
the export (never drawn as a negative or made-up slice) and named in one warning line on stderr, and the
summary line counts it. Records of types this version does not know are left out too, and counted there.
The JSON is strict: a value that is not a finite number is null.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from typing import IO, Iterable, Iterator

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.event_text import event_text
from cgwatch.trace import _sniff, iter_numbered, open_trace, read_header, trace_files
from cgwatch.window import Window, latest_t
from cgwatch.window import add_arguments as add_window_arguments
from cgwatch.window import of_args as window_of_args

MAX_NS = 1 << 53   # a time or duration past this (104 days) is drawn as this: int64 ns must not overflow
FORMATS = {"perfetto": ".perfetto.json", "pftrace": ".pftrace", "csv": ".csv"}
REORDER_WINDOW_S = 10.0   # records are released in t order once the trace has moved this far past them
NAME_MAX = 80             # longer event names are cut; args keep the full text

PID = 1
HOST, GPU, GRAPHS, EVENTS, ALERTS = 1, 2, 3, 4, 5
TRACKS = {   # tid -> thread name (sorted in this order)
    HOST: "host: decode loop",
    GPU: "GPU: decode steps (start = lower bound)",
    GRAPHS: "CUDA graphs",
    EVENTS: "events",
    ALERTS: "alerts",
}
GPU_PLACEMENT = ("GPU slice i starts at max(t_i, end of GPU slice i-1 + gap_us_i): t_i is when the step's "
                 "start event was enqueued on the host, the GPU runs steps in order on one stream, and only "
                 "the duration (CUDA events) and, for back-to-back steps, the gap after the previous step "
                 "are recorded; a lower bound on the real start")
CAPTURE_PLACEMENT = "ends at the capture event's t (reported after the replay check)"

# The step schema's fields, in the order records.step writes them (the CSV's first columns).
STEP_COLUMNS = tuple(k for k in R.step(0, 0.0, 1, None, None, None, 0.0, None, 1) if k != "type")
STEP_ARGS = ("i", "batch", "rows", "bucket", "target", "runtime_mode", "phase", "prompt_tokens", "padded", "reason",
             "tokens", "host_us", "gpu_ms", "gap_us")


def with_derived(rec: dict) -> dict:
    """A step record with rows / runtime_mode / phase / prompt_tokens / padded filled where a trace predates
    them or leaves them out (padded = bucket - rows on a graph step, 0 on an eager one)."""
    rows = R.step_rows(rec)
    return {**rec, "rows": rows, "runtime_mode": R.step_runtime_mode(rec), "phase": R.step_phase(rec),
            "prompt_tokens": rec.get("prompt_tokens") or 0,
            "padded": 0 if rec.get("bucket") is None else rec["bucket"] - rows}
GRAPH_EVENTS = (R.EV_CAPTURE_DONE, R.EV_RECAPTURE, R.EV_RELEASE)

MIB = 1 << 20
# sample field -> (counter name, arg key, scale); Perfetto names the track "<name> <key>"
SAMPLE_COUNTERS = {
    "gpu_util": ("GPU util", "pct", 1),
    "mem_util": ("GPU memory util", "pct", 1),
    "mem_used_bytes": ("GPU memory used", "MiB", 1 / MIB),
    "power_w": ("GPU power", "W", 1),
    "sm_clock_mhz": ("SM clock", "MHz", 1),
    "gpu_busy": ("GPU busy (CUDA events)", "pct", 100),
    "cpu_pct": ("host CPU", "pct", 1),
    "rss_bytes": ("host RSS", "MiB", 1 / MIB),
    "torch_allocated_bytes": ("torch allocated", "MiB", 1 / MIB),
    "torch_reserved_bytes": ("torch reserved", "MiB", 1 / MIB),
}


# ---- the command ----

def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a trace as Perfetto's protobuf trace, Perfetto / chrome://tracing JSON, "
                                      "or CSV (one row per step)")
    p.add_argument("trace", help="a trace file written by 'cgwatch run --record', or sample:NAME (cgwatch samples)")
    p.add_argument("--format", required=True, choices=tuple(FORMATS),
                   help="pftrace (Perfetto's own protobuf trace: small, fast, for long runs), perfetto (Chrome "
                        "Trace Event JSON, also for chrome://tracing) or csv")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file, '-' for stdout (default: the trace's name with .pftrace / .perfetto.json / "
                        ".csv, in the current directory)")
    add_window_arguments(p)
    p.set_defaults(func=run)


def run(a) -> int:
    window = window_of_args(a)   # a bad time: one line
    header = read_header(a.trace)          # missing, unreadable or not a trace: TraceError, one line
    if a.output is not None and not a.output.strip():
        raise CgwatchError("-o/--output is empty: give a file name, or - for stdout")
    out = a.output or default_output(a.trace, a.format)
    if out != "-" and os.path.exists(out) and os.path.samefile(out, a.trace):
        raise CgwatchError(f"output {out} is the trace itself; choose another with -o")
    tr = open_trace(a.trace) if all(_sniff(p) != "jsonl" for p in trace_files(a.trace)) else None
    if window is not None and window.last is not None:   # the span before the trace's latest t
        window = window.resolved(latest_t(tr.compact) if tr is not None else Window.latest_of(iter_numbered(a.trace)))
    if window is not None:   # the files' metadata say which part of the run they hold
        header = {**header, EXPORT_WINDOW: window.label()}
    # a compact trace: screened a column batch at a time (fold.py) and written from its columns (CSV:
    # export_columnar.py; Perfetto JSON: perfetto_columnar.py, unless a record comes later than _InOrder's
    # window; pftrace: export_pftrace.py, which also takes a JSON Lines trace encoded into columns). CSV and
    # pftrace to a file: the screen and the export in one pass (_one_pass), else a pass that screens first.
    # A window (--from / --to): a compact trace read with only its rows (window.py), a JSON Lines one with
    # the other lines left out like untrusted ones.
    if tr is not None:
        tr.window = window
    with _output(out, binary=a.format == "pftrace") as f:
        done = _one_pass(a.format, a.trace, tr, header, f) if tr is not None and out != "-" else None
        if done is not None:
            summary, screen = done
        else:
            summary, screen = _two_passes(a.format, a.trace, tr, header, f, window)
    if window is not None:   # the run's end record can lie outside a window (--last takes it in, if there is one)
        if window.last is None:
            summary = summary.replace(PARTIAL, "no end record in the window")
        summary += f", window {window.label()}"
    if screen.warning():
        print(f"cgwatch: warning: {screen.warning()}", file=sys.stderr)
    for w in tr.damage() if tr is not None else ():   # found by the passes above: read up to there
        print(f"cgwatch: warning: {w}", file=sys.stderr)
    if out != "-":
        print(f"cgwatch export: {summary} -> {out}", file=sys.stderr)
        size = os.path.getsize(out)
        if a.format != "csv" and size > UI_BYTES:
            print(f"cgwatch: note: {out} is {size / 1e9:.1f} GB, likely too big for the Perfetto UI in a browser (a "
                  f"trace there takes 2-4x its file's size, in ~2 GB in all): open it through "
                  f"`trace_processor --httpd {out}`, or export a window (--from/--to, --last)", file=sys.stderr)
    return 0


UI_BYTES = 1 << 30   # a timeline export this big gets a note: the Perfetto UI works in the browser's memory
# (~2 GB typical, Perfetto's docs say, and a trace takes 2-4x its file's size there)


def _one_pass(fmt: str, trace: str, tr, header: dict, f) -> tuple[str, R.Screen] | None:
    """CSV or pftrace of a compact trace, screened in the pass that writes it (fold.Screening): (summary, the
    Screen), or None, with ``f`` (a file) emptied again, where that pass met what needs the whole trace first
    (steps out of order: the screen's second pass; a pftrace slice later than the Placer's window; a CSV
    header made wider by a row the screen leaves out)."""
    if fmt not in ("csv", "pftrace"):
        return None
    from cgwatch import export_columnar, export_pftrace
    from cgwatch.fold import Screening
    screening = Screening(tr)
    try:
        if fmt == "pftrace":
            counts, complete = export_pftrace.export(tr, f, header, None, trace, screening)
        else:
            rows, columns = export_columnar.export_csv(tr, f, None, STEP_COLUMNS, csv_cells, screening)
    except (export_pftrace.Fallback, export_columnar.Fallback):
        f.seek(0)
        f.truncate()
        return None
    scr = screening.done()
    if fmt == "pftrace":
        return _timeline_summary(counts, f"{counts['packets']:,} packets", scr.skipped, complete), scr.screen
    return _csv_summary(rows, columns, scr.skipped, tr.end is not None), scr.screen


def _two_passes(fmt: str, trace: str, tr, header: dict, f, window=None) -> tuple[str, R.Screen]:
    """Any export of any trace: the screen's pass first (a compact trace's: fold.screen; JSON Lines:
    records.screen), then the export's: (summary, the Screen)."""
    bad = None
    if tr is not None:
        import numpy as np

        from cgwatch.fold import screen as fold_screen
        scr = fold_screen(tr)
        screen, bad = scr.screen, scr.bad
        skip = frozenset(np.flatnonzero(bad).tolist())
    else:   # a window: the records in it, screened on their own (as a compact trace's window is)
        skip, screen, outside = screen_trace(trace, window)
    untrusted = len(skip)
    if tr is None and window is not None:
        skip = skip | outside
    if fmt == "pftrace":
        return _export_pftrace(trace, tr, header, f, bad, skip, untrusted), screen
    if fmt == "perfetto":
        from cgwatch import perfetto_columnar
        if tr is not None and perfetto_columnar.in_order(tr, bad):
            w = _PerfettoWriter(f, header)
            perfetto_columnar.export(tr, w, bad)
            w.close(trace, header, late=0)
            return _perfetto_summary(w, len(skip), 0), screen
        return export_perfetto(trace, header, f, skip, untrusted, tr), screen
    if tr is not None:
        from cgwatch import export_columnar
        rows, columns = export_columnar.export_csv(tr, f, bad, STEP_COLUMNS, csv_cells)
        return _csv_summary(rows, columns, screen.count, tr.end is not None), screen
    return export_csv(trace, f, skip, untrusted), screen


def _export_pftrace(trace: str, tr, header: dict, out, bad, skip: frozenset, skipped: int) -> str:
    """Perfetto's protobuf trace (export_pftrace.py) from the columns of a compact trace (``tr``; ``bad``: the
    rows screened out), or of a JSON Lines one (less the lines in ``skip``) encoded into columns first."""
    import numpy as np

    from cgwatch import export_pftrace
    if tr is None:
        tr = export_pftrace.RecordTable(_records(trace, skip))
        bad = np.zeros(tr.rows, dtype=bool)
    counts, complete = export_pftrace.export(tr, out, header, bad, trace)
    return _timeline_summary(counts, f"{counts['packets']:,} packets", skipped, complete)


def screen_trace(trace: str, window: Window | None = None) -> tuple[frozenset, R.Screen, frozenset]:
    """The line numbers of the records that cannot be trusted (records.screen), the Screen that says so, and
    (``window``: only its records are screened) the line numbers of the records outside it; one pass."""
    files = trace_files(trace)
    word = "line" if len(files) == 1 and _sniff(files[0]) == "jsonl" else "row"   # a compact trace: its rows
    outside: list[int] = []
    numbered = iter_numbered(trace) if window is None else window.inside(iter_numbered(trace), outside)
    bad, screen = R.screen((n, f"{word} {n}", rec) for n, rec in numbered)
    return frozenset(bad), screen, frozenset(outside)


def _records(trace: str, skip: frozenset = frozenset(), tr=None) -> Iterator[dict]:
    """The trace's records (the end record included), less the lines in ``skip``; ``tr``: the trace opened
    (a compact trace's window)."""
    return (rec for n, rec in (iter_numbered(trace) if tr is None else tr.rows()) if n not in skip)


def default_output(trace: str, fmt: str) -> str:
    """The trace's file name with the format's suffix, in the current directory: never next to the trace,
    which may be a bundled one inside the installed package (sample:NAME) or a folder the user cannot write."""
    name = os.path.basename(trace)
    return (name[: -len(".jsonl")] if name.endswith(".jsonl") else name) + FORMATS[fmt]


@contextmanager
def _output(out: str, binary: bool = False) -> Iterator[IO]:
    """stdout for '-'; else a temporary file next to OUT, renamed onto it only when the export
    succeeded (a failed export leaves no half-written file). Text, or bytes with ``binary``."""
    if out == "-":
        if binary:
            sys.stdout.flush()
        yield sys.stdout.buffer if binary else sys.stdout
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)),
                                   prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    except OSError as e:
        raise CgwatchError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)   # mkstemp makes it private; give it a new file's mode
        with (open(fd, "wb") if binary else open(fd, "w", encoding="utf-8", newline="")) as f:
            yield f
        os.replace(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise CgwatchError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- CSV ----

def export_csv(trace: str, out: IO[str], skip: frozenset = frozenset(), skipped: int | None = None) -> str:
    """One row per step record (less the lines in ``skip``; ``skipped``: how many of them the summary counts as
    untrusted, default all). Two streaming passes: the first finds step fields beyond the schema."""
    extra: dict[str, None] = {}
    ranks = 0
    complete = False   # an end record among them
    for rec in _records(trace, skip):
        complete = complete or rec["type"] == R.END
        if rec["type"] == R.STEP:
            extra.update((k, None) for k in rec if k != "type" and k not in STEP_COLUMNS and k != "rank_ms")
            if isinstance(rec.get("rank_ms"), list):
                ranks = max(ranks, len(rec["rank_ms"]))
    columns = STEP_COLUMNS + tuple(extra) + tuple(f"rank{r}_ms" for r in range(ranks))
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    rows = 0
    for rec in _records(trace, skip):
        if rec["type"] == R.STEP:
            w.writerow(csv_cells(rec, columns))
            rows += 1
    return _csv_summary(rows, len(columns), len(skip) if skipped is None else skipped, complete)


def _csv_summary(rows: int, columns: int, skipped: int, complete: bool) -> str:
    """The CSV's summary line; ``complete``: it had the run's end record (else it says so, as a timeline's does)."""
    return (f"{rows:,} step rows, {columns} columns" + (f", {skipped:,} records skipped" if skipped else "")
            + ("" if complete else f", {PARTIAL}"))


def csv_cells(rec: dict, columns: tuple) -> list:
    """A step record's CSV row: derived fields filled, rank_ms one column a rank."""
    rec = with_derived(rec)
    if isinstance(rec.get("rank_ms"), list):
        rec.update((f"rank{r}_ms", v) for r, v in enumerate(rec["rank_ms"]))
    return [_cell(rec.get(c)) for c in columns]


def _cell(v) -> object:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


# ---- record order ----

class _InOrder:
    """Iterate records in t order, holding back at most REORDER_WINDOW_S of trace time. A record
    later than that (never seen in practice) is passed on when it comes and counted in ``late``."""

    def __init__(self, records: Iterable[dict], window_s: float = REORDER_WINDOW_S):
        self.records, self.window_s = records, window_s
        self.late = 0

    def __iter__(self) -> Iterator[dict]:
        heap: list[tuple[float, int, dict]] = []
        newest = released = -math.inf
        for seq, rec in enumerate(self.records):
            t = rec.get("t")
            t = t if _is_number(t) else max(newest, 0.0)   # no t: keep its place in the file
            if t < released:
                self.late += 1
            heapq.heappush(heap, (t, seq, rec))
            newest = max(newest, t)
            while heap and heap[0][0] < newest - self.window_s:
                released = heap[0][0]
                yield heapq.heappop(heap)[2]
        while heap:
            yield heapq.heappop(heap)[2]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---- Perfetto ----

def export_perfetto(trace: str, header: dict, out: IO[str], skip: frozenset = frozenset(),
                    skipped: int | None = None, tr=None) -> str:
    """The JSON, record by record (``tr``: the compact trace opened, its window's rows numbered as ``skip``
    numbers them)."""
    ordered = _InOrder(_records(trace, skip, tr))
    w = _PerfettoWriter(out, header)
    for rec in ordered:
        w.add(rec)
    w.close(trace, header, late=ordered.late)
    return _perfetto_summary(w, len(skip) if skipped is None else skipped, ordered.late)


def _perfetto_summary(w: "_PerfettoWriter", skipped: int, late: int) -> str:
    return _timeline_summary(w.counts, f"{w.events:,} events", skipped, w.end is not None, late)


PARTIAL = "no end record: partial trace"
EXPORT_WINDOW = "export_window"   # a header key of an export of a window (--from / --to): its label


def _timeline_summary(c: Counter, events: str, skipped: int, complete: bool, late: int = 0) -> str:
    """A timeline export's summary line (``events``: how many it wrote, in its own unit)."""
    parts = [events, f"{c['step']:,} steps", f"{c['gpu']:,} GPU slices",
             f"{c['prefill']:,} prefills", f"{c['capture']:,} captures", f"{c['counter']:,} counter values"]
    if skipped:
        parts.append(f"{skipped:,} records skipped (cannot be trusted)")
    if c["skipped"]:
        parts.append(f"{c['skipped']:,} records of unknown types left out")
    if not complete:
        parts.append(PARTIAL)
    if late:
        parts.append(f"{late} records out of order")
    return ", ".join(parts)


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def slice_ns(us: float) -> int:
    """A host or GPU slice's time or duration (µs) in integer ns, as slice_placement.ns rounds it: the
    slices are placed in ints (no float drift over a long run); a slice's ts / dur is that / 1000."""
    x = min(us, MAX_NS / 1e3) * 1e3
    return round(x) if x == x else 0


def round3(x: float) -> float:
    """x to 3 decimals as numpy rounds it (np.round(x, 3): rint(x * 1000) / 1000, the columnar exports' rounding)."""
    r = x * 1000
    return round(r) / 1000 if math.isfinite(r) else x


def _num(rec: dict, key: str) -> float:
    """A field that places or sizes a slice: it must be a finite number."""
    v = rec.get(key)
    if not _is_number(v):
        raise ValueError(f"{key} is {v!r}, not a number")
    return v


def _short(text: str) -> str:
    return text if len(text) <= NAME_MAX else text[: NAME_MAX - 3] + "..."


def _args(rec: dict, skip: tuple = ("type", "kind", "t")) -> dict:
    """A record's fields as slice/instant args; null (not measured) is left out."""
    return {k: v for k, v in rec.items() if k not in skip and v is not None}


def _json_safe(v):
    """NaN / infinity (valid in a trace, not in JSON) as null; args only (ts/dur are screened numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def step_name(rec: dict) -> str:
    """Named by the rows the step computed: the bucket on a graph step, the rows on an eager one; a
    PIECEWISE graph and a forward with prompt tokens say so."""
    phase = R.step_phase(rec)
    tail = "" if phase == R.PHASE_DECODE else f" {phase}"
    if rec.get("bucket") is not None:
        pw = " PIECEWISE" if R.step_runtime_mode(rec) == R.RUNTIME_PIECEWISE else ""
        return f"graph b{rec['bucket']}{pw}{tail}"
    return f"eager b{R.step_rows(rec)}{tail}" + (f" ({rec['reason']})" if rec.get("reason") else "")


class _PerfettoWriter:
    """Writes Chrome Trace Event JSON as records come (in t order), one event per line."""

    def __init__(self, out: IO[str], header: dict):
        self.out = out
        self.events = 0
        self.counts: Counter = Counter()
        self.named: set[int] = set()
        self.end: dict | None = None
        self.host_end: int | None = None   # ns, the end of the host / GPU track's last slice (None: none yet)
        self.gpu_end: int | None = None
        self.graphs_end = -math.inf        # µs, the end of the last capture slice
        out.write('{"traceEvents":[\n')
        self._meta("process_name", 0, {"name": _process_name(header)})

    # -- raw events --
    def _emit(self, ev: dict) -> None:
        try:
            line = json.dumps(ev, separators=(",", ":"), allow_nan=False)
        except ValueError:
            line = json.dumps(_json_safe(ev), separators=(",", ":"), allow_nan=False)
        self._line(line)

    def _line(self, line: str) -> None:
        self.out.write(line if self.events == 0 else ",\n" + line)
        self.events += 1

    def _meta(self, name: str, tid: int, args: dict) -> None:
        self._emit({"ph": "M", "name": name, "pid": PID, "tid": tid, "args": args})

    def _track(self, tid: int) -> int:
        if tid not in self.named:   # named when first used: a CPU trace has no GPU track
            self.named.add(tid)
            self._meta("thread_name", tid, {"name": TRACKS[tid]})
            self._meta("thread_sort_index", tid, {"sort_index": tid})
        return tid

    def _slice(self, tid: int, cat: str, name: str, ts: float, dur: float, args: dict) -> None:
        self._emit({"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": self._track(tid),
                    "ts": ts, "dur": dur, "args": args})
        self.counts[cat] += 1

    def _instant(self, tid: int, cat: str, name: str, t: float, args: dict) -> None:
        self._emit({"ph": "i", "s": "t", "cat": cat, "name": _short(name), "pid": PID,
                    "tid": self._track(tid), "ts": _us(t), "args": args})
        self.counts["instant"] += 1
        self.counts[f"instant {cat}"] += 1

    def _counter(self, name: str, t: float, values: dict) -> None:
        self._emit({"ph": "C", "name": name, "pid": PID, "tid": HOST, "ts": _us(t), "args": values})
        self.counts["counter"] += len(values)

    # -- records --
    def add(self, rec: dict) -> None:
        kind = rec["type"] if rec["type"] != R.EVENT else rec.get("kind")
        try:
            if rec["type"] == R.STEP:
                self._step(rec)
            elif rec["type"] == R.PREFILL:
                self._prefill(rec)
            elif rec["type"] == R.SAMPLE:
                self._sample(rec)
            elif rec["type"] == R.EVENT:
                self._event(rec)
            elif rec["type"] == R.END:
                self.end = rec
                self._instant(EVENTS, "end", f"end ({rec.get('outcome') or rec.get('error') or 'closed'})",
                              _num(rec, "t"), _args(rec))
            else:
                self.counts["skipped"] += 1    # a record type this version does not know
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise CgwatchError(f"bad {kind} record at t={rec.get('t')}: {what}") from None

    def _step(self, rec: dict) -> None:
        t, host_us, name = _num(rec, "t"), _num(rec, "host_us"), step_name(rec)
        rec = with_derived(rec)
        args = {k: rec[k] for k in STEP_ARGS if rec.get(k) is not None}
        t_ns = slice_ns(t * 1e6)
        ts = t_ns if self.host_end is None else max(t_ns, self.host_end)
        if ts > t_ns:
            args["shifted_us"] = (ts - t_ns) / 1000
        dur = slice_ns(host_us)
        self._track(HOST)
        gpu = _is_number(rec.get("gpu_ms"))
        if gpu:
            self._track(GPU)   # both tracks named before the step's events (the columnar path does the same)
        self._slice(HOST, "step", name, ts / 1000, dur / 1000, args)
        self.host_end = ts + dur
        self._counter("host launch", t, {"us": host_us})
        if _is_number(rec.get("gap_us")):
            self._counter("GPU gap", t, {"us": rec["gap_us"]})
        self._counter("batch", t, {"rows": _num(rec, "rows"), "padded": _num(rec, "padded"),
                                   "requests": _num(rec, "batch")})
        if gpu:
            self._gpu_step(rec, name, t_ns)
        if isinstance(rec.get("rank_ms"), list):
            per = {f"rank{r}": v for r, v in enumerate(rec["rank_ms"]) if _is_number(v)}
            if per:
                self._counter("rank step ms", t, per)
            if _is_number(rec.get("skew_ms")):
                self._counter("rank skew", t, {"ms": rec["skew_ms"]})

    def _gpu_step(self, rec: dict, name: str, t_ns: int) -> None:
        gap = slice_ns(rec["gap_us"]) if _is_number(rec.get("gap_us")) else 0
        ts = t_ns if self.gpu_end is None else max(t_ns, self.gpu_end + gap)   # lower bound (module docstring)
        dur = slice_ns(rec["gpu_ms"] * 1e3)
        args = {"i": rec["i"], "batch": rec["batch"], "rows": rec["rows"], "bucket": rec.get("bucket"),
                "runtime_mode": rec["runtime_mode"], "phase": rec["phase"], "gpu_ms": rec["gpu_ms"],
                "gap_us": rec.get("gap_us"), "start": "lower bound", "enqueued_us": t_ns / 1000,
                "queued_us": (ts - t_ns) / 1000}
        self._slice(GPU, "gpu", name, ts / 1000, dur / 1000, {k: v for k, v in args.items() if v is not None})
        self.gpu_end = ts + dur

    def _prefill(self, rec: dict) -> None:
        t_ns = slice_ns(_num(rec, "t") * 1e6)
        ts = t_ns if self.host_end is None else max(t_ns, self.host_end)
        args = _args(rec)
        if ts > t_ns:
            args["shifted_us"] = (ts - t_ns) / 1000
        dur = slice_ns(_num(rec, "host_ms") * 1e3)
        self._slice(HOST, "prefill", f"prefill {rec['requests']} req", ts / 1000, dur / 1000, args)
        self.host_end = ts + dur

    def _sample(self, rec: dict) -> None:
        t = _num(rec, "t")
        for field, (name, key, scale) in SAMPLE_COUNTERS.items():
            v = rec.get(field)
            if _is_number(v):
                self._counter(name, t, {key: round3(v * scale) if scale != 1 else v})
        for g in rec.get("gpus") if isinstance(rec.get("gpus"), list) else ():
            for field, (name, key, scale) in SAMPLE_COUNTERS.items():
                v = g.get(field) if isinstance(g, dict) and g.get("gpu") else None   # gpu 0: the series above
                if _is_number(v):
                    self._counter(f"{name} gpu{g['gpu']}", t, {key: round3(v * scale) if scale != 1 else v})

    def _event(self, rec: dict) -> None:
        kind, t = rec.get("kind"), _num(rec, "t")
        if kind == R.EV_CAPTURE:
            self._capture(rec)
        elif kind == R.EV_ALERT:
            self._instant(ALERTS, "alert", event_text(rec), t, _args(rec))
        else:
            tid = GRAPHS if kind in GRAPH_EVENTS else EVENTS
            self._instant(tid, str(kind), event_text(rec), t, _args(rec))

    def _capture(self, rec: dict) -> None:
        dur = 0.0 if rec.get("capture_s") is None else round(_num(rec, "capture_s") * 1e6, 3)
        t_us = _us(_num(rec, "t"))
        ts = max(round(t_us - dur, 3), self.graphs_end)
        name = f"capture b{rec['bucket']}"
        if not rec.get("ok", True):
            name += f" failed ({rec.get('cause') or 'error'})"
        self._slice(GRAPHS, "capture", _short(name), ts, dur, _args(rec) | {"placed": CAPTURE_PLACEMENT})
        self.graphs_end = ts + dur

    def close(self, trace: str, header: dict, late: int) -> None:
        meta = {"source": os.path.abspath(trace), "format": header.get("format"), "version": header.get("version"),
                **{k: header.get(k) for k in ("cgwatch", "started", "gpu", "dtype", "torch", "device")},
                "model": (header.get("model") or {}).get("name"),
                "complete": self.end is not None, "outcome": (self.end or {}).get("outcome"),
                "time_origin": "ts 0 = the run's t = 0 (µs)", "gpu_placement": GPU_PLACEMENT,
                "capture_placement": CAPTURE_PLACEMENT, "late_records": late,
                **({"window": header[EXPORT_WINDOW]} if header.get(EXPORT_WINDOW) else {}),
                "counts": dict(sorted(self.counts.items())) | {"events": self.events}}
        self.out.write('\n],\n"displayTimeUnit":"ms",\n"metadata":')
        self.out.write(json.dumps(_json_safe(meta), separators=(",", ":"), allow_nan=False))
        self.out.write("}\n")


def _process_name(header: dict) -> str:
    model = (header.get("model") or {}).get("name") or "?"
    return f"cgwatch: {model} on {header.get('gpu') or '?'}"
