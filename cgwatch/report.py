"""``cgwatch report PATH``: the numbers of one run, from its trace.

Definitions (the product's contract; docs/TRACE_FORMAT.md has the record fields):

Per bucket row -- steps are grouped by ``target`` (the smallest capture size >= batch at that
step); target None is the "over max" row, labelled ``>K`` with K the largest capture size seen
(``eager`` if none). Buckets captured but never targeted still get a row with 0 steps.
  steps              steps whose target is this bucket
  graph_steps        of those, steps a graph served (``bucket`` not None)
  hit_pct            100 * graph_steps / steps
  padding_waste_pct  100 * sum(padded) / sum(bucket) over the row's graph steps: the share of
                     rows the graphs computed that were padding
  graph_p50/p99_ms,  percentiles of records.step_ms (GPU time, else host time) of the row's
  eager_p50/p99_ms   graph / eager steps
  host_us_graph_p50, p50 of host_us (host time to launch the step) of graph / eager steps
  host_us_eager_p50
  gap_us_graph_p50,  p50 of gap_us (GPU idle before a back-to-back step) of graph / eager steps
  gap_us_eager_p50
  graph_mib, nvml_mib, capture_s, kernels, check
                     from the LAST successful capture event of the bucket (pool_bytes and
                     nvml_bytes in MiB); check is "ok <rel_err>" or "MISMATCH <rel_err>"
  status             "ok"; "failed: <cause>" if the bucket's last capture event failed; "-" if
                     it was never captured
  misses             eager steps of the row, counted by reason
Percentiles are nearest-rank: the value at rank ceil(p/100 * n) of the n sorted values (always
an observed value); None with no values.

Totals:
  duration_s         last step t - first step t + the last step's step_ms / 1000 (first/last
                     by t)
  tokens_per_s       sum of step tokens / duration_s
  gpu_busy_pct       100 * sum(gpu_ms) / (duration_s * 1000); None if no step has gpu_ms
  nvml_util_pct      mean of the non-None gpu_util of sample records
  graph_pool_mib     pool_bytes of the latest capture_done event
  padding_waste_pct  as per row, over all graph steps
  gpu_idle_graph_pct 100 * sum(gap_us) / (sum(gap_us) + sum(gpu_ms in µs)) over the graph / eager
  gpu_idle_eager_pct steps that have a gap: the share of back-to-back GPU time lost waiting for
                     the host between steps; None without gaps
  prefills, prefill_tokens, mode_switches, recaptures: counts (and prefill token sum)
Any value that cannot be computed is None ("n/a" in the text report).
"""

from __future__ import annotations

import math

from . import records as R
from .errors import CgwatchError
from .trace import Trace

MIB = 2 ** 20


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None if empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    return sorted_values[min(n, max(1, math.ceil(p * n / 100))) - 1]


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def gpu_idle_pct(acc: list[float]) -> float | None:
    """[sum of gap µs, sum of GPU step µs] of the gapped steps -> the idle share in % (the TUI too)."""
    return _pct(acc[0], acc[0] + acc[1])


class _Row:
    """Per-target accumulator for the one pass over the steps."""
    __slots__ = ("steps", "graph_steps", "padded", "computed", "graph_ms", "eager_ms",
                 "graph_host", "eager_host", "graph_gap", "eager_gap", "misses")

    def __init__(self) -> None:
        self.steps = self.graph_steps = self.padded = self.computed = 0
        self.graph_ms: list[float] = []
        self.eager_ms: list[float] = []
        self.graph_host: list[float] = []
        self.eager_host: list[float] = []
        self.graph_gap: list[float] = []
        self.eager_gap: list[float] = []
        self.misses: dict[str, int] = {}


def _check_text(check: dict | None) -> str | None:
    if not check:
        return None
    verdict = "ok" if check.get("tokens_equal") else "MISMATCH"
    err = check.get("rel_err")
    return verdict if err is None else f"{verdict} {err:.1e}"


