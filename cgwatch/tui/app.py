"""``CgwatchApp``: the live/replay screen over any ``Source``.

Records and status changes arrive on the source's thread and go, in order, into one inbox (a
deque: appends are thread-safe and never block the source). A 10 Hz timer folds the inbox into
``ViewState`` and redraws once, so a fast stream costs one redraw per tick; a status that changes
"connected" also posts a message so that a lost connection shows at once. Every key sends a command through
``source.send``; what the screen shows changes only with the answers (``ack`` records and
``state`` events), never by guessing locally.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque

from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer

from cgwatch.engine.control import limits_from_header
from cgwatch.source import Source

from .dialogs import HelpScreen, RecaptureDialog
from .ranks import RankPanel
from .state import ViewState
from .widgets import (PANES, Banner, BucketTable, Charts, EventLog, HeaderBar, LastEvent, PaneBar, TooSmall,
                      Totals)

REFRESH_S = 0.1        # at most 10 redraws a second
SLOW_REFRESH_S = 0.5   # the bucket table and totals: at most 2 a second, unless something was logged
RATE_STEP = 1.25  # + / - multiply / divide the workload rate by this

# Every key: (key, action, footer label (None: not in the footer), key shown). The footer shows the labelled
# ones in this order (help and the pane key first: at 80 columns it has room for the first eight or so).
KEYS = [
    ("question_mark", "help", "help", "?"),
    ("tab", "pane(1)", "pane", "tab"),
    ("shift+tab", "pane(-1)", None, "shift+tab"),
    ("q", "quit", "quit", "q"),
    ("g", "toggle_mode", "mode", "g"),
    ("k", "toggle_kernels", "kernels", "k"),
    ("r", "recapture", "recapture", "r"),
    ("p", "pause", "pause", "p"),
    ("plus", f"rate({RATE_STEP})", "rate", "+"),
    ("minus", f"rate({1 / RATE_STEP})", "rate", "-"),
    ("m", "mark", "mark", "m"),
    ("left_square_bracket", "speed(0.5)", "slower", "["),
    ("right_square_bracket", "speed(2.0)", "faster", "]"),
    ("left", "seek(-10)", "-10s", "←"),
    ("right", "seek(10)", "+10s", "→"),
    ("n", "next('alert')", "alert", "n"),
    ("N", "next('mark')", "mark", "N"),
    ("up", "scroll(-1)", None, "↑"),
    ("down", "scroll(1)", None, "↓"),
    ("pageup", "scroll(-10)", None, "PgUp"),
    ("pagedown", "scroll(10)", None, "PgDn"),
    ("home", "scroll_to('home')", None, "Home"),
    ("end", "scroll_to('end')", None, "End"),
    ("G", "toggle_ranks", None, "G"),
]
# The help: a line per group of actions; its keys are read off the app's bindings (Textual's ctrl+q too), so
# the help lists every key there is. Each line fits the 80x24 dialog (72 characters): 24 rows hold it all.
HELP = [
    (("help",), "this help"),
    (("pane(1)", "pane(-1)"), "the next / previous pane below 120x36"),
    (("quit",), "quit"),
    (("toggle_mode",), "toggle graph / eager mode (from the engine's last state)"),
    (("toggle_kernels",), "kernels fused / plain (every bucket is captured again)"),
    (("recapture",), "recapture the graphs with new batch sizes (a dialog)"),
    (("pause",), "pause / resume (the engine's loop, or the replay)"),
    ((f"rate({RATE_STEP})", f"rate({1 / RATE_STEP})"), f"workload arrival rate ×{RATE_STEP} / ÷{RATE_STEP}"),
    (("mark",), "put a mark on the timeline"),
    (("speed(0.5)", "speed(2.0)"), "replay speed ×0.5 / ×2"),
    (("seek(-10)", "seek(10)"), "replay: seek 10 s back / forward (the view rebuilds)"),
    (("next('alert')", "next('mark')"), "replay: jump just past the next alert / mark"),
    (("scroll(-1)", "scroll(1)"), "scroll the table (the log on the events pane)"),
    (("scroll(-10)", "scroll(10)"), "the same by 10 rows"),
    (("scroll_to('home')", "scroll_to('end')"), "the table's and the log's start / end (the end follows)"),
    (("toggle_ranks",), "the per-GPU view (tensor parallel) or the charts again"),
]

MIN_SIZE = (80, 24)     # the smallest screen laid out; below it, a message says so
FULL_SIZE = (120, 36)   # from here every part shows at once; below it the compact layout with panes


STATUS = "_status"   # inbox entries for on_status: {"type": STATUS, "status": {...}}


class StatusChanged(Message):
    """Posted from the source's thread after a status entry went into the inbox."""


