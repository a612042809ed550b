"""Modal screens: the recapture dialog and the key help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from cgwatch.engine.control import Limits, make_command
from cgwatch.errors import CgwatchError

MAX_INPUT = 2000   # characters the size list may have (a paste of 5,000 digits is cut, not parsed)

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 70; height: auto; border: thick $primary; background: $surface; padding: 1 2; }}
{name} .hint {{ color: $text-muted; width: 100%; }}
"""


class RecaptureDialog(ModalScreen[list[int] | None]):
    """Edit the capture sizes. Dismisses with the parsed sizes, or None on Esc; invalid input
    shows the error here and dismisses nothing (so nothing is sent)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="RecaptureDialog") + """
    RecaptureDialog #error { color: $error; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, sizes: list[int], limits: Limits = Limits()) -> None:
        super().__init__()
        self.sizes, self.limits = sizes, limits

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Recapture CUDA graphs with these batch sizes (comma-separated):")
            yield Input(",".join(map(str, self.sizes)), id="sizes", max_length=MAX_INPUT)
            yield Static("", id="error", markup=False)
            yield Label("Enter: recapture · Esc: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:   # the same check as the daemon's (engine/control.py), with the limits the run's header states
            sizes = make_command("recapture", event.value, self.limits).value
        except CgwatchError as e:
            self.query_one("#error", Static).update(str(e))
            return
        self.dismiss(sizes)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys: (key, what it does) pairs."""

    DEFAULT_CSS = DIALOG_CSS.format(name="HelpScreen") + """
    HelpScreen > Vertical { width: 78; max-height: 100%; padding: 0 2; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        width = max((len(key) for key, _ in keys), default=0)
        self.lines = [f"{key:>{width}}  {text}" for key, text in keys]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]cgwatch keys[/b]")
            yield Static("\n".join(self.lines))
            yield Label("Esc, ? or q closes. Commands a source cannot do are refused in the log "
                        "(a replay is read-only; a live run cannot seek).", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