def _event_text(ev: dict) -> str:
    for key in ("text", "message", "label"):
        if ev.get(key):
            return str(ev[key])
    return " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("type", "kind", "t"))


def build_report(trace: Trace) -> dict:
    """The report as a JSON-ready dict: header, buckets (rows), totals, alerts, events, warnings."""
    rows: dict[int | None, _Row] = {}
    last_capture: dict[int, dict] = {}   # bucket -> last capture event
    last_ok: dict[int, dict] = {}        # bucket -> last successful capture event
    sizes_seen: set[int] = set()
    alerts: list[dict] = []
    events: list[dict] = []
    n_steps = tokens = 0
    first_t = last_t = last_ms = None
    gpu_ms_sum, gpu_ms_any = 0.0, False
    util_sum, util_n = 0.0, 0
    pool_bytes = None
    prefills = prefill_tokens = mode_switches = recaptures = 0
    idle = {"graph": [0.0, 0.0], "eager": [0.0, 0.0]}   # mode -> [sum gap µs, sum gpu µs] of gapped steps

    try:
        for rec in trace.records:  # one pass
            typ = rec.get("type")
            if typ == R.STEP:
                target = rec["target"]
                row = rows.get(target)
                if row is None:
                    row = rows[target] = _Row()
                gpu_ms = rec["gpu_ms"]
                bad = R.bad_step_field(rec)
                if bad:
                    raise ValueError(bad)
                ms = gpu_ms if gpu_ms is not None else rec["host_us"] / 1000.0  # records.step_ms
                row.steps += 1
                gap = rec.get("gap_us")
                if gap is not None and gpu_ms is not None:
                    acc = idle["graph" if rec["bucket"] is not None else "eager"]
                    acc[0] += gap
                    acc[1] += gpu_ms * 1000.0
                    (row.graph_gap if rec["bucket"] is not None else row.eager_gap).append(gap)
                if rec["bucket"] is not None:
                    row.graph_steps += 1
                    row.padded += rec["padded"]
                    row.computed += rec["bucket"]
                    row.graph_ms.append(ms)
                    row.graph_host.append(rec["host_us"])
                else:
                    row.eager_ms.append(ms)
                    row.eager_host.append(rec["host_us"])
                    reason = rec.get("reason") or "unknown"
                    row.misses[reason] = row.misses.get(reason, 0) + 1
                if gpu_ms is not None:
                    gpu_ms_sum += gpu_ms
                    gpu_ms_any = True
                tokens += rec["tokens"]
                n_steps += 1
                t = rec["t"]  # steps are emitted when their GPU time is read: use min/max t
                if first_t is None or t < first_t:
                    first_t = t
                if last_t is None or t >= last_t:
                    last_t, last_ms = t, ms
            elif typ == R.SAMPLE:
                if rec.get("gpu_util") is not None:
                    util_sum += rec["gpu_util"]
                    util_n += 1
            elif typ == R.PREFILL:
                prefills += 1
                prefill_tokens += rec.get("tokens") or 0
            elif typ == R.EVENT:
                kind = rec.get("kind")
                if kind == R.EV_CAPTURE:
                    b = rec["bucket"]
                    sizes_seen.add(b)
                    last_capture[b] = rec
                    if rec.get("ok"):
                        last_ok[b] = rec
                elif kind == R.EV_CAPTURE_DONE:
                    sizes_seen.update(rec.get("sizes") or (), rec.get("failed") or ())
                    pool_bytes = rec.get("pool_bytes")
                elif kind == R.EV_ALERT:
                    alerts.append({"t": rec.get("t"), "level": rec.get("level", "warn"),
                                   "message": rec.get("message", "")})
                elif kind in (R.EV_MODE, R.EV_RECAPTURE, R.EV_MARK):
                    mode_switches += kind == R.EV_MODE
                    recaptures += kind == R.EV_RECAPTURE
                    events.append({"t": rec.get("t"), "kind": kind, "text": _event_text(rec)})
    except (KeyError, TypeError, ValueError) as e:   # a hand-edited or corrupt record: say which
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CgwatchError(f"bad {rec.get('type')} record (i={rec.get('i')}, t={rec.get('t')}): {what}") from None

    sizes_seen.update(k for k in rows if k is not None)
    for b in last_capture:
        rows.setdefault(b, _Row())
    largest = max(sizes_seen) if sizes_seen else None
    over_label = "eager" if largest is None else f">{largest}"

    buckets = []
    all_padded = all_computed = graph_steps = 0
    for b in sorted(rows, key=lambda k: (k is None, k or 0)):
        row = rows[b]
        for values in (row.graph_ms, row.eager_ms, row.graph_host, row.eager_host, row.graph_gap, row.eager_gap):
            values.sort()
        cap, ok = last_capture.get(b), last_ok.get(b, {})
        if cap is None:
            status = "-"
        elif cap.get("ok"):
            status = "ok"
        else:
            status = f"failed: {cap.get('cause') or cap.get('error') or 'unknown'}"
        pool, nvml = ok.get("pool_bytes"), ok.get("nvml_bytes")
        buckets.append({
            "bucket": b, "label": over_label if b is None else str(b),
            "steps": row.steps, "graph_steps": row.graph_steps,
            "hit_pct": _pct(row.graph_steps, row.steps),
            "padding_waste_pct": _pct(row.padded, row.computed),
            "graph_p50_ms": percentile(row.graph_ms, 50),
            "graph_p99_ms": percentile(row.graph_ms, 99),
            "eager_p50_ms": percentile(row.eager_ms, 50),
            "eager_p99_ms": percentile(row.eager_ms, 99),
            "host_us_graph_p50": percentile(row.graph_host, 50),
            "host_us_eager_p50": percentile(row.eager_host, 50),
            "gap_us_graph_p50": percentile(row.graph_gap, 50),
            "gap_us_eager_p50": percentile(row.eager_gap, 50),
            "graph_mib": None if pool is None else pool / MIB,
            "nvml_mib": None if nvml is None else nvml / MIB,
            "capture_s": ok.get("capture_s"), "kernels": ok.get("kernels"),
            "check": _check_text(ok.get("check")),
            "status": status, "misses": dict(sorted(row.misses.items())),
        })
        all_padded += row.padded
        all_computed += row.computed
        graph_steps += row.graph_steps

    duration = None if first_t is None else last_t - first_t + last_ms / 1000.0
    totals = {
        "steps": n_steps, "graph_steps": graph_steps,
        "graph_hit_rate_pct": _pct(graph_steps, n_steps),
        "tokens": tokens, "duration_s": duration,
        "tokens_per_s": tokens / duration if duration else None,
        "gpu_busy_pct": _pct(gpu_ms_sum, duration * 1000.0) if gpu_ms_any and duration else None,
        "nvml_util_pct": util_sum / util_n if util_n else None,
        "graph_pool_mib": None if pool_bytes is None else pool_bytes / MIB,
        "padding_waste_pct": _pct(all_padded, all_computed),
        "gpu_idle_graph_pct": gpu_idle_pct(idle["graph"]),
        "gpu_idle_eager_pct": gpu_idle_pct(idle["eager"]),
        "prefills": prefills, "prefill_tokens": prefill_tokens,
        "mode_switches": mode_switches, "recaptures": recaptures,
    }
    header = {k: v for k, v in trace.header.items() if k != "type"}
    return {"path": trace.path, "header": header, "buckets": buckets, "totals": totals,
            "alerts": alerts, "events": events, "warnings": trace.warnings()}


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