class CgwatchApp(App):
    """Two layouts: from FULL_SIZE up, everything at once; from MIN_SIZE up, the compact one (a line per
    chart, then one pane at a time: the bucket table's two halves, totals and log, the full charts; tab
    switches, and the last log line always shows). NO_COLOR: no colour at all (Textual would only grey it)."""

    TITLE = "cgwatch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding(key, action, label or "", key_display=shown, show=label is not None,
                        priority=key in ("tab", "shift+tab"))   # tab would move the focus
                for key, action, label, shown in KEYS]
    CSS = """
    PaneBar, LastEvent { display: none; }
    CgwatchApp.-compact PaneBar, CgwatchApp.-compact LastEvent { display: block; }
    CgwatchApp.-compact Charts { height: 3; border: none; }
    CgwatchApp.-compact BucketTable { height: 1fr; max-height: 100%; }
    CgwatchApp.-compact Totals, CgwatchApp.-compact EventLog { display: none; }
    CgwatchApp.-pane-events BucketTable, CgwatchApp.-pane-charts BucketTable { display: none; }
    CgwatchApp.-pane-events Totals, CgwatchApp.-pane-events EventLog { display: block; }
    CgwatchApp.-pane-events LastEvent, CgwatchApp.-lost LastEvent { display: none; }
    CgwatchApp.-pane-charts Charts { height: 11; border: round $primary 50%; }
    CgwatchApp.-ranks Charts { display: none; }
    CgwatchApp.-ranks RankPanel { display: block; }
    CgwatchApp.-small TooSmall { display: block; }
    CgwatchApp.-small HeaderBar, CgwatchApp.-small Banner, CgwatchApp.-small Charts,
    CgwatchApp.-small PaneBar, CgwatchApp.-small BucketTable, CgwatchApp.-small Totals,
    CgwatchApp.-small EventLog, CgwatchApp.-small LastEvent, CgwatchApp.-small Footer,
    CgwatchApp.-small RankPanel { display: none; }
    """

    def __init__(self, source: Source, refresh_s: float = REFRESH_S, exit_on: tuple[int, ...] = ()) -> None:
        # NO_COLOR (https://no-color.org): Textual then only turns colours grey; with ANSI colours on, its
        # filter drops every colour instead (bold, reverse and the like stay).
        super().__init__(ansi_color=True if "NO_COLOR" in os.environ else None)
        self.source = source
        self.exit_on = exit_on          # signals that end the app as q does (terminal restored)
        self.exit_signal: int | None = None
        self.state = ViewState()
        self.refresh_s = refresh_s
        self._inbox: deque[dict] = deque()
        self._dirty = True
        self._slow_dirty, self._slow_at, self._slow_marker = True, 0.0, None
        self._connected_seen: bool | None = None   # last "connected" a status carried (source thread)
        self.compact = self.too_small = False
        self.pane = PANES[0]
        self._laid_out: tuple | None = None   # (width, height, pane) of the last layout

    def compose(self) -> ComposeResult:
        yield HeaderBar()
        yield Banner()
        yield Charts()
        yield RankPanel()
        yield PaneBar()
        yield BucketTable()
        yield Totals()
        yield EventLog()
        yield LastEvent()
        yield TooSmall()
        yield Footer(compact="NO_COLOR" not in os.environ)   # without colour, spaces tell key from label

    def on_mount(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.exit_on:
            loop.add_signal_handler(sig, self._exit_on_signal, sig)
        self.sub_title = self.source.title
        self._lay_out(self.size.width, self.size.height)
        self.source.start(self._inbox.append, self._on_status)
        self.set_interval(self.refresh_s, self.flush)
        self.flush()

    def _exit_on_signal(self, sig: int) -> None:
        self.exit_signal = sig
        self.exit()

    # -- layout ------------------------------------------------------------------------------------
    def on_resize(self, event: events.Resize) -> None:
        self._lay_out(event.size.width, event.size.height)

    def _lay_out(self, width: int, height: int) -> None:
        """Pick the layout for this size (CSS classes on the app) and tell the widgets that draw differently."""
        if (width, height, self.pane) == self._laid_out:
            return
        self._laid_out = (width, height, self.pane)
        self.too_small = width < MIN_SIZE[0] or height < MIN_SIZE[1]
        self.compact = not self.too_small and (width < FULL_SIZE[0] or height < FULL_SIZE[1])
        self.set_class(self.too_small, "-small")
        self.set_class(self.compact, "-compact")
        for pane in PANES:
            self.set_class(self.compact and pane == self.pane, f"-pane-{pane}")
        self.query_one(TooSmall).say(width, height, MIN_SIZE)
        self.query_one(Charts).compact = self.compact and self.pane != "charts"
        table = self.query_one(BucketTable)
        table.part = (0 if self.pane == "buckets" else 1) if self.compact else None
        self.refresh_bindings()
        self._redraw_all()
        self.call_after_refresh(self._redraw_all)   # again at the new sizes (not every Textual sends a Resize
                                                    # to a widget that was hidden)

    def _redraw_all(self) -> None:
        self._dirty = self._slow_dirty = True
        self._slow_at = 0.0
        self.flush()

    def action_pane(self, step: int) -> None:
        if not self.compact or len(self.screen_stack) > 1:
            return
        self.pane = PANES[(PANES.index(self.pane) + step) % len(PANES)]
        self._lay_out(self.size.width, self.size.height)

    def action_scroll(self, rows: int) -> None:
        """↑ ↓ PgUp PgDn: the bucket table, or the log on the events pane."""
        if len(self.screen_stack) > 1:
            return
        if self.compact and self.pane == "events":
            self.query_one(EventLog).scroll_relative(y=rows, animate=False)
            return
        self._scroll_table(rows)

    def action_scroll_to(self, where: str) -> None:
        """Home / End: the table's first / last rows and the log's top / end, whichever shows (the log at
        its end follows new lines again), so the other layout finds them where these keys left them."""
        if len(self.screen_stack) > 1:
            return
        self.query_one(EventLog).to_edge(end=where == "end")
        self._scroll_table((1 if where == "end" else -1) << 30)

    def _scroll_table(self, rows: int) -> None:
        table = self.query_one(BucketTable)
        table.scroll(rows)
        self.query_one(PaneBar).show_pane(self.pane, table)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pane":   # the footer shows tab only where there are panes
            return self.compact
        return True

    # -- data in -----------------------------------------------------------------------------------
    def _on_status(self, status: dict) -> None:   # any thread
        self._inbox.append({"type": STATUS, "status": status})
        connected = status.get("connected", True)
        if connected != self._connected_seen:   # a lost / regained connection shows at once; the
            self._connected_seen = connected      # rest (replay position, ...) at the next tick
            self.post_message(StatusChanged())

    @on(BucketTable.RowsShown)
    def _rows_shown(self) -> None:   # whatever moved them (a key, new rows, a resize): the pane bar follows
        if self.compact:
            self.query_one(PaneBar).show_pane(self.pane, self.query_one(BucketTable))

    @on(StatusChanged)
    def _status_changed(self) -> None:
        self.flush()

    def _fold_status(self, status: dict) -> None:
        was, was_final = self.state.connected, self.state.status.get("final")
        self.state.status = dict(status)
        text = self.state.status.get("text") or ""
        if self.state.connected != was:
            if self.state.connected:
                self.state.add_log("green", f"connected: {text}")
            else:
                self.state.add_log("bold red", f"connection lost: {text}")
        elif status.get("final") and not was_final:   # lost before, and now for good: say why once more
            self.state.add_log("bold red", text)

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
            for widget in (HeaderBar, Banner, Charts, RankPanel, EventLog, LastEvent):
                self.query_one(widget).show(state)
            self.set_class(not state.connected, "-lost")   # the banner takes the last event's line
        # The bucket table and totals are the costly redraws: at most every SLOW_REFRESH_S, and at once
        # when something was logged (an ack, an event) or the view was reset.
        now, state = time.monotonic(), self.state
        marker = (state.generation, state.log_seq)
        if self._slow_dirty and (now - self._slow_at >= SLOW_REFRESH_S or marker != self._slow_marker):
            self._slow_dirty, self._slow_at, self._slow_marker = False, now, marker
            for widget in (BucketTable, Totals):
                self.query_one(widget).show(state)
            if self.compact:
                self.query_one(PaneBar).show_pane(self.pane, self.query_one(BucketTable))

    # -- commands out ------------------------------------------------------------------------------
    def send(self, cmd: str, value: object = None) -> None:
        self.source.send(cmd, value)
        self.flush()   # a source that answers at once (a replay) shows the answer at once

    def action_toggle_mode(self) -> None:
        self.send("mode", "eager" if self.state.mode == "graph" else "graph")

    def action_toggle_kernels(self) -> None:
        """fused <-> plain; where the run never said (vLLM, an old trace) ask for fused: the answer says."""
        self.send("kernels", "plain" if self.state.kernels == "fused" else "fused")

    def action_recapture(self) -> None:
        if self.state.read_only:   # no dialog for a command that cannot go through
            self.state.add_log("red", f"recapture refused: {self.state.read_only}")
            self._dirty = True
            self.flush()
            return

        def done(sizes: list[int] | None) -> None:
            if sizes:
                self.send("recapture", sizes)
        self.push_screen(RecaptureDialog(self.state.sizes, limits_from_header(self.state.header)), done)

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
        """The per-GPU view in place of the charts (so it fits 80x24 too), and back."""
        self.set_class(not self.has_class("-ranks"), "-ranks")
        self._redraw_all()

    def help_lines(self) -> list[tuple[str, str]]:
        """(keys shown, what they do) for HELP's lines, the keys read off the bindings; a binding HELP does
        not name gets a line of its own (its action), so none goes unlisted."""
        keys: dict[str, list[str]] = {}
        own = {key for key, *_ in KEYS}
        for _, binding in sorted(self._bindings, key=lambda kb: kb[0] not in own):   # q before Textual's ^q
            if not binding.system:
                keys.setdefault(binding.action, []).append(self.get_key_display(binding))
        lines = [(" ".join(k for a in actions for k in keys.pop(a, ())), text) for actions, text in HELP]
        return lines + [(" ".join(k), action) for action, k in keys.items()]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_lines()))


def run_tui(source: Source, exit_on: tuple[int, ...] = ()) -> int:
    """Run the app until q (or one of the ``exit_on`` signals: then 128 + its number); close the
    source whatever happens."""
    app = CgwatchApp(source, exit_on=exit_on)
    try:
        app.run()
    finally:
        source.close()
    return 128 + app.exit_signal if app.exit_signal else 0
