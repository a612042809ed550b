"""Folds the record stream into what the screen shows. O(1) per record; the widgets read it at
most 10x/s. No Textual here, so it can be tested (and checked against report.py) on its own.

The bucket rows and totals are a ``cgwatch.aggregate.RunStats`` (the report's and Prometheus'
accumulator, whose docstring defines every number), folded record by record, with p50/p99 over the
last ``PCT_WINDOW`` steps of each kind per bucket instead of the whole run. The table shows the rows of
the size list in force (its epoch: a recapture starts a new one); the totals cover the whole run. Records
go through the readers' one validation first (``records.Screen``): one that cannot be trusted is
skipped, logged (the first few; then a count) and counted nowhere. A client that joins a live run late
gets the daemon's aggregate of the run so far in the snapshot (``aggregate`` and ``aggregate_row``
messages, docs/PROTOCOL.md) and starts from it; the retained records of the snapshot that follow it feed
only the charts, rates and log, since the aggregate counts them already. So two views of one run show
the same totals whenever they joined. The rest (charts, rates, the log, the engine's controllable state,
bucket status) is the screen's own.
"""

from __future__ import annotations

from collections import deque

from cgwatch import records as R
from cgwatch.aggregate import MIB, VIEW_WINDOW, Row, RunStats, check_step
from cgwatch.protocol import AGGREGATE, AGGREGATE_ROW, SNAPSHOT_END
from cgwatch.source import ACK
from cgwatch.text import printable

from .eventlog import describe_ack, describe_record

CHART_POINTS = 200   # points per chart
RATE_WINDOW_S = 2.0  # steps/s and tokens/s over this much trace time
PCT_WINDOW = VIEW_WINDOW   # step times kept per bucket and kind for p50/p99 (as the daemon's aggregate)
LOG_LINES = 1000     # log lines kept (the widget keeps its own copy)
SCREEN_WINDOW = 100_000   # step indices the live screen remembers for its duplicate check
SKIPS_LOGGED = 3     # skipped records logged one by one; after that a count at 10, 100, 1000, ...
_SCREENED = frozenset((R.STEP, R.PREFILL, R.SAMPLE, R.EVENT, R.END))   # what records.Screen checks


