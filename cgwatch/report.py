"""``cgwatch report PATH``: the numbers of one run, from its trace.

The numbers are ``cgwatch.aggregate.RunStats`` over the whole trace, or over a window of it (``--from``,
``--to``, ``--last``: window.windowed; ``window`` in the report names it): its module docstring defines
every field (forwards, hit %, graph share, FULL / PIECEWISE, mixed forwards, requests vs rows,
padding waste, the linearly interpolated percentiles and their n, epochs of one size list, the run's
duration, the totals), for the report, the TUI and the Prometheus metrics alike. The records go
through ``Trace.screened()`` first (records.Screen): what cannot be trusted is left out of every
number and named in one warning line. This module adds what only the report shows:

Per bucket row (one per ``RunStats`` row of each epoch, sorted by epoch, then bucket, over max last):
``epoch`` (the size list's number, 1, 2, ...), ``label`` (the capture size; the target-None row is
``>K`` with K the largest capture size of its epoch, ``eager`` if none), and from the bucket's capture
events in that epoch: graph_mib, nvml_mib, capture_s, kernels, check (from the LAST successful capture
event; pool_bytes and nvml_bytes in MiB; check is "ok <rel_err>" or "MISMATCH <rel_err>"), status
("ok"; "failed: <cause>" if the last capture event failed; "-" if never captured). ``epochs``: each
size list with its number, start t (None: the run's start), sizes and forwards.

Besides the totals, the report lists the alerts and the events that change what the numbers mean:
mode switches, recaptures, marks, padding-ratio and arrival-rate changes, pauses and engine restarts;
and for a tensor-parallel run the per-rank rows (``ranks``: aggregate.RankStats, plus each rank's
``gpu`` name from the header) and ``rank_totals`` (the skew between ranks).
Any value that cannot be computed is None ("n/a" in the text report; null in ``--json``, which is
strict JSON: no NaN or Infinity).
"""

from __future__ import annotations

import math
import textwrap

from . import records as R
from .aggregate import MIB, RunStats, gpu_idle_pct, percentile  # noqa: F401 -- re-exported
from .errors import CgwatchError
from .event_text import event_text
from .text import printable
from .trace import Trace

EVENT_KINDS = (R.EV_MODE, R.EV_RECAPTURE, R.EV_MARK, R.EV_PADDING, R.EV_RATE, R.EV_PAUSE, R.EV_RESTART)


def _check_text(check: dict | None) -> str | None:
    if not check:
        return None
    verdict = "ok" if check.get("tokens_equal") else "MISMATCH"
    err = check.get("rel_err")
    return verdict if err is None else f"{verdict} {err:.1e}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def build_report(trace: Trace) -> dict:
    """The report as a JSON-ready dict: header, epochs, buckets (rows), totals, alerts, events, warnings."""
    stats = RunStats(bucket_values=False)   # the report shows the epochs' rows: no run-long percentiles
    alerts: list[dict] = []
    events: list[dict] = []

    def collect(rec: dict) -> None:
        if rec.get("type") == R.EVENT:
            kind = rec.get("kind")
            if kind == R.EV_ALERT:
                alerts.append({"t": rec.get("t"), "level": str(rec.get("level", "warn")),
                               "message": str(rec.get("message", ""))})
            elif kind in EVENT_KINDS:
                events.append({"t": rec.get("t"), "kind": kind, "text": event_text(rec)})

    if trace.compact is not None:   # a compact trace: a column batch at a time, the same numbers (fold.py)
        from .fold import fold
        stats, screened = fold(trace, on_record=collect, bucket_values=False)
    else:
        screened = trace.screened()
        stats.add(trace.header)
        if trace.opened_window is not None:   # a window of the run (window.windowed): the state it opens under
            stats.open_window(trace.opening, trace.opened_window.lo)
        rec: dict = {}
        try:
            for rec in screened.records:  # one pass
                stats.add(rec)
                collect(rec)
            if screened.end is not None:
                stats.add(screened.end)
        except (KeyError, TypeError, ValueError) as e:   # past the screen: still one line that names the record
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise CgwatchError(f"bad {rec.get('type')} record (i={rec.get('i')}, t={rec.get('t')}): {what}") from None

    shown = stats.shown_epochs()
    buckets = []
    for epoch, b, row in stats.epoch_rows(shown):
        largest = epoch.largest_size()
        cap, ok = row.capture, row.last_ok or {}
        if cap is None:
            status = "-"
        elif cap.get("ok"):
            status = "ok"
        else:
            status = f"failed: {cap.get('cause') or cap.get('error') or 'unknown'}"
        pool, nvml = ok.get("pool_bytes"), ok.get("nvml_bytes")
        buckets.append({
            "epoch": epoch.n, "bucket": b,
            "label": str(b) if b is not None else "eager" if largest is None else f">{largest}",
            **row.summary(),
            "graph_mib": None if pool is None else pool / MIB,
            "nvml_mib": None if nvml is None else nvml / MIB,
            "capture_s": ok.get("capture_s"), "kernels": ok.get("kernels"),
            "check": _check_text(ok.get("check")),
            "status": status,
        })
    header = {k: v for k, v in trace.header.items() if k != "type"}
    warnings = trace.warnings() + ([screened.warning] if screened.warning else [])
    names = {r.get("rank"): r.get("gpu") for r in header.get("ranks") or () if isinstance(r, dict)}
    ranks = [{"gpu": names.get(r["rank"]), **r} for r in stats.ranks.rows()]
    w = trace.opened_window
    window = None if w is None else {"label": w.label(), "from": _finite(w.lo), "to": _finite(w.hi),
                                     "last": w.last}
    return {"path": trace.path, "header": header, "window": window, "epochs": [e.summary() for e in shown], "buckets": buckets,
            "totals": stats.totals(), "skipped_records": screened.skipped,
            "ranks": ranks, "rank_totals": stats.ranks.totals() if ranks else None,
            "alerts": alerts, "events": events, "warnings": warnings}


