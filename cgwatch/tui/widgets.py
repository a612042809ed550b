"""The screen's parts. Each reads a ``ViewState`` in ``show(state)``; none keeps its own data."""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.message import Message
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
Chunk = list[Span]              # spans that stay on one line


def pack(chunks: list[Chunk], width: int) -> list[list[Span]]:
    """Chunks laid out left to right, a new line where the next chunk would not fit ``width`` (0: one
    line). Leading spaces of a chunk that starts a line are dropped. A chunk wider than the line is cut
    by the widget."""
    lines: list[list[Span]] = [[]]
    used = 0
    for chunk in chunks:
        n = sum(len(t) for t, _ in chunk)
        if width > 0 and used and used + n > width:
            lead = len(chunk[0][0]) - len(chunk[0][0].lstrip(" "))
            chunk = [(chunk[0][0][lead:], chunk[0][1]), *chunk[1:]]
            n -= lead
            lines.append([])
            used = 0
        lines[-1].extend(chunk)
        used += n
    return lines


def fit(v: float | None, fmt_value, width: int = 6) -> str:
    """``fmt_value(v)``, or a shorter form with k / M / G when it is wider than ``width`` (a chart label
    has room for 6 characters: 1791054 µs reads 1.79M, not a number run into its label)."""
    text = fmt_value(v)
    if v is None or len(text) <= width:
        return text
    for div, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        short = f"{v / div:.3g}{suffix}"
        if len(short) <= width and abs(v) < div * 1000:
            return short
    return text


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
    """What runs (model, GPU, dtype, mode and kernels), then how fast and where from: two lines, or three on a
    narrow screen (the parts wrap whole, so the replay position, "paused" and "end of trace" stay)."""

    DEFAULT_CSS = """
    HeaderBar { height: auto; background: $panel; padding: 0 1; }
    """
    run_text = mode_text = rate_text = conn_text = ""
    _state: ViewState | None = None

    def on_resize(self) -> None:
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        h = state.header
        tp = h.get("tensor_parallel_size")
        ranks = f" ×{tp}" if isinstance(tp, int) and tp > 1 else ""   # tensor parallel: G shows each GPU
        self.run_text = f"{_name(h.get('model'))} · {_name(h.get('gpu'))}{ranks} · {h.get('dtype') or NA}"
        paused = " · engine paused" if state.engine.get("paused") else ""
        kernels = state.kernels
        # "· fused kernels", or "· fused" where the long form would push the mode to a line of its own
        long = f" · {kernels} kernels" if kernels else ""
        short = f" · {kernels}" if kernels else ""
        width = self.content_size.width
        room = width - len("cgwatch ") - len(self.run_text) - len("  mode ") - len(state.mode_text + paused)
        kern = long if not width or len(long) <= room else short
        self.mode_text = state.mode_text + kern + paused
        ended = state.ended_text
        if ended:   # no live rates once the run is over: what it averaged
            t = state.totals()
            dur, steps, tokens = t["duration_s"], t["steps"], t["tokens"]
            avg = (f" · avg {steps / dur:.1f} steps/s · {tokens / dur:,.0f} tok/s over {dur:.1f} s"
                   if dur else "")
            self.rate_text = f"{ended}{avg}"
        else:
            steps, tokens = state.rates()
            self.rate_text = f"{fmt(steps)} steps/s · {fmt(tokens, ',.0f')} tok/s · t {state.t_last:.1f} s"
        dropped = state.status.get("dropped")
        text = state.status.get("text") or ""
        read_only = " · read-only" if state.read_only and "read-only" not in text else ""
        if not state.connected:   # the banner below has the whole reason, wrapped
            text = "disconnected"
        self.conn_text = printable(text) + read_only + (f" · dropped {dropped:,}" if dropped else "")
        mode_style = "bold green" if self.mode_text.startswith("graph") else "bold yellow"
        rate_style = "bold" if ended else None
        self.set_lines(pack([[("cgwatch ", "bold"), (self.run_text, None)],
                             [("  mode ", None), (state.mode_text, mode_style), (kern, None),
                              (paused, mode_style)]], width)
                       + pack([[(self.rate_text, rate_style)], [("   ", None), (self.conn_text, "italic")]], width))