def _seconds(v: object) -> float | None:
    """A number of seconds, or None (a field the readers' screen does not check: never trusted blindly)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class ViewState:
    def __init__(self) -> None:
        self.status: dict = {}   # the source's latest on_status; survives a reset
        self.generation = 0      # bumped on every reset, so widgets know to clear
        self.reset()

    def reset(self, header: dict | None = None) -> None:
        """Forget everything but the connection status: a header starts (or restarts) a run."""
        self.generation += 1
        self.header: dict = header or {}
        self.engine: dict = {}           # controllable state: last ``state`` event or ack.state
        self.mode_seen: str | None = None
        self.kernels_seen: str | None = None   # the last state's or kernels info event's "kernels"
        self.no_cuda = False
        cfg = self.header.get("config") or {}
        self.in_force: set[int] = set(cfg.get("capture_sizes") or ())
        self.stats = RunStats(window=PCT_WINDOW)   # bucket rows and totals (cgwatch/aggregate.py)
        self.stats.add(self.header)
        self.screen = R.Screen(window=SCREEN_WINDOW)   # the readers' one validation (records.py)
        self._counted = False    # in a snapshot after the daemon's aggregate: its records are counted in it
        self.t_last: float = 0.0
        self._t_first_step: float | None = None
        self._last_ms = 0.0
        self._win: deque[tuple[float, int]] = deque()
        self._win_tokens = 0
        self.series = {k: deque(maxlen=CHART_POINTS)
                       for k in ("graph_ms", "eager_ms", "host_us", "batch", "gpu_util", "gpu_busy")}
        self.log: deque[tuple[float, str, str]] = deque(maxlen=LOG_LINES)  # (t, style, text)
        self.log_seq = 0         # lines ever logged since the reset (widgets append the new ones)
        self.end: dict | None = None   # the trace's end record, once it arrived: the run is over

    # -- folding -----------------------------------------------------------------------------------
    def fold(self, rec: dict) -> None:
        typ = rec.get("type")
        if typ in _SCREENED:
            why = self.screen.check(rec)
            if why is not None:   # cannot be trusted: say so, count nothing
                self._skipped(rec, why, counted=True)
                return
        t = rec.get("t")
        if isinstance(t, (int, float)) and t > self.t_last:
            self.t_last = float(t)
        if typ == R.STEP:
            self._step(rec)
        elif typ == R.SAMPLE:
            if not self._counted:
                self.stats.add(rec)
            if rec.get("gpu_util") is not None:
                self.series["gpu_util"].append(float(rec["gpu_util"]))
            if rec.get("gpu_busy") is not None:
                self.series["gpu_busy"].append(100.0 * rec["gpu_busy"])
        elif typ == R.EVENT:
            self._event(rec)
        elif typ == R.PREFILL:
            if not self._counted:
                self.stats.add(rec)
        elif typ == ACK:
            if rec.get("ok") and isinstance(rec.get("state"), dict):
                self._set_engine(rec["state"])
            self.add_log(*describe_ack(rec))
            return
        elif typ == R.HEADER:
            self.reset(rec)
            return
        elif typ == R.END:
            self.stats.add(rec)
            self.end = rec
        elif typ == AGGREGATE:   # the whole run so far, from the daemon: start from it
            self.stats = RunStats.from_state(rec.get("run") or {}, (), window=PCT_WINDOW)
            self._counted = True
            return
        elif typ == AGGREGATE_ROW:
            if self._counted and isinstance(rec.get("row"), dict):
                self.stats.add_row_state(rec["row"])
            return
        elif typ == SNAPSHOT_END:
            self._counted = False   # live records from here on: count them
            return
        if typ == R.EVENT and rec.get("kind") == R.EV_RELEASE and "pool_bytes" not in rec:
            rec = {**rec, "pool_bytes": self.stats.pool_bytes}   # an older trace: the pool in force till now
        line = describe_record(rec)
        if line:
            self.add_log(*line)

    def add_log(self, style: str, text: str) -> None:
        self.log.append((self.t_last, style, printable(text)))   # a mark's newline or ESC stays on its line
        self.log_seq += 1

    def _skipped(self, rec: dict, why: str, counted: bool = False) -> None:
        """Log a record the screen (or the accumulator) rejected: the first few, then a count at 10, 100, ..."""
        if not counted:
            self.screen.skip(R.describe(rec), why)
        n = self.screen.count
        if n <= SKIPS_LOGGED:
            what = f"step record i={rec.get('i')}" if rec.get("type") == R.STEP else f"{R.describe(rec)} record"
            self.add_log("bold red", f"skipped {what}: {why}")
        elif str(n).strip("0") == "1":   # 10, 100, 1000, ...
            self.add_log("bold red", f"skipped {n:,} records that cannot be trusted so far")

    def _step(self, rec: dict) -> None:
        try:
            if self._counted:
                check_step(rec)
            else:
                self.stats.add_step(rec)
        except (KeyError, TypeError, ValueError) as e:   # past the screen: still say so, count nothing
            self._skipped(rec, f"missing field {e}" if isinstance(e, KeyError) else str(e))
            return
        ms = R.step_ms(rec)
        tokens = rec.get("tokens") or 0
        if rec.get("reason") == R.REASON_NO_CUDA:
            self.no_cuda = True
        # charts: graph and eager share the step axis (0 where the other kind ran)
        graph = rec.get("bucket") is not None
        self.series["graph_ms"].append(ms if graph else 0.0)
        self.series["eager_ms"].append(0.0 if graph else ms)
        self.series["host_us"].append(rec.get("host_us") or 0.0)
        self.series["batch"].append(rec.get("batch") or 0)
        # rates over the last RATE_WINDOW_S of trace time
        t = rec["t"]
        if self._t_first_step is None:
            self._t_first_step = t
        if t >= self.t_last:
            self._last_ms = ms
        self._win.append((t, tokens))
        self._win_tokens += tokens
        while self._win and self._win[0][0] <= self.t_last - RATE_WINDOW_S:
            self._win_tokens -= self._win.popleft()[1]

    def _event(self, rec: dict) -> None:
        kind = rec.get("kind")
        if not self._counted:
            self.stats.add(rec)
        if kind == R.EV_CAPTURE_DONE:
            self.in_force = set(rec.get("sizes") or ()) | set(rec.get("failed") or ())
        elif kind == R.EV_RECAPTURE:
            self.in_force = set(rec.get("sizes") or ())
        elif kind == R.EV_MODE:
            self.mode_seen = rec.get("mode")
        elif kind == R.EV_STATE:
            self._set_engine({k: v for k, v in rec.items() if k not in ("type", "kind", "t")})
        elif kind == R.EV_INFO and rec.get("kernels"):   # "kernels: fused", before the recapture
            self.kernels_seen = str(rec["kernels"])
        elif kind == R.EV_ALERT and "need CUDA" in str(rec.get("message", "")):
            self.no_cuda = True

    def _set_engine(self, state: dict) -> None:
        self.engine = dict(state)
        if state.get("sizes") is not None:
            self.in_force = set(state["sizes"])
        if state.get("cuda") is False:
            self.no_cuda = True
        if state.get("kernels"):
            self.kernels_seen = str(state["kernels"])

    # -- derived values (read by widgets) ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.status.get("connected", True)

    @property
    def read_only(self) -> str | None:
        """Why this session cannot change the engine (a replay, a daemon that wants a token), or None."""
        return self.status.get("read_only") or None

    @property
    def mode(self) -> str | None:
        """The engine's mode: last state, else the last mode event, else the configured one."""
        return (self.engine.get("mode") or self.mode_seen
                or (self.header.get("config") or {}).get("mode"))

    @property
    def mode_text(self) -> str:
        return "eager only: no CUDA" if self.no_cuda else (self.mode or "n/a")

    @property
    def kernels(self) -> str | None:
        """The decode step's kernels ("fused" / "plain"): the latest state, else the header; None where
        the run does not say (vLLM, a trace from before the field)."""
        return self.kernels_seen or self.header.get("kernels") or None

    @property
    def sizes(self) -> list[int]:
        """The capture sizes in force (for the recapture dialog)."""
        return sorted(self.in_force)

    @property
    def rate(self) -> float | None:
        """The workload's arrival rate (req/step): last state, else the header's workload."""
        rate = self.engine.get("rate")
        return rate if rate is not None else (self.header.get("workload") or {}).get("rate")

    @property
    def ended_text(self) -> str | None:
        """Set once the run is over: its end record arrived, or a replay played a trace that has none
        (cut short) to its end. None while it runs."""
        if self.end is not None:
            return f"run ended ({self.end.get('outcome') or self.end.get('error') or 'no outcome'})"
        if self.status.get("ended"):
            return "trace ends here (no end record: the run was cut short)"
        return None

    @property
    def paused(self) -> bool:
        return bool(self.status.get("paused") or self.engine.get("paused"))

    def rates(self) -> tuple[float | None, float | None]:
        """(steps/s, tokens/s) over the last RATE_WINDOW_S of trace time (0 once steps stop)."""
        if self._t_first_step is None:
            return None, None
        if not self._win:
            return 0.0, 0.0
        span = min(RATE_WINDOW_S, self.t_last - self._t_first_step + self._last_ms / 1000.0)
        if span <= 0:
            return None, None
        return len(self._win) / span, self._win_tokens / span

    @property
    def steps(self) -> int:
        return self.stats.n

    @property
    def buckets(self) -> dict[int | None, Row]:
        """The rows of the size list in force (what the table shows)."""
        return self.stats.epoch.rows

    def bucket_rows(self) -> list[dict]:
        """One dict per bucket of the size list in force (RunStats' epoch in force), sorted, over-max last:
        RunStats' row numbers (cgwatch/aggregate.py) plus the label, graph MiB, capture s, compile s (its
        kernel compile share, where the engine measured it) and the status."""
        epoch = self.stats.epoch
        largest = epoch.largest_size()
        if self.in_force:
            largest = max(largest or 0, max(self.in_force))
        out = []
        for key in epoch.keys():
            row = epoch.rows[key]
            ok = row.last_ok or {}
            pool = ok.get("pool_bytes")
            out.append({
                "key": key,
                "label": str(key) if key is not None else (f">{largest}" if largest else "eager"),
                **row.summary(), "hits": row.graph_steps,
                "graph_mib": None if pool is None else pool / MIB,
                "capture_s": ok.get("capture_s"), "compile_s": _seconds(ok.get("compile_s")),
                "status": self._bucket_status(key, row),
            })
        return out

    def _bucket_status(self, key: int | None, row: Row) -> str:
        if key is None:
            return "-"
        if key not in self.in_force:
            return "released" if row.last_ok else "not in sizes"
        if row.capture is not None and not row.capture.get("ok"):
            return f"failed: {row.capture.get('cause') or row.capture.get('error') or 'unknown'}"
        if self.no_cuda:
            return "disabled: no CUDA"
        if self.mode == "eager":
            return "disabled: eager mode"
        return "ok" if row.capture is not None else "-"

    def rank_rows(self) -> list[dict]:
        """Per rank (tensor parallelism): RankStats' rows plus the GPU's name from the header."""
        names = {r.get("rank"): r.get("gpu") for r in self.header.get("ranks") or () if isinstance(r, dict)}
        return [{"gpu": names.get(r["rank"]), **r} for r in self.stats.ranks.rows()]

    def totals(self) -> dict:
        """RunStats' totals (cgwatch/aggregate.py); ``shows_runtime_modes`` / ``shows_phases`` /
        ``shows_rows``: whether the screen shows the FULL/PIECEWISE split, mixed forwards, rows."""
        return {**self.stats.totals(), "shows_runtime_modes": self.stats.shows_runtime_modes(),
                "shows_phases": self.stats.shows_phases(), "shows_rows": self.stats.shows_rows()}