# ---- text ----

NA = "n/a"
MAX_LIST = 20  # alerts/events shown in the text report; the dict keeps all


def _f(v: float | None, fmt: str) -> str:
    return NA if v is None else format(v, fmt)


def _p(v: float | None) -> str:
    return NA if v is None else f"{v:.1f}%"


def _ms(v: float | None) -> str:
    if v is None:
        return NA
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _us(v: float | None) -> str:
    return NA if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _name(v: object) -> str:
    if isinstance(v, dict):
        v = v.get("name")
    return NA if v is None else str(v)


def _table(header: list[tuple[str, str]], rows: list[list[str]], left: set[int],
           width: int = 120) -> list[str]:
    """Aligned columns under a two-line header; columns in ``left`` are left-aligned. The last
    column is clipped so that lines fit in ``width``."""
    lines = [[h[0] for h in header], [h[1] for h in header], *rows]
    widths = [max(len(c) for c in col) for col in zip(*lines)]
    room = max(8, width - sum(w + 2 for w in widths[:-1]))
    out = []
    for cells in lines:
        cells = [*cells[:-1], _clip(cells[-1], room)]
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        out.append("  ".join(parts).rstrip())
    return out


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _buckets_text(buckets: list[int]) -> str:
    return ",".join(map(str, buckets)) if buckets else "-"


def _rank_lines(rep: dict) -> list[str]:
    """The per-rank table of a tensor-parallel run (none for one rank)."""
    h = rep["header"]
    if h.get("backend") == "vllm" and (h.get("tensor_parallel_size") or 1) > 1:
        return ["", f"ranks: {h['tensor_parallel_size']} (vLLM's stats are per engine, not per rank: "
                "no per-rank numbers)"]
    ranks = rep.get("ranks") or []
    if not ranks:
        return []
    head = [("", "rank"), ("", "gpu"), ("", "steps"), ("step ms", "p50/p99"), ("slowest", "%"),
            ("graph", "MiB"), ("util", "%"), ("mem", "MiB"), ("captured", "buckets"), ("failed", "buckets")]
    rows = [[str(r["rank"]), _clip(str(r.get("gpu") or NA), 24), f"{r['steps']:,}",
             f"{_ms(r['step_p50_ms'])}/{_ms(r['step_p99_ms'])}", _f(r["slowest_pct"], ".1f"),
             _f(r["graph_pool_mib"], ".1f"), _f(r["nvml_util_pct"], ".1f"), _f(r["mem_used_mib"], ",.0f"),
             _buckets_text(r["captured"]), _buckets_text(r["failed"])] for r in ranks]
    rt = rep["rank_totals"] or {}
    lines = ["", f"ranks ({len(ranks)}, tensor parallel):"]
    lines += ["  " + x for x in _table(head, rows, left={1, 8, 9}, width=116)]
    lines.append(f"  skew (slowest - fastest rank, per step): p50 {_ms(rt.get('skew_p50_ms'))} ms, "
                 f"p99 {_ms(rt.get('skew_p99_ms'))} ms, n {rt.get('skew_n', 0):,}")
    lines += textwrap.wrap("(step ms: each rank's step time, GPU time where measured, else host; slowest %: "
                           "the share of steps that rank took longest; the all-reduces make ranks wait for each "
                           "other, so a rank slow to launch shows the shortest time)", 116,
                           initial_indent="  ", subsequent_indent="   ")
    mism = [f"rank {r['rank']}: {_buckets_text(r['check_mismatch'])}" for r in ranks if r["check_mismatch"]]
    if mism:
        lines.append("  graph tokens differ from eager on " + "; ".join(mism))
    return lines


