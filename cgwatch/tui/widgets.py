"""The screen's parts. Each reads a ``ViewState`` in ``show(state)``; none keeps its own data."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, RichLog, Static

from .state import LOG_LINES, ViewState

NA = "n/a"


def fmt(v: float | None, spec: str = ".1f") -> str:
    return NA if v is None else format(v, spec)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return NA
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _name(v: object) -> str:
    if isinstance(v, dict):
        v = v.get("name")
    return NA if v is None else str(v)


class HeaderBar(Widget):
    """Two lines: what runs (model, GPU, dtype, mode), then how fast and where from."""

    DEFAULT_CSS = """
    HeaderBar { height: 2; background: $panel; padding: 0 1; }
    """
    run_text = reactive("")    # model · GPU · dtype
    mode_text = reactive("")   # graph | eager | eager only: no CUDA
    rate_text = reactive("")   # steps/s, tokens/s
    conn_text = reactive("")   # the source's status text (live or replay), dropped count

    def show(self, state: ViewState) -> None:
        h = state.header
        self.run_text = f"{_name(h.get('model'))} · {_name(h.get('gpu'))} · {h.get('dtype') or NA}"
        self.mode_text = state.mode_text + (" · engine paused" if state.engine.get("paused") else "")
        steps, tokens = state.rates()
        self.rate_text = f"{fmt(steps)} steps/s · {fmt(tokens, ',.0f')} tok/s · t {state.t_last:.1f} s"
        dropped = state.status.get("dropped")
        self.conn_text = (state.status.get("text") or "") + (f" · dropped {dropped:,}" if dropped else "")

    def render(self) -> Text:
        mode_style = "bold green" if self.mode_text.startswith("graph") else "bold yellow"
        return Text.assemble(
            ("cgwatch ", "bold"), self.run_text, "  mode ", (self.mode_text, mode_style), "\n",
            self.rate_text, "   ", (self.conn_text, "italic"))


class Banner(Static):
    """Shown while the source is disconnected; the last data stays on screen below it."""

    DEFAULT_CSS = """
    Banner { height: 1; display: none; background: $error; color: $text; text-style: bold; padding: 0 1; }
    Banner.-shown { display: block; }
    """

    def show(self, state: ViewState) -> None:
        lost = not state.connected
        self.set_class(lost, "-shown")
        if lost:   # the source says why (and whether it retries); the data below is the last seen
            self.update(f"⚠ {state.status.get('text') or 'daemon lost … reconnecting'} · showing the last data",
                        layout=False)


_BLOCKS = " ▁▂▃▄▅▆▇█"


def bars(values: list[float], width: int, height: int, gaps: bool = False) -> list[str]:
    """A sparkline as ``height`` text rows, top first: values bucketed into ``width`` columns (max of
    each bucket), scaled from the smallest to the largest shown (the smallest draws as ▁). With
    ``gaps``, 0 means "no value" and stays blank. Plain text, so a redraw costs a few string joins
    instead of Textual's per-cell Sparkline rendering (the TUI's largest redraw cost)."""
    if width <= 0 or not values:
        return [" " * max(width, 0)] * height
    n = len(values)
    cols = [max(values[i * n // width:max((i + 1) * n // width, i * n // width + 1)]) for i in range(min(width, n))]
    shown = [v for v in cols if v > 0] if gaps else cols
    lo, hi = (min(shown), max(shown)) if shown else (0.0, 0.0)
    full = 8 * height
    levels = [0 if gaps and v <= 0 else
              (full // 2 if hi == lo else 1 + round((v - lo) / (hi - lo) * (full - 1))) for v in cols]
    return [("".join(_BLOCKS[min(max(lv - 8 * row, 0), 8)] for lv in levels)).ljust(width)
            for row in range(height - 1, -1, -1)]


class Charts(Static):
    """Six labelled charts of the last 200 steps / samples, drawn as one text block: one widget
    render per frame instead of twelve (per-widget cost dominates Textual's redraw)."""

    DEFAULT_CSS = """
    Charts { height: 11; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """
    # (series key, title, value format, gaps: 0 = no value here, as graph/eager share the step axis)
    SERIES = (("graph_ms", "graph ms", fmt_ms, True), ("gpu_util", "gpu util %", lambda v: fmt(v, ".0f"), False),
              ("eager_ms", "eager ms", fmt_ms, True), ("gpu_busy", "gpu busy %", lambda v: fmt(v, ".0f"), False),
              ("host_us", "launch µs", lambda v: fmt(v, ".0f"), False), ("batch", "batch", lambda v: fmt(v, ".0f"), False))
    LABEL_W, GUTTER = 19, 2
    _shown = None

    def on_mount(self) -> None:
        self.border_title = "last 200 steps / samples"

    def _chart(self, state: ViewState, key: str, title: str, fmt_value, gaps: bool, width: int) -> list[tuple]:
        values = list(state.series[key])
        real = [v for v in values if v] if gaps else values
        now = real[-1] if real else None
        top, low = (max(real), min(real)) if real else (None, None)
        labels = (f"{title:<11}{fmt_value(now):>7}", f"{'max':>11}{fmt_value(top):>7}",
                  f"{'min':>11}{fmt_value(low):>7}")
        rows = bars(values, max(width - self.LABEL_W, 0), 3, gaps)
        return [(label.ljust(self.LABEL_W), row) for label, row in zip(labels, rows)]

    def show(self, state: ViewState) -> None:
        col_w = max((self.content_size.width - self.GUTTER) // 2, self.LABEL_W)
        charts = [self._chart(state, *series, col_w) for series in self.SERIES]
        lines = []
        for left, right in zip(charts[0::2], charts[1::2]):
            for (ll, lb), (rl, rb) in zip(left, right):
                lines.append((ll, lb.ljust(col_w - self.LABEL_W) + " " * self.GUTTER, rl, rb))
        key = "\n".join("".join(parts) for parts in lines)
        if key == self._shown:   # nothing changed: no redraw
            return
        self._shown = key
        text = Text(no_wrap=True)
        for i, (ll, lb, rl, rb) in enumerate(lines):
            text.append(ll)
            text.append(lb, "#2a7fd4")
            text.append(rl)
            text.append(rb, "#2a7fd4")
            if i < len(lines) - 1:
                text.append("\n")
        self.update(text, layout=False)   # fixed size: no layout pass


COLUMNS = (("bucket", "bucket"), ("steps", "steps"), ("hits", "hits"), ("hit", "hit %"),
           ("pad", "pad waste %"), ("graph", "graph ms p50/p99"), ("eager", "eager ms p50/p99"),
           ("mib", "graph MiB"), ("cap", "capture s"), ("status", "status"))


def row_cells(r: dict) -> tuple:
    numbers = (r["label"], f"{r['steps']:,}", f"{r['hits']:,}", fmt(r["hit_pct"]),
               fmt(r["padding_waste_pct"]),
               f"{fmt_ms(r['graph_p50_ms'])}/{fmt_ms(r['graph_p99_ms'])}",
               f"{fmt_ms(r['eager_p50_ms'])}/{fmt_ms(r['eager_p99_ms'])}",
               fmt(r["graph_mib"]), fmt(r["capture_s"], ".2f"))
    return (*(Text(n, justify="right") for n in numbers),
            Text(r["status"], _status_style(r["status"])))


def _status_style(status: str) -> str:
    return ("green" if status == "ok" else "bold red" if status.startswith("failed")
            else "yellow" if status.startswith("disabled") else "dim")


class BucketTable(DataTable):
    """Per-bucket rows; cells are updated in place, the rows rebuilt only when buckets change."""

    DEFAULT_CSS = """
    BucketTable { height: auto; max-height: 16; }
    """
    can_focus = False   # the arrow keys seek, they do not move a cursor

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = True
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show(self, state: ViewState) -> None:
        rows = state.bucket_rows()
        keys = [str(r["key"]) for r in rows]
        if keys != [k.value for k in self.rows]:
            self.clear()
            for key, r in zip(keys, rows):
                self.add_row(*row_cells(r), key=key)
            return
        for key, r in zip(keys, rows):
            for (col, _), cell in zip(COLUMNS, row_cells(r)):
                if self.get_cell(key, col) != cell:
                    self.update_cell(key, col, cell)

    def row_texts(self) -> list[list[str]]:
        """The rows as plain strings (for tests)."""
        return [[str(c).strip() for c in self.get_row(k)] for k in self.rows]


class Totals(Static):
    DEFAULT_CSS = """
    Totals { height: 1; padding: 0 1; color: $text-muted; }
    """

    def show(self, state: ViewState) -> None:
        t = state.totals()
        pool = fmt(t["graph_pool_mib"]) + (" MiB" if t["graph_pool_mib"] is not None else "")
        self.update(f"graph pool {pool} · sizes {state.sizes} · {t['steps']:,} steps, "
                    f"hit {fmt(t['hit_pct'])}% · pad waste {fmt(t['padding_waste_pct'])}% · "
                    f"{t['tokens']:,} tokens", layout=False)   # one line, fixed height


class EventLog(RichLog):
    """Alerts, mode switches, recaptures, captures, marks, acks and connection changes."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 4; border: round $primary 50%; padding: 0 1; overflow-y: auto; }
    """
    can_focus = False

    def __init__(self, **kw) -> None:
        super().__init__(max_lines=LOG_LINES, wrap=False, markup=False, **kw)
        self._generation = self._seq = 0

    def on_mount(self) -> None:
        self.border_title = "events (trace time)"

    def show(self, state: ViewState) -> None:
        if state.generation != self._generation:   # a reset: start over
            self.clear()
            self._generation, self._seq = state.generation, 0
        new = min(state.log_seq - self._seq, len(state.log))
        for t, style, text in list(state.log)[len(state.log) - new:] if new > 0 else ():
            self.write(Text.assemble((f"{t:8.2f}s  ", "dim"), (text, style)))
        self._seq = state.log_seq

    def texts(self) -> list[str]:
        """The logged lines as plain text (for tests)."""
        return [strip.text.rstrip() for strip in self.lines]
