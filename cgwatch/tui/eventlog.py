"""One log line per record worth reading: (Rich style, text). None for the rest (steps, samples,
per-bucket captures, state events: the table and header show those)."""

from __future__ import annotations

from cgwatch import records as R
from cgwatch.report import MIB

LEVEL_STYLE = {"error": "bold red", "warn": "yellow", "info": "cyan"}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.1f} MiB"


def _sizes(sizes) -> str:
    return "[" + ",".join(map(str, sizes or ())) + "]"


def describe_record(rec: dict) -> tuple[str, str] | None:
    typ = rec.get("type")
    if typ == R.END:
        steps = rec.get("steps")
        return "bold", f"run ended ({rec.get('outcome') or rec.get('error') or 'no outcome'})" + (
            f": {steps:,} steps" if isinstance(steps, int) else "")
    if typ != R.EVENT:
        return None
    k = rec.get("kind")
    if k == R.EV_ALERT:
        level = rec.get("level", "warn")
        return LEVEL_STYLE.get(level, "yellow"), f"{level.upper()} {rec.get('message', '')}"
    if k == R.EV_MODE:
        return "magenta", f"mode → {rec.get('mode')}"
    if k == R.EV_RECAPTURE:
        dropped = f" (dropped {_sizes(rec['dropped'])})" if rec.get("dropped") else ""
        return "magenta", f"recapture {_sizes(rec.get('old'))} → {_sizes(rec.get('sizes'))}{dropped}"
    if k == R.EV_RELEASE:   # freed: reserved memory given back, the allocator's other cached blocks included
        pool = f": pool {_mib(rec['pool_bytes'])}" if rec.get("pool_bytes") is not None else ""
        return "dim", (f"released old graphs{pool}; the allocator returned {_mib(rec.get('freed_bytes'))} "
                       f"to the driver (its cached blocks included)")
    if k == R.EV_CAPTURE_DONE:
        failed = f", failed {_sizes(rec['failed'])}" if rec.get("failed") else ""
        secs = rec.get("seconds")
        took = "" if secs is None else f" in {secs:.2f} s"
        return ("yellow" if failed else "green",
                f"captured {_sizes(rec.get('sizes'))}{failed}{took}, pool {_mib(rec.get('pool_bytes'))}")
    if k == R.EV_MARK:
        return "bold blue", f"mark: {rec.get('text', '')}"
    if k == R.EV_RATE:
        return "magenta", f"rate → {rec.get('rate')} req/step"
    if k == R.EV_PAUSE:
        return "magenta", "engine paused" if rec.get("paused") else "engine resumed"
    if k == R.EV_PADDING:
        return "magenta", f"max padding ratio → {rec.get('value')}"
    if k == R.EV_INFO:
        return "", str(rec.get("message", ""))
    return None


def describe_ack(ack: dict) -> tuple[str, str]:
    cmd = ack.get("cmd")
    if not ack.get("ok"):
        return "red", f"{cmd} refused: {ack.get('error', 'no reason given')}"
    state, play = ack.get("state") or {}, ack.get("playback") or {}
    if cmd == "mode" and "mode" in state:
        result = state["mode"]
    elif cmd == "recapture" and "sizes" in state:
        result = _sizes(state["sizes"])
        if state.get("failed"):
            result += f", failed {_sizes(state['failed'])}"
    elif cmd == "kernels" and state.get("kernels"):
        result = f"{state['kernels']} kernels"
    elif cmd == "rate" and "rate" in state:
        result = f"{state['rate']:.3g} req/step"
    elif cmd == "padding" and "max_padding_ratio" in state:
        result = f"max padding ratio {state['max_padding_ratio']}"
    elif cmd == "speed" and "speed" in play:
        result = f"×{play['speed']:g}"
    elif cmd in ("seek", "next") and "position_s" in play:
        result = f"{play['position_s']:.1f} s"
    else:
        return "green", f"{cmd} ok"
    return "green", f"{cmd} ok → {result}"