def format_report(rep: dict) -> str:
    """The report as plain text (no trailing newline), lines within 120 columns."""
    h, t = rep["header"], rep["totals"]
    d = t["duration_s"]
    dur = NA if d is None else f"{d:.3f} s" if d < 10 else f"{d:.1f} s"
    dtype = f" ({h['dtype']})" if h.get("dtype") else ""
    lines = [f"cgwatch report: {_name(h.get('model'))}{dtype} on {_name(h.get('gpu'))}, "
             f"torch {_name(h.get('torch'))}, {dur}", ""]

    head = [("", "bucket"), ("", "steps"), ("hit", "%"), ("pad", "waste%"),
            ("graph ms", "p50/p99"), ("eager ms", "p50/p99"), ("launch µs", "g/e"),
            ("graph", "MiB"), ("capture", "s"), ("", "kernels"), ("", "check"), ("", "status")]
    rows = []
    for b in rep["buckets"]:
        rows.append([
            b["label"], str(b["steps"]), _f(b["hit_pct"], ".1f"), _f(b["padding_waste_pct"], ".1f"),
            f"{_ms(b['graph_p50_ms'])}/{_ms(b['graph_p99_ms'])}",
            f"{_ms(b['eager_p50_ms'])}/{_ms(b['eager_p99_ms'])}",
            f"{_us(b['host_us_graph_p50'])}/{_us(b['host_us_eager_p50'])}",
            _f(b["graph_mib"], ".1f"), _f(b["capture_s"], ".2f"),
            NA if b["kernels"] is None else str(b["kernels"]),
            b["check"] or NA, b["status"]])
    if rows:
        lines += _table(head, rows, left={10, 11})
        lines.append("(pad waste%: padded share of the rows graphs computed; launch µs: host p50, "
                     "graph/eager steps)")
    else:
        lines.append("(no buckets: no steps, no captures)")

    failed = [b for b in rep["buckets"] if b["status"].startswith("failed")]
    misses = [b for b in rep["buckets"] if b["misses"]]
    if failed:
        lines += ["", "failed captures:"]
        lines += [f"  {b['label']}: {b['status'][len('failed: '):]}" for b in failed]
    if misses:
        lines += ["", "eager steps by reason:"]
        lines += [f"  {b['label']}: " + ", ".join(f"{r} {n}" for r, n in b["misses"].items())
                  for b in misses]

    tps = _f(t["tokens_per_s"], ",.1f")
    lines += ["", "totals:",
              f"  steps            {t['steps']:,} ({t['graph_steps']:,} graph, "
              f"hit rate {_p(t['graph_hit_rate_pct'])})",
              f"  tokens           {t['tokens']:,} in {dur} = {tps} tok/s",
              f"  gpu busy         {_p(t['gpu_busy_pct'])} (CUDA events), "
              f"{_p(t['nvml_util_pct'])} (NVML utilization)",
              f"  graph pool       {_f(t['graph_pool_mib'], '.1f')}{'' if t['graph_pool_mib'] is None else ' MiB'}",
              f"  padding waste    {_p(t['padding_waste_pct'])}",
              *([f"  gpu idle         {_p(t.get('gpu_idle_graph_pct'))} in graph, {_p(t.get('gpu_idle_eager_pct'))} "
                 "in eager (GPU waiting for the host between back-to-back steps)"]
                if t.get("gpu_idle_graph_pct") is not None or t.get("gpu_idle_eager_pct") is not None else []),
              f"  prefills         {t['prefills']:,} ({t['prefill_tokens']:,} tokens)",
              f"  mode switches    {t['mode_switches']}, recaptures {t['recaptures']}"]

    for title, items, fmt in (
            ("alerts", rep["alerts"], lambda a: f"{a['level'].upper():5}  {a['message']}"),
            ("events", rep["events"], lambda e: f"{e['kind']:9}  {e['text']}")):
        if items:
            lines += ["", f"{title}:"]
            lines += [f"  {_f(x['t'], '10.3f')}s  " + _clip(fmt(x), 100) for x in items[:MAX_LIST]]
            if len(items) > MAX_LIST:
                lines.append(f"  ... {len(items) - MAX_LIST} more")
    if rep["warnings"]:
        lines += [""] + [f"warning: {w}" for w in rep["warnings"]]
    return "\n".join(lines)