class Banner(Static):
    """Shown while the source is disconnected; the last data stays on screen below it. Its text wraps:
    the reason is never cut."""

    DEFAULT_CSS = """
    Banner { height: auto; display: none; background: $error; color: $text; text-style: bold; padding: 0 1; }
    Banner.-shown { display: block; }
    """
    _text = ""

    def show(self, state: ViewState) -> None:
        lost = not state.connected
        self.set_class(lost, "-shown")
        if lost:   # the source says why (and whether it retries); the data below is the last seen
            text = printable(state.status.get("text") or "daemon lost … reconnecting")
            if text != self._text:
                self._text = text
                self.update(f"⚠ {text} · showing the last data")   # its height follows the wrapped text


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
    render per frame instead of twelve (per-widget cost dominates Textual's redraw). ``compact``: one
    row per chart, the current value only (the 80x24 layout; its charts pane shows the full block)."""

    DEFAULT_CSS = """
    Charts { height: 11; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """
    # (series key, title, value format, gaps: 0 = no value here, as graph/eager share the step axis)
    SERIES = (("graph_ms", "graph ms", fmt_ms, True), ("gpu_util", "gpu util %", lambda v: fmt(v, ".0f"), False),
              ("eager_ms", "eager ms", fmt_ms, True), ("gpu_busy", "gpu busy %", lambda v: fmt(v, ".0f"), False),
              ("host_us", "launch µs", lambda v: fmt(v, ".0f"), False), ("batch", "batch", lambda v: fmt(v, ".0f"), False))
    LABEL_W, GUTTER = 19, 2
    TITLE = "last 200 steps / samples"
    # without CUDA ops run synchronously: the host's "launch" time is the whole step
    NO_CUDA_TITLES = {"host_us": "step µs"}
    NO_CUDA_NOTE = " · no CUDA: step µs = host time of the whole step (ops run synchronously)"
    compact = False

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def _chart(self, state: ViewState, key: str, title: str, fmt_value, gaps: bool, width: int) -> list[tuple]:
        values = list(state.series[key])
        real = [v for v in values if v] if gaps else values
        now = real[-1] if real else None
        top, low = (max(real), min(real)) if real else (None, None)
        if state.no_cuda:
            title = self.NO_CUDA_TITLES.get(key, title)
        if self.compact:
            label = f"{title:<11}{fit(now, fmt_value):>6} "
            return [(label, bars(values, max(width - len(label), 0), 1, gaps)[0])]
        labels = (f"{title:<11}{fit(now, fmt_value):>7}", f"{'max':>11}{fit(top, fmt_value):>7}",
                  f"{'min':>11}{fit(low, fmt_value):>7}")
        rows = bars(values, max(width - self.LABEL_W, 0), 3, gaps)
        return [(label.ljust(self.LABEL_W), row) for label, row in zip(labels, rows)]

    _state: ViewState | None = None

    def on_resize(self) -> None:
        """The bars fill the width: redraw at the new one (also the first layout, after the first show)."""
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        self.border_title = self.TITLE + (self.NO_CUDA_NOTE if state.no_cuda else "")
        col_w = max((self.content_size.width - self.GUTTER) // 2, self.LABEL_W)
        charts = [self._chart(state, *series, col_w) for series in self.SERIES]
        lines = []
        for left, right in zip(charts[0::2], charts[1::2]):
            for (ll, lb), (rl, rb) in zip(left, right):
                lines.append((ll, lb.ljust(col_w - len(ll)) + " " * self.GUTTER, rl, rb))
        self.set_lines([[(ll, None), (lb, "#2a7fd4"), (rl, None), (rb, "#2a7fd4")] for ll, lb, rl, rb in lines])


# two header lines, as in ``cgwatch report``: the columns stay as narrow as their numbers
COLUMNS = (("", "bucket"), ("", "steps"), ("", "hits"), ("hit", "%"), ("pad", "waste %"),
           ("graph ms", "p50/p99"), ("eager ms", "p50/p99"), ("gpu idle", "µs g/e"), ("graph", "MiB"),
           ("capture", "s"), ("", "status"))
# with vLLM's PIECEWISE graphs the hits column splits FULL / PIECEWISE; with mixed forwards a column counts them;
# where the engine measured the kernels' compile time in a capture (its share of capture s) a column shows it
HITS_SPLIT = ("hits", "full/pw")
MIXED = ("", "mixed")
COMPILE = ("compile", "s")


def columns(runtime: bool = False, phases: bool = False, compiled: bool = False) -> tuple[tuple[str, str], ...]:
    cols = list(COLUMNS)
    if runtime:
        cols[2] = HITS_SPLIT
    if phases:
        cols.insert(3, MIXED)
    if compiled:
        cols.insert(len(cols) - 1, COMPILE)   # after capture s, before the status
    return tuple(cols)


def row_cells(r: dict, runtime: bool = False, phases: bool = False, compiled: bool = False) -> tuple[str, ...]:
    hits = f"{r['full']:,}/{r['piecewise']:,}" if runtime else f"{r['hits']:,}"
    return (r["label"], f"{r['steps']:,}", hits, *((f"{r['non_decode']:,}",) if phases else ()),
            fmt(r["hit_pct"]), fmt(r["padding_waste_pct"]),
            f"{fmt_ms(r['graph_p50_ms'])}/{fmt_ms(r['graph_p99_ms'])}",
            f"{fmt_ms(r['eager_p50_ms'])}/{fmt_ms(r['eager_p99_ms'])}",
            f"{fmt(r['gap_us_graph_p50'], '.0f')}/{fmt(r['gap_us_eager_p50'], '.0f')}",
            fmt(r["graph_mib"]), fmt(r["capture_s"], ".2f"),
            *((fmt(r["compile_s"], ".2f"),) if compiled else ()), r["status"])


def _status_style(status: str) -> str:
    return ("green" if status == "ok" else "bold red" if status.startswith("failed")
            else "yellow" if status.startswith("disabled") else "dim")


class BucketTable(TextLines):
    """Per-bucket rows: numbers right-aligned, status coloured, every other row shaded. The two
    header lines stay put; rows that do not fit scroll (``scroll``; a last line says which rows show).
    ``part`` None: every column; 0 / 1: the columns of the 80x24 layout's buckets / graphs pane
    (each keeps the bucket column)."""

    DEFAULT_CSS = """
    BucketTable { height: auto; max-height: 16; padding: 0 1; }
    """
    GAP = "  "
    SHADE = "on #1f2630"
    MAX_ROWS = 14   # max-height 16 less the two header lines (the full layout's height is auto)
    # the columns of each part (by header, second line: "s" is capture s and compile s), the bucket column in both
    PARTS = (("bucket", "steps", "hits", "full/pw", "mixed", "%", "waste %", "p50/p99"),
             ("bucket", "µs g/e", "MiB", "s", "status"))
    class RowsShown(Message):
        """The rows shown changed (a scroll, new rows, a new height): the pane bar says which."""

    _rows: list[tuple[str, ...]] = []
    part: int | None = None
    offset = 0          # first row shown
    shown = (0, 0, 0)   # (first, last, of): rows shown, 1-based, and the row count
    _state: ViewState | None = None

    def on_resize(self) -> None:
        if self._state is not None:
            self.show(self._state)

    def scroll(self, rows: int) -> None:
        """Move the rows shown by ``rows`` (clamped at the ends; the header lines stay)."""
        self.offset = max(self.offset + rows, 0)
        if self._state is not None:
            self.show(self._state)

    def _room(self) -> int:
        """Rows that fit under the header lines: the layout's height when it sets one (1fr), else MAX_ROWS."""
        if self.styles.height is not None and not self.styles.height.is_auto and self.content_size.height:
            return max(self.content_size.height - 2, 1)
        return self.MAX_ROWS

    def show(self, state: ViewState) -> None:
        self._state = state
        runtime, phases = state.stats.shows_runtime_modes(), state.stats.shows_phases()
        dicts = state.bucket_rows()
        compiled = any(r["compile_s"] is not None for r in dicts)
        rows = self._rows = [row_cells(r, runtime, phases, compiled) for r in dicts]
        cols = columns(runtime, phases, compiled)
        keep = list(range(len(cols))) if self.part is None else [
            k for k, (_, second) in enumerate(cols) if second in self.PARTS[self.part]]
        heads = [tuple(cols[k][line] for k in keep) for line in (0, 1)]
        cut = [tuple(r[k] for k in keep) for r in rows]
        status = keep[-1] == len(cols) - 1   # the status column is left-aligned and coloured
        widths = [max(len(c) for c in col) for col in zip(*heads, *cut)]
        lines = [[(self._line(head, widths, status), "bold")] for head in heads]
        room, n = self._room(), len(cut)
        if n > room:   # one line says which rows show and how to see the others
            room = max(room - 1, 1)
        self.offset = min(self.offset, max(n - room, 0))
        first, last = self.offset, min(self.offset + room, n)
        for i in range(first, last):
            cells = cut[i]
            shade = self.SHADE if i % 2 else None
            if status:
                status_style = _status_style(cells[-1]) + (" " + shade if shade else "")
                lines.append([(self._line(cells[:-1], widths, status) + self.GAP, shade),
                              (cells[-1].ljust(widths[-1]), status_style)])
            else:
                lines.append([(self._line(cells, widths, status), shade)])
        shown, self.shown = self.shown, (first + 1 if n else 0, last, n)
        if shown != self.shown:
            self.post_message(self.RowsShown())
        if last - first < n:
            lines.append([(f"rows {first + 1}-{last} of {n} · ↑ ↓ PgUp PgDn scroll", "italic")])
        self.set_lines(lines)

    def _line(self, cells, widths, status: bool = True) -> str:
        """Cells right-aligned to the column widths; the status column (the last) left-aligned."""
        out = [c.rjust(w) for c, w in zip(cells, widths)]
        if status and len(cells) == len(widths):
            out[-1] = cells[-1].ljust(widths[-1])
        return self.GAP.join(out)

    def row_texts(self) -> list[list[str]]:
        """The rows as plain strings, every row and column (for tests)."""
        return [list(r) for r in self._rows]


class Totals(Static):
    """Two lines: the graphs (pool, sizes, padding waste, GPU idle), then the steps (hit %, graph share,
    and where present the FULL / PIECEWISE split, mixed steps, rows vs requests); on a narrow screen
    each wraps between its parts. Definitions: cgwatch/aggregate.py."""

    DEFAULT_CSS = """
    Totals { height: auto; padding: 0 1; color: $text-muted; }
    """
    _state: ViewState | None = None

    def on_resize(self) -> None:
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        t = state.totals()
        pool = fmt(t["graph_pool_mib"]) + (" MiB" if t["graph_pool_mib"] is not None else "")
        pct = (lambda v: NA if v is None else f"{v:.1f}%")
        g, e = t["gpu_idle_graph_pct"], t["gpu_idle_eager_pct"]
        # each line within 120 columns for 7 sizes (tokens: the header has tok/s)
        first = [f"pool {pool}", f"sizes {state.sizes}", f"pad waste {pct(t['padding_waste_pct'])}"]
        if g is not None or e is not None:   # none: a CPU run, or a trace from before the field
            first.append(f"gpu idle g/e {NA if g is None else f'{g:.1f}'}/{pct(e)}")
        second = [f"{t['steps']:,} steps", f"hit {pct(t['hit_pct'])} of graph mode",
                  f"graph share {pct(t['graph_share_pct'])}"]
        if t["shows_runtime_modes"]:
            second.append(f"full {pct(t['full_pct'])} pw {pct(t['piecewise_pct'])}")
        if t["shows_phases"]:
            second.append(f"mixed {t['non_decode']:,}")
        if t["shows_rows"] and t["requests"]:
            second.append(f"rows/req {t['rows'] / t['requests']:.2f}")
        width = self.content_size.width
        lines = []
        for parts in (first, second):
            chunks = [[((" · " if k else "") + part, None)] for k, part in enumerate(parts)]
            lines += ["".join(text for text, _ in line).removeprefix("· ") for line in pack(chunks, width)]
        self.update("\n".join(lines), layout=len(lines) != getattr(self, "_n_lines", 2))
        self._n_lines = len(lines)


class EventLog(RichLog):
    """Alerts, mode switches, recaptures, captures, marks, acks and connection changes. Long lines wrap
    (at the width when they arrive), so a refusal's reason is never cut. At its end it follows new lines;
    scrolled back, it stays put (the border says so) until it is at the end again (End)."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 4; border: round $primary 50%; padding: 0 1; overflow-y: auto;
               overflow-x: hidden; scrollbar-gutter: stable; }   /* lines wrap at the width left of the scrollbar */
    """
    can_focus = False

    def __init__(self, **kw) -> None:
        super().__init__(max_lines=LOG_LINES, wrap=True, markup=False, min_width=1, **kw)
        self._generation = self._seq = 0

    def on_mount(self) -> None:
        self.border_title = "events (trace time)"

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow(new >= self.max_scroll_y)

    def _follow(self, on: bool) -> None:
        self.auto_scroll = on
        self.border_subtitle = "" if on else "scrolled back · End follows"

    def to_edge(self, end: bool) -> None:
        """Home / End: to the top, or to the end and follow new lines again; hidden too (force: a hidden
        widget's scrollbars are off, and Textual would not scroll it)."""
        if end:
            self.scroll_end(animate=False, immediate=True, force=True)
        else:
            self.scroll_home(animate=False, immediate=True, force=True)
        self._follow(end or self.max_scroll_y == 0)

    _state: ViewState | None = None
    _width = 0

    def on_resize(self, event) -> None:
        super().on_resize(event)           # the size is known from here: write what waited for it
        if self._state is not None:
            self.show(self._state)

    def on_show(self) -> None:   # a pane shown again (Textual before 8 sends it no Resize)
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        if state.generation != self._generation:   # a reset: start over
            self.clear()
            self._generation, self._seq = state.generation, 0
        if self.size.width and not self._size_known:
            self._size_known = True   # a pane shown again: Textual before 8 sends no Resize for it (and
                                      # nothing was deferred: lines are written here only once it has a size)
        if not self._size_known:   # lines wait for the width to wrap at (Rich would take its console's)
            return
        new = min(state.log_seq - self._seq, len(state.log))
        self._width = self.scrollable_content_region.width or self._width   # hidden (a pane): the last width
        for t, style, text in list(state.log)[len(state.log) - new:] if new > 0 else ():
            self.write(Text.assemble((f"{t:8.2f}s  ", "dim"), (text, style)), width=self._width or None,
                       scroll_end=False)
        self._seq = state.log_seq
        if new > 0 and self.auto_scroll:   # forced: RichLog's own scroll is lost on a pane just shown
            self.scroll_end(animate=False, immediate=False, force=True)

    def texts(self) -> list[str]:
        """The logged lines as plain text (for tests)."""
        return [strip.text.rstrip() for strip in self.lines]


PANES = ("buckets", "graphs", "events", "charts")   # the 80x24 layout's panes, in tab order
PANE_HELP = {"buckets": "per bucket: steps, hits, hit %, padding waste, graph / eager step ms",
             "graphs": "per bucket: gpu idle between steps, graph MiB, capture s (compile s), status",
             "events": "the totals and the event log", "charts": "the six charts with their max and min"}


class PaneBar(TextLines):
    """The compact layout's pane names, the one shown highlighted (reverse video: no colour needed)."""

    DEFAULT_CSS = """
    PaneBar { height: 1; padding: 0 1; background: $panel; }
    """

    def show_pane(self, pane: str, table: BucketTable | None = None) -> None:
        spans: list[Span] = []
        for name in PANES:
            spans += [(f" {name} ", "reverse bold" if name == pane else None), (" ", None)]
        hint = " tab: next pane"
        if table is not None and pane in ("buckets", "graphs"):
            first, last, n = table.shown
            if last - first + 1 < n:
                hint = f" rows {first}-{last} of {n} (↑ ↓) · tab"
        self.set_lines([spans + [(hint, "italic")]])


class LastEvent(TextLines):
    """The compact layout's last log line (an ack, a refusal, an alert), so it shows whatever the pane."""

    DEFAULT_CSS = """
    LastEvent { height: 1; padding: 0 1; }
    """
    _state: ViewState | None = None

    def on_resize(self) -> None:   # cut to the new width (hidden, as on a too-small screen, it had none)
        if self._state is not None:
            self.show(self._state)

    def show(self, state: ViewState) -> None:
        self._state = state
        if not state.log:
            self.set_lines([[("no events yet", "dim")]])
            return
        t, style, text = state.log[-1]
        width = self.content_size.width
        head = f"{t:8.2f}s  "
        if width and len(head) + len(text) > width:
            text = text[:max(width - len(head) - 1, 0)] + "…"
        self.set_lines([[(head, "dim"), (text, style or None)]])


class TooSmall(Static):
    """Shown alone below the smallest size the screen is laid out for: one line where it fits, else a
    shorter form, wrapped (whole down to about 20 columns)."""

    DEFAULT_CSS = """
    TooSmall { display: none; height: auto; padding: 0 1; text-style: bold; }
    """

    def say(self, width: int, height: int, least: tuple[int, int]) -> None:
        text = f"cgwatch needs a terminal of at least {least[0]}x{least[1]}; this one is {width}x{height} (q quits)"
        if len(text) + 2 > width:   # the padding
            text = f"cgwatch needs {least[0]}x{least[1]} or more; this is {width}x{height}. q quits"
        self.update(text)
