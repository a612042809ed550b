"""The per-GPU view of a tensor-parallel run (key ``G``: the app's ``-ranks`` class): one line a rank,
in place of the charts, so the screen still fits 80x24 with up to 8 ranks. Numbers: aggregate.RankStats (step time p50/p99 over
the last steps, slowest share, NVML utilization and memory, graph pool, failed captures) and the
skew between ranks. A vLLM run says that its stats are per engine, not per rank."""

from __future__ import annotations

from .state import ViewState
from .widgets import NA, TextLines, fmt, fmt_ms

HEAD = f"{'rank':>4}  {'gpu':<12}  {'step ms p50/p99':>15}  {'slow%':>5}  {'util%':>5}  {'mem GiB':>7}  " \
       f"{'pool MiB':>8}  failed"


def rank_lines(state: ViewState) -> list[str]:
    """The view as plain lines (each within 78 columns)."""
    h = state.header
    n = h.get("tensor_parallel_size") or 1
    if h.get("backend") == "vllm" and n > 1:
        return [f"{n} ranks (vLLM tensor parallel): vLLM reports its stats per engine, not per rank,",
                "so there is no per-GPU view; the rest of the screen is the whole engine's."]
    rows = state.rank_rows()
    if not rows:
        return ["one GPU: no per-rank view (run with --tensor-parallel-size N)"]
    lines = [HEAD]
    for r in rows:
        mem = r["mem_used_mib"]
        lines.append(f"{r['rank']:>4}  {str(r.get('gpu') or NA)[:12]:<12}  "
                     f"{fmt_ms(r['step_p50_ms']) + '/' + fmt_ms(r['step_p99_ms']):>15}  {fmt(r['slowest_pct'], '.0f'):>5}  "
                     f"{fmt(r['nvml_util_pct'], '.0f'):>5}  {fmt(None if mem is None else mem / 1024):>7}  "
                     f"{fmt(r['graph_pool_mib']):>8}  {','.join(map(str, r['failed'])) or '-'}")
    t = state.stats.ranks.totals()
    lines.append(f"skew (slowest - fastest rank) p50 {fmt_ms(t['skew_p50_ms'])} ms, p99 "
                 f"{fmt_ms(t['skew_p99_ms'])} ms over {t['skew_n']:,} steps")
    return [line[:78] for line in lines]


class RankPanel(TextLines):
    DEFAULT_CSS = """
    RankPanel { height: auto; max-height: 12; border: round $primary 50%; border-title-color: $text-muted;
                padding: 0 1; display: none; }
    """

    def on_mount(self) -> None:
        self.border_title = "per GPU (G: charts)"

    def show(self, state: ViewState) -> None:
        if self.app.has_class("-ranks"):
            self.set_lines([[(line, "bold" if i == 0 and line == HEAD else None)]
                            for i, line in enumerate(rank_lines(state))])