def format_report(rep: dict) -> str:
    """The report as plain text (no trailing newline), lines within 120 columns."""
    h, t = rep["header"], rep["totals"]
    d = t["duration_s"]
    dur = NA if d is None else f"{d:.3f} s" if d < 10 else f"{d:.1f} s"
    what = [str(x) for x in (h.get("dtype"), h.get("kernels") and f"{h['kernels']} kernels") if x]
    dtype = f" ({', '.join(what)})" if what else ""
    span = f" (window {rep['window']['label']})" if rep.get("window") else ""
    lines = [f"cgwatch report: {_name(h.get('model'))}{dtype} on {_name(h.get('gpu'))}, "
             f"torch {_name(h.get('torch'))}, {dur}{span}", ""]

    buckets = rep["buckets"]
    epochs = {e["epoch"]: e for e in rep.get("epochs") or ()}
    several = len(epochs) > 1
    name = (lambda b: f"{b['label']} (list {b['epoch']})") if several else (lambda b: b["label"])
    runtime = any(b["piecewise"] for b in buckets)           # vLLM PIECEWISE graphs: FULL / PIECEWISE apart
    phases = any(b["non_decode"] for b in buckets)           # vLLM mixed / prefill forwards
    head = [("", "bucket"), ("", "steps"),
            *([("full/pw", "/eager")] if runtime else []), *([("", "mixed")] if phases else []),
            ("hit", "%"), ("pad", "%"), ("", "n"), ("graph ms", "p50/p99"), ("", "n"),
            ("eager ms", "p50/p99"), ("launch µs", "g/e"), ("graph", "MiB"), ("cap.", "s"), ("", "kern"),
            ("", "check"), ("", "status")]
    rows = []
    for b in buckets:
        rows.append([
            b["label"], str(b["steps"]),
            *([f"{b['full']}/{b['piecewise']}/{b['eager']}"] if runtime else []),
            *([str(b["non_decode"])] if phases else []),
            _f(b["hit_pct"], ".1f"), _f(b["padding_waste_pct"], ".1f"),
            str(b["graph_n"]), f"{_ms(b['graph_p50_ms'])}/{_ms(b['graph_p99_ms'])}",
            str(b["eager_n"]), f"{_ms(b['eager_p50_ms'])}/{_ms(b['eager_p99_ms'])}",
            f"{_us(b['host_us_graph_p50'])}/{_us(b['host_us_eager_p50'])}",
            _f(b["graph_mib"], ".1f"), _f(b["capture_s"], ".2f"),
            NA if b["kernels"] is None else str(b["kernels"]),
            b["check"] or NA, b["status"]])
    if rows:
        # capture columns that say n/a on every row carry nothing (vLLM measures no per-bucket capture; a CPU run)
        optional = {i for i, h in enumerate(head) if h in (("graph", "MiB"), ("cap.", "s"), ("", "kern"),
                                                            ("", "check"))}
        keep = [i for i in range(len(head)) if i not in optional or any(r[i] != NA for r in rows)]
        head, rows = [head[i] for i in keep], [[r[i] for i in keep] for r in rows]
        table = _table(head, rows, left={i for i, h in enumerate(head) if h in (("", "check"), ("", "status"))})
        lines += table[:2]
        for k, (b, line) in enumerate(zip(buckets, table[2:])):
            if several and (k == 0 or buckets[k - 1]["epoch"] != b["epoch"]):
                lines.append(_epoch_line(epochs[b["epoch"]]))
            lines.append(line)
        shown = set(head)
        notes = [*(["size list: the capture sizes in force; a recapture starts the next, and its rows count "
                    "apart"] if several else []),
                 "hit %: graph-served share of the graph-mode steps (all but eager_mode and no_cuda)",
                 "pad %: padded share of the rows graphs computed", "n: steps in the percentiles",
                 "launch µs: host p50, graph/eager" + (   # no CUDA: ops run synchronously, nothing is queued
                     " (no CUDA here: the host waits for every op, so it is the whole step)"
                     if any(R.REASON_NO_CUDA in b["misses"] for b in buckets) else ""),
                 *(["cap. s: capture time"] if ("cap.", "s") in shown else []),
                 *(["kern: kernels/graph"] if ("", "kern") in shown else []),
                 *(["full/pw/eager: steps a FULL graph / a PIECEWISE graph / no graph served"] if runtime else []),
                 *(["mixed: steps with prompt tokens (mixed or prefill)"] if phases else [])]
        lines += textwrap.wrap("(" + "; ".join(notes) + ")", 118, subsequent_indent=" ")
    else:
        lines.append("(no buckets: no steps, no captures)")

    failed = [b for b in rep["buckets"] if b["status"].startswith("failed")]
    misses = [b for b in rep["buckets"] if b["misses"]]
    if failed:
        lines += ["", "failed captures:"]
        lines += [f"  {name(b)}: {b['status'][len('failed: '):]}" for b in failed]
    if misses:
        lines += ["", "eager steps by reason:"]
        lines += [f"  {name(b)}: " + ", ".join(f"{r} {n}" for r, n in b["misses"].items())
                  for b in misses]

    tps = _f(t["tokens_per_s"], ",.1f")
    lines += ["", "totals:",
              f"  steps            {t['steps']:,} ({t['graph_steps']:,} by a graph: hit {_p(t['hit_pct'])} of the "
              f"graph-mode steps, graph share {_p(t['graph_share_pct'])} of all)",
              *([f"  runtime mode     FULL {t['full']:,} ({_p(t['full_pct'])}), PIECEWISE {t['piecewise']:,} "
                 f"({_p(t['piecewise_pct'])}), eager {t['eager']:,}"] if runtime else []),
              *([f"  phase            decode {t['decode']:,}, mixed {t['mixed']:,}, prefill {t['prefill']:,}"]
                if phases else []),
              *([f"  rows             {t['rows']:,} computed for {t['requests']:,} requests "
                 f"({t['prompt_tokens']:,} prompt tokens)"] if t["rows"] != t["requests"] else []),
              f"  tokens           {t['tokens']:,} in {dur} ({'the window, its start to its last record' if span else 'the run, start to end'}) = {tps} tok/s",
              f"  gpu busy         {_p(t['gpu_busy_pct'])} (CUDA events), "
              f"{_p(t['nvml_util_pct'])} (NVML utilization)",
              f"  graph pool       {_f(t['graph_pool_mib'], '.1f')}{'' if t['graph_pool_mib'] is None else ' MiB'}",
              f"  padding waste    {_p(t['padding_waste_pct'])}",
              *([f"  gpu idle         {_p(t.get('gpu_idle_graph_pct'))} in graph, {_p(t.get('gpu_idle_eager_pct'))} "
                 "in eager (GPU waiting for the host between back-to-back steps)"]
                if t.get("gpu_idle_graph_pct") is not None or t.get("gpu_idle_eager_pct") is not None else []),
              f"  prefills         {t['prefills']:,} ({t['prefill_tokens']:,} tokens)",
              f"  mode switches    {t['mode_switches']}, recaptures {t['recaptures']}"
              + (f" ({t['epochs']} size lists)" if several else "")]

    lines += _rank_lines(rep)
    for title, items, fmt in (
            ("alerts", rep["alerts"], lambda a: f"{a['level'].upper():5}  {a['message']}"),
            ("events", rep["events"], lambda e: e["text"])):
        if items:
            lines += ["", f"{title}:"]
            lines += [f"  {_f(x['t'], '10.3f')}s  " + _clip(printable(fmt(x)), 100) for x in items[:MAX_LIST]]
            if len(items) > MAX_LIST:
                lines.append(f"  ... {len(items) - MAX_LIST} more")
    if rep["warnings"]:
        lines += [""] + [f"warning: {w}" for w in rep["warnings"]]
    return "\n".join(lines)


def _epoch_line(e: dict) -> str:
    start = "from the start" if e["t"] is None else f"from {e['t']:.3f} s"
    sizes = "sizes not known" if e["sizes"] is None else ",".join(map(str, e["sizes"]))
    return f"size list {e['epoch']} ({start}, {e['forwards']:,} steps): {sizes}"
