"""An event record in a few words: the one wording of the report's event list, the headless run's event
lines and Perfetto's instants (the TUI's log has its own, with colours: tui/eventlog.py)."""

from __future__ import annotations

from cgwatch import records as R

MIB = 1 << 20


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def event_text(ev: dict) -> str:
    """What the event says: ``mode eager``, ``recapture [...] (was [...])``, ``mark: TEXT``, ...; an unknown
    kind by its ``message``, ``text`` or ``label``, else its kind and fields as ``key=value``."""
    kind = ev.get("kind")
    if kind == R.EV_MODE:
        return f"mode {ev.get('mode')}"
    if kind == R.EV_RECAPTURE:
        old = ev.get("old")
        return f"recapture {ev.get('sizes')}" + (f" (was {old})" if isinstance(old, list) else "")
    if kind == R.EV_MARK:
        return f"mark: {ev.get('text')}"
    if kind == R.EV_PADDING:
        return f"max padding ratio {ev.get('value')}"
    if kind == R.EV_RATE:
        return f"arrival rate {ev.get('rate')} req/step"
    if kind == R.EV_PAUSE:
        return "paused" if ev.get("paused") else "resumed"
    if kind == R.EV_RESTART:
        secs = ev.get("seconds")
        took = f" in {secs:.1f} s" if _num(secs) else ""
        return f"engine restarted{took}: {ev.get('reason') or 'no reason given'}"
    if kind == R.EV_ALERT:
        return f"{str(ev.get('level') or 'warn').upper()}: {ev.get('message')}"
    if kind == R.EV_CAPTURE_DONE:
        pool = ev.get("pool_bytes")
        mib = f"{pool / MIB:.1f} MiB" if _num(pool) else "n/a"
        failed = f", failed {ev['failed']}" if ev.get("failed") else ""
        secs = f"{ev['seconds']:.2f}" if _num(ev.get("seconds")) else "n/a"
        comp = ev.get("compile_s")
        of = f" (compile {comp:.2f} s)" if _num(comp) and comp >= 0.01 else ""
        return f"captured {ev.get('sizes')}{failed} in {secs} s{of}, {ev.get('pool') or 'n/a'} pool {mib}"
    if kind == R.EV_RELEASE:
        freed = ev.get("freed_bytes")
        return "release graphs" + (f" (allocator returned {freed / MIB:.0f} MiB)" if _num(freed) else "")
    if kind == R.EV_STATE:
        return f"state: {ev.get('mode')}, sizes {ev.get('sizes')}"
    for key in ("message", "text", "label"):
        if ev.get(key):
            return str(ev[key])
    fields = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("type", "kind", "t"))
    return f"{kind} {fields}".strip()
