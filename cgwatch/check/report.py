"""The human report of `cgwatch check`: ``format_report`` of the report dict (pipeline.py's ``check``)."""

from __future__ import annotations

import textwrap


def format_report(res: dict) -> str:
    dev = f"{res['gpu']} ({res['device']}, torch {res['torch']})" if res["gpu"] else f"{res['device']} (torch {res['torch']})"
    lines = [f"cgwatch check {res['target']}", f"  device   {dev}", f"  inputs   {res['inputs']}"]
    if res["note"]:
        lines.append(f"  note     {res['note']}")
    for n in res["notes"]:
        lines.append(f"  note     {n}")
    lines.append(f"  status   {_status_line(res)}")
    if res["capture_ms"] is not None:
        pool = "n/a" if res["pool_mib"] is None else f"{res['pool_mib']:.1f} MiB"
        lines.append(f"  capture  {res['capture_ms']:.1f} ms (capture_error_mode={res['capture_error_mode']}), "
                     f"graph pool {pool}")
    if res["replay_us"] is not None:
        lines.append(f"  replay   {res['replay_us']:.1f} µs/call vs eager {res['eager_us']:.1f} µs/call "
                     f"(CUDA events, mean of {res['timed_calls']} calls; informative only)")
    if res["check"] is not None:
        lines.extend(_check_lines(res["check"]))
    if not res["ok"]:
        lines.extend(_failure_lines(res))
    others = [f for f in res["findings"] if not _same_line(f["where"], res["where"])]
    if others:
        lines.append("")
        lines.append("capture lint (ops that break or distort a capture, found running the callable eagerly):")
        for f in others:
            w = f["where"]
            at = f"{w['file']}:{w['line']}" if w else "(inside torch)"
            lines.append(f"  {f['severity']:<8}{f['cause']:<24}{at}  {f['what']}")
            if w and w["source"]:
                lines.append(f"  {'':<32}{w['source']}")
    return "\n".join(lines)


def _status_line(res: dict) -> str:
    if res["ok"]:
        warnings = sum(f["severity"] == "warning" for f in res["findings"])
        more = f"; {warnings} warning{'s' if warnings != 1 else ''} below" if warnings else ""
        return "OK" + (f" (lint: no capture-unsafe operation found{more})" if res["phase"] == "lint" else "")
    if res["phase"] == "lint":
        n = sum(f["severity"] == "error" for f in res["findings"])
        return f"FAIL (lint: {n} capture-unsafe operation{'s' if n != 1 else ''})"
    return f"FAIL at {res['phase']}"


def _check_lines(chk: dict) -> list[str]:
    head = f"{chk['replays']} replays on fresh inputs vs eager: " + ("match" if chk["ok"] else "DIFFER")
    out = [f"  check    {head}"]
    for o in chk["outputs"]:
        if o.get("note"):
            detail = o["note"]
        else:
            detail = f"max abs err {o['max_abs']:.1e}, max rel err {o['max_rel']:.1e} (rtol {o['rtol']:g}, atol {o['atol']:g})"
        out.append(f"           {o['name']}: {'ok' if o['ok'] else 'DIFFERS'}, {detail}")
    return out


def _failure_lines(res: dict) -> list[str]:
    out = [f"  cause    {res['cause']}"]
    w = res["where"]
    if w:
        out.append(f"  where    {w['file']}:{w['line']} in {w['function']}" + (f"  ({res['op']})" if res["op"] else ""))
        if w["source"]:
            out.append(f"           {w['source']}")
    elif res["op"]:
        out.append(f"  op       {res['op']}")
    if res["error"]:
        out.append(f"  error    {res['error']}")
    out.extend(textwrap.wrap(res["hint"], 110, initial_indent="  hint     ", subsequent_indent=" " * 11))
    return out


def _same_line(a: dict | None, b: dict | None) -> bool:
    return bool(a and b and (a["file"], a["line"]) == (b["file"], b["line"]))
