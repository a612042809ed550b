"""``CgwatchApp``: the live/replay screen over any ``Source``.

Records and status changes arrive on the source's thread and go, in order, into one inbox (a
deque: appends are thread-safe and never block the source). A 10 Hz timer folds the inbox into
``ViewState`` and redraws once, so a fast stream costs one redraw per tick; a status that changes
"connected" also posts a message so that a lost connection shows at once. Every key sends a command through
``source.send``; what the screen shows changes only with the answers (``ack`` records and
``state`` events), never by guessing locally.
"""

from __future__ import annotations

import time
from collections import deque

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer

from cgwatch.source import Source

from .dialogs import HelpScreen, RecaptureDialog
from .ranks import RankPanel
from .state import ViewState
from .widgets import Banner, BucketTable, Charts, EventLog, HeaderBar, Totals

REFRESH_S = 0.1        # at most 10 redraws a second
SLOW_REFRESH_S = 0.5   # the bucket table and totals: at most 2 a second, unless something was logged
RATE_STEP = 1.25  # + / - multiply / divide the workload rate by this

# key, action, footer label, key shown, help text
KEYS = [
    ("g", "toggle_mode", "mode", "g", "toggle graph / eager mode (from the engine's last state)"),
    ("r", "recapture", "recapture", "r", "recapture the graphs with new batch sizes (a dialog)"),
    ("p", "pause", "pause", "p", "pause / resume (the engine's loop, or the replay)"),
    ("plus", f"rate({RATE_STEP})", "rate", "+", f"workload arrival rate ×{RATE_STEP}"),
    ("minus", f"rate({1 / RATE_STEP})", "rate", "-", f"workload arrival rate ÷{RATE_STEP}"),
    ("m", "mark", "mark", "m", "put a mark on the timeline"),
    ("left_square_bracket", "speed(0.5)", "slower", "[", "replay speed ×0.5"),
    ("right_square_bracket", "speed(2.0)", "faster", "]", "replay speed ×2"),
    ("left", "seek(-10)", "-10s", "←", "replay: seek back 10 s (the view rebuilds)"),
    ("right", "seek(10)", "+10s", "→", "replay: seek forward 10 s"),
    ("n", "next('alert')", "alert", "n", "replay: jump just past the next alert"),
    ("N", "next('mark')", "mark", "N", "replay: jump just past the next mark"),
    ("question_mark", "help", "help", "?", "this help"),
    ("q", "quit", "quit", "q", "quit"),
]
# keys in the help but not in the footer (which must fit 80 columns)
MORE_KEYS = [("G", "toggle_ranks", "gpus", "G", "per-GPU view of a tensor-parallel run, in place of the charts")]


STATUS = "_status"   # inbox entries for on_status: {"type": STATUS, "status": {...}}


class StatusChanged(Message):
    """Posted from the source's thread after a status entry went into the inbox."""


class CgwatchApp(App):
    TITLE = "cgwatch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding(key, action, label, key_display=shown) for key, action, label, shown, _ in KEYS] + \
        [Binding(key, action, label, key_display=shown, show=False) for key, action, label, shown, _ in MORE_KEYS]

    def __init__(self, source: Source, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.source = source
        self.state = ViewState()
        self.refresh_s = refresh_s
        self._inbox: deque[dict] = deque()
        self._dirty = True
        self._slow_dirty, self._slow_at, self._slow_marker = True, 0.0, None
        self._connected_seen: bool | None = None   # last "connected" a status carried (source thread)

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield Banner()
        yield Charts()
        yield RankPanel()
        yield BucketTable()
        yield Totals()
        yield EventLog()
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.source.title
        self.source.start(self._inbox.append, self._on_status)
        self.set_interval(self.refresh_s, self.flush)
        self.flush()

    # -- data in -----------------------------------------------------------------------------------
    def _on_status(self, status: dict) -> None:   # any thread
        self._inbox.append({"type": STATUS, "status": status})
        connected = status.get("connected", True)
        if connected != self._connected_seen:   # a lost / regained connection shows at once; the
            self._connected_seen = connected      # rest (replay position, ...) at the next tick
            self.post_message(StatusChanged())

    @on(StatusChanged)
    def _status_changed(self) -> None:
        self.flush()

    def _fold_status(self, status: dict) -> None:
        was = self.state.connected
        self.state.status = dict(status)
        if self.state.connected != was:
            text = self.state.status.get("text") or ""
            if self.state.connected:
                self.state.add_log("green", f"connected: {text}")
            else:
                self.state.add_log("bold red", f"connection lost: {text}")

    def flush(self) -> None:
        """Fold what arrived since the last tick, in order, then redraw once (if anything changed)."""
        inbox, fold = self._inbox, self.state.fold
        while inbox:
            rec = inbox.popleft()
            if rec.get("type") == STATUS:
                self._fold_status(rec["status"])
            else:
                fold(rec)
            self._dirty = True
        if self._dirty:
            self._dirty, self._slow_dirty = False, True
            state = self.state
            for widget in (HeaderBar, Banner, Charts, RankPanel, EventLog):
                self.query_one(widget).show(state)
        # The bucket table and totals are the costly redraws: at most every SLOW_REFRESH_S, and at once
        # when something was logged (an ack, an event) or the view was reset.
        now, state = time.monotonic(), self.state
        marker = (state.generation, state.log_seq)
        if self._slow_dirty and (now - self._slow_at >= SLOW_REFRESH_S or marker != self._slow_marker):
            self._slow_dirty, self._slow_at, self._slow_marker = False, now, marker
            for widget in (BucketTable, Totals):
                self.query_one(widget).show(state)

    # -- commands out ------------------------------------------------------------------------------
    def send(self, cmd: str, value: object = None) -> None:
        self.source.send(cmd, value)
        self.flush()   # a source that answers at once (a replay) shows the answer at once

    def action_toggle_mode(self) -> None:
        self.send("mode", "eager" if self.state.mode == "graph" else "graph")

    def action_recapture(self) -> None:
        def done(sizes: list[int] | None) -> None:
            if sizes:
                self.send("recapture", sizes)
        self.push_screen(RecaptureDialog(self.state.sizes), done)

    def action_pause(self) -> None:
        self.send("resume" if self.state.paused else "pause")

    def action_rate(self, factor: float) -> None:
        rate = self.state.rate
        if rate is None:
            self.state.add_log("red", "rate: the engine has not reported an arrival rate")
            self._dirty = True
            self.flush()
            return
        self.send("rate", round(rate * factor, 6))

    def action_mark(self) -> None:
        self.send("mark", time.strftime("mark %H:%M:%S"))

    def action_speed(self, factor: float) -> None:
        self.send("speed", (self.state.status.get("speed") or 1.0) * factor)

    def action_seek(self, seconds: float) -> None:
        self.send("seek", seconds)

    def action_next(self, what: str) -> None:
        self.send("next", what)

    def action_toggle_ranks(self) -> None:
        """The per-GPU view in place of the charts (so both fit 80x24), and back."""
        panel = self.query_one(RankPanel)
        shown = not panel.has_class("-shown")
        panel.set_class(shown, "-shown")
        self.query_one(Charts).display = not shown
        panel.show(self.state)

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(shown, text) for _, _, _, shown, text in KEYS + MORE_KEYS]))


def run_tui(source: Source) -> int:
    """Run the app until q; close the source whatever happens."""
    try:
        CgwatchApp(source).run()
    finally:
        source.close()
    return 0
