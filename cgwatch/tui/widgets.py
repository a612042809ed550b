"""The screen's parts. Each reads a ``ViewState`` in ``show(state)``; none keeps its own data."""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import RichLog, Static

from cgwatch.text import printable

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


Span = tuple[str, str | None]   # text and a Rich style string (None: the widget's own style)


class TextLines(Widget):
    """A fixed block of styled lines drawn through Textual's line API (``render_line``).

    ``set_lines`` turns each line's spans into a ``Strip`` of Rich segments and refreshes only the
    lines that changed, so a redraw skips Textual's Content parse / wrap / format of the whole
    block, the largest per-frame cost left once the charts were plain text (probes/bench_tui_cpu.py).
    Lines are not wrapped: what does not fit is cut at the widget's width."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._lines: tuple[tuple[Span, ...], ...] = ()
        self._strips: list[Strip] = []
        self._drawn: dict[int, tuple[int, Style, Strip]] = {}   # y -> (width, base style, strip drawn)

    def set_lines(self, lines: list[list[Span]]) -> None:
        new = tuple(tuple(line) for line in lines)
        old = self._lines
        if new == old:
            return
        self._lines = new
        self._strips = [Strip([Segment(t, _style(st)) for t, st in line if t]) for line in new]
        if len(new) != len(old):
            self._drawn = {}
            self.refresh(layout=True)   # the height follows the line count
            return
        width = self.content_size.width   # refresh regions are relative to the content area
        changed = [y for y, (a, b) in enumerate(zip(old, new)) if a != b]
        for y in changed:
            self._drawn.pop(y, None)
        self.refresh(*(Region(0, y, width, 1) for y in changed))   # one call: one style-cache reset

    def plain_lines(self) -> list[str]:
        """The lines as plain text (for tests)."""
        return ["".join(t for t, _ in line) for line in self._lines]

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines)

    def render_line(self, y: int) -> Strip:
        width, base = self.content_size.width, self.rich_style
        drawn = self._drawn.get(y)
        if drawn is not None and drawn[0] == width and drawn[1] == base:
            return drawn[2]
        strip = (self._strips[y].crop_extend(0, width, base).apply_style(base) if y < len(self._strips)
                 else Strip.blank(width, base))
        self._drawn[y] = (width, base, strip)
        return strip


@lru_cache(maxsize=256)
def _style(spec: str | None) -> Style | None:
    return None if spec is None else Style.parse(spec)


class HeaderBar(TextLines):
    """Two lines: what runs (model, GPU, dtype, mode), then how fast and where from."""

    DEFAULT_CSS = """
    HeaderBar { height: 2; background: $panel; padding: 0 1; }
    """
    run_text = mode_text = rate_text = conn_text = ""

    def show(self, state: ViewState) -> None:
        h = state.header
        self.run_text = f"{_name(h.get('model'))} · {_name(h.get('gpu'))} · {h.get('dtype') or NA}"
        self.mode_text = state.mode_text + (" · engine paused" if state.engine.get("paused") else "")
        steps, tokens = state.rates()
        self.rate_text = f"{fmt(steps)} steps/s · {fmt(tokens, ',.0f')} tok/s · t {state.t_last:.1f} s"
        dropped = state.status.get("dropped")
        text = state.status.get("text") or ""
        read_only = " · read-only" if state.read_only and "read-only" not in text else ""
        self.conn_text = printable(text) + read_only + (f" · dropped {dropped:,}" if dropped else "")
        mode_style = "bold green" if self.mode_text.startswith("graph") else "bold yellow"
        self.set_lines([[("cgwatch ", "bold"), (self.run_text, None), ("  mode ", None),
                         (self.mode_text, mode_style)],
                        [(self.rate_text, None), ("   ", None), (self.conn_text, "italic")]])


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
            text = printable(state.status.get("text") or "daemon lost … reconnecting")
            self.update(f"⚠ {text} · showing the last data", layout=False)


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
    levels = "".join(chr(0 if gaps and v <= 0 else
                         (full // 2 if hi == lo else 1 + round((v - lo) / (hi - lo) * (full - 1))))
                     for v in cols)
    return [levels.translate(_row_glyphs(row)).ljust(width) for row in range(height - 1, -1, -1)]


@lru_cache(maxsize=16)
def _row_glyphs(row: int) -> dict[int, str]:
    """str.translate table: a level (0..64, in eighths of a row) to the glyph of text row ``row``."""
    return {lv: _BLOCKS[min(max(lv - 8 * row, 0), 8)] for lv in range(65)}


class Charts(TextLines):
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

    _state: ViewState | None = None

    def on_resize(self) -> None:
        """The bars fill the width: redraw at the new one (also the first layout, after the first show)."""
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        col_w = max((self.content_size.width - self.GUTTER) // 2, self.LABEL_W)
        charts = [self._chart(state, *series, col_w) for series in self.SERIES]
        lines = []
        for left, right in zip(charts[0::2], charts[1::2]):
            for (ll, lb), (rl, rb) in zip(left, right):
                lines.append((ll, lb.ljust(col_w - self.LABEL_W) + " " * self.GUTTER, rl, rb))
        self.set_lines([[(ll, None), (lb, "#2a7fd4"), (rl, None), (rb, "#2a7fd4")] for ll, lb, rl, rb in lines])


# two header lines, as in ``cgwatch report``: the columns stay as narrow as their numbers
COLUMNS = (("", "bucket"), ("", "steps"), ("", "hits"), ("hit", "%"), ("pad", "waste %"),
           ("graph ms", "p50/p99"), ("eager ms", "p50/p99"), ("gpu idle", "µs g/e"), ("graph", "MiB"),
           ("capture", "s"), ("", "status"))
# with vLLM's PIECEWISE graphs the hits column splits FULL / PIECEWISE; with mixed forwards a column counts them
HITS_SPLIT = ("hits", "full/pw")
MIXED = ("", "mixed")


def columns(runtime: bool = False, phases: bool = False) -> tuple[tuple[str, str], ...]:
    cols = list(COLUMNS)
    if runtime:
        cols[2] = HITS_SPLIT
    if phases:
        cols.insert(3, MIXED)
    return tuple(cols)


def row_cells(r: dict, runtime: bool = False, phases: bool = False) -> tuple[str, ...]:
    hits = f"{r['full']:,}/{r['piecewise']:,}" if runtime else f"{r['hits']:,}"
    return (r["label"], f"{r['steps']:,}", hits, *((f"{r['non_decode']:,}",) if phases else ()),
            fmt(r["hit_pct"]), fmt(r["padding_waste_pct"]),
            f"{fmt_ms(r['graph_p50_ms'])}/{fmt_ms(r['graph_p99_ms'])}",
            f"{fmt_ms(r['eager_p50_ms'])}/{fmt_ms(r['eager_p99_ms'])}",
            f"{fmt(r['gap_us_graph_p50'], '.0f')}/{fmt(r['gap_us_eager_p50'], '.0f')}",
            fmt(r["graph_mib"]), fmt(r["capture_s"], ".2f"), r["status"])


def _status_style(status: str) -> str:
    return ("green" if status == "ok" else "bold red" if status.startswith("failed")
            else "yellow" if status.startswith("disabled") else "dim")


class BucketTable(TextLines):
    """Per-bucket rows: numbers right-aligned, status coloured, every other row shaded."""

    DEFAULT_CSS = """
    BucketTable { height: auto; max-height: 16; padding: 0 1; }
    """
    GAP = "  "
    SHADE = "on #1f2630"
    _rows: list[tuple[str, ...]] = []

    def show(self, state: ViewState) -> None:
        runtime, phases = state.stats.shows_runtime_modes(), state.stats.shows_phases()
        rows = self._rows = [row_cells(r, runtime, phases) for r in state.bucket_rows()]
        heads = [tuple(h[k] for h in columns(runtime, phases)) for k in (0, 1)]
        widths = [max(len(c) for c in col) for col in zip(*heads, *rows)]
        lines = [[(self._line(head, widths), "bold")] for head in heads]
        for i, cells in enumerate(rows):
            shade = self.SHADE if i % 2 else None
            status_style = _status_style(cells[-1]) + (" " + shade if shade else "")
            lines.append([(self._line(cells[:-1], widths) + self.GAP, shade),
                          (cells[-1].ljust(widths[-1]), status_style)])
        self.set_lines(lines)

    def _line(self, cells, widths) -> str:
        """Cells right-aligned to the column widths; the status column (the last) left-aligned."""
        out = [c.rjust(w) for c, w in zip(cells, widths)]
        if len(cells) == len(widths):
            out[-1] = cells[-1].ljust(widths[-1])
        return self.GAP.join(out)

    def row_texts(self) -> list[list[str]]:
        """The rows as plain strings (for tests)."""
        return [list(r) for r in self._rows]


class Totals(Static):
    """Two lines: the graphs (pool, sizes, padding waste, GPU idle), then the steps (hit %, graph share,
    and where present the FULL / PIECEWISE split, mixed steps, rows vs requests). Definitions:
    cgwatch/aggregate.py."""

    DEFAULT_CSS = """
    Totals { height: 2; padding: 0 1; color: $text-muted; }
    """

    def show(self, state: ViewState) -> None:
        t = state.totals()
        pool = fmt(t["graph_pool_mib"]) + (" MiB" if t["graph_pool_mib"] is not None else "")
        pct = (lambda v: NA if v is None else f"{v:.1f}%")
        g, e = t["gpu_idle_graph_pct"], t["gpu_idle_eager_pct"]
        idle = "" if g is None and e is None else (   # none: a CPU run, or a trace from before the field
            f" · gpu idle g/e {NA if g is None else f'{g:.1f}'}/{pct(e)}")
        # each line within 120 columns for 7 sizes (tokens: the header has tok/s)
        first = f"pool {pool} · sizes {state.sizes} · pad waste {pct(t['padding_waste_pct'])}{idle}"
        second = f"{t['steps']:,} steps · hit {pct(t['hit_pct'])} of graph mode · graph share {pct(t['graph_share_pct'])}"
        if t["shows_runtime_modes"]:
            second += f" · full {pct(t['full_pct'])} pw {pct(t['piecewise_pct'])}"
        if t["shows_phases"]:
            second += f" · mixed {t['non_decode']:,}"
        if t["shows_rows"]:
            second += f" · rows/req {t['rows'] / t['requests']:.2f}" if t["requests"] else ""
        self.update(f"{first}\n{second}", layout=False)


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
