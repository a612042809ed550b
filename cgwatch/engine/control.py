"""Run-time commands to the engine, applied between steps: from the CLI's ``--at STEP:ACTION``
schedule now, and from clients of the daemon later. One parser, one set of command names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cgwatch.engine.buckets import check_ratio, parse_sizes
from cgwatch.errors import CgwatchError

ACTIONS_HELP = "eager | graph | recapture=1,2,4,8 | padding=0.25 | rate=0.5 | pause | resume | mark=TEXT"


@dataclass(frozen=True)
class Command:
    name: str            # mode | recapture | padding | rate | pause | mark
    value: object = None
    reply: Callable[[dict], None] | None = field(default=None, compare=False, repr=False)
    # called once the command ran: {"ok": True, "state": {...}} or {"ok": False, "error": "..."}


def parse_action(text: str) -> Command:
    name, _, arg = text.partition("=")
    if name in ("eager", "graph") and not arg:
        return Command("mode", name)
    if name == "recapture" and arg:
        return Command("recapture", parse_sizes(arg))
    if name == "padding" and arg:
        try:
            return Command("padding", check_ratio(float(arg)))
        except ValueError:
            raise CgwatchError(f"bad padding ratio {arg!r}: expected a number between 0 and 1") from None
    if name == "mark" and arg:
        return Command("mark", arg)
    if name == "rate" and arg:
        try:
            return Command("rate", float(arg))
        except ValueError:
            raise CgwatchError(f"bad rate {arg!r}: expected new requests per step, e.g. 0.5") from None
    if name in ("pause", "resume") and not arg:
        return Command("pause", name == "pause")
    raise CgwatchError(f"bad action {text!r}: expected {ACTIONS_HELP}")


def command_from_message(msg: dict) -> Command:
    """A client's JSON command -> Command (validated with the same rules as --at)."""
    name, value = msg.get("cmd"), msg.get("value")
    if name == "mode" and value in ("eager", "graph"):
        return Command("mode", value)
    if name == "recapture" and isinstance(value, (list, str)):
        return parse_action("recapture=" + (value if isinstance(value, str) else ",".join(map(str, value))))
    if name in ("padding", "rate") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return parse_action(f"{name}={value}")
    if name in ("pause", "resume") and value is None:
        return Command("pause", name == "pause")
    if name == "mark" and isinstance(value, str) and value:
        return Command("mark", value[:200])
    raise CgwatchError(f"unknown or malformed command {msg.get('cmd')!r} (value {value!r})")


def parse_scheduled(text: str) -> tuple[int, Command]:
    """'200:eager' -> (200, Command('mode', 'eager')): run the action before decode step 200."""
    step, sep, action = text.partition(":")
    if not sep or not step.isdigit():
        raise CgwatchError(f"bad --at {text!r}: expected STEP:ACTION, e.g. 200:eager or 400:recapture=1,8,64")
    return int(step), parse_action(action)


def parse_step_range(text: str) -> tuple[int, int]:
    """'100:200' -> (100, 200) for --profile-steps (inclusive)."""
    a, sep, b = text.partition(":")
    if not (sep and a.isdigit() and b.isdigit()) or int(a) > int(b):
        raise CgwatchError(f"bad --profile-steps {text!r}: expected A:B with A <= B, e.g. 100:200")
    return int(a), int(b)
