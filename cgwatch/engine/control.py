"""Run-time commands to the engine, applied between steps: from the CLI's ``--at STEP:ACTION``
schedule now, and from clients of the daemon later. One parser, one set of command names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from cgwatch.engine.buckets import MAX_SIZE_LIST, check_ratio, parse_sizes
from cgwatch.errors import CgwatchError
from cgwatch.text import clip
from cgwatch.workload import MAX_RATE

ACTIONS_HELP = ("eager | graph | recapture=1,2,4,8 | padding=0.25 | kernels=fused|plain | rate=0.5 | pause | "
                "resume | mark=TEXT")
COMMANDS = ("mode", "recapture", "padding", "kernels", "rate", "pause", "resume", "mark")
MAX_MARK = 200   # characters of a mark (longer ones are cut)


@dataclass(frozen=True)
class Command:
    name: str            # mode | recapture | padding | rate | pause | mark
    value: object = None
    reply: Callable[[dict], None] | None = field(default=None, compare=False, repr=False)
    # called once the command ran: {"ok": True, "state": {...}} or {"ok": False, "error": "..."}


KV_SLOTS = "--max-concurrency, the KV slots"   # cgwatch's engine's limit (a message puts it in brackets)


@dataclass(frozen=True)
class Limits:
    """What an engine can serve, for checking commands before they reach it. ``max_size``: the largest
    capture size (cgwatch's engine: --max-concurrency, its KV slots; vLLM: the most tokens one forward
    may carry); None: unknown, not checked."""
    max_size: int | None = None
    max_size_by: str = KV_SLOTS

    def describe(self) -> dict:
        return {"max_size": self.max_size, "max_size_by": self.max_size_by}


def limits_from_header(header: dict | None) -> Limits:
    """The limits a run's header states (``command_limits``; older headers: the workload's
    max_concurrency)."""
    h = header or {}
    lim = h.get("command_limits")
    if isinstance(lim, dict) and _is_int(lim.get("max_size")):
        return Limits(lim["max_size"], str(lim.get("max_size_by") or "the engine"))
    n = (h.get("workload") or {}).get("max_concurrency")
    return Limits(n) if _is_int(n) and h.get("backend", "pytorch") == "pytorch" else Limits()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CgwatchError(f"bad {name} {clip(value)}: expected {what}")
    try:
        v = float(value)
    except OverflowError:   # an integer beyond float range
        v = math.inf
    if not math.isfinite(v):
        raise CgwatchError(f"bad {name} {clip(value)}: expected {what}")
    return v + 0.0   # -0.0 -> 0.0


def make_command(name: object, value: object = None, limits: Limits = Limits()) -> Command:
    """The one check of every command, wherever it comes from (a client of the daemon, ``--at``, the
    TUI's dialog, and the engine again before it runs one): the name, the value's type, its bounds,
    finite numbers, list and text lengths; the capture sizes against what the engine can serve. A
    bad command raises CgwatchError with a one-line reason that quotes at most a short prefix of the
    value. ``pause`` and ``resume`` become Command("pause", True / False)."""
    if name == "mode":
        if value in ("eager", "graph") and isinstance(value, str):
            return Command("mode", value)
        raise CgwatchError(f"bad mode {clip(value)}: expected 'eager' or 'graph'")
    if name == "recapture":
        if isinstance(value, str):
            sizes = parse_sizes(value)
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_SIZE_LIST:
                raise CgwatchError(f"too many capture sizes ({len(value)}): at most {MAX_SIZE_LIST}")
            if not all(_is_int(v) for v in value):
                bad = next(v for v in value if not _is_int(v))
                raise CgwatchError(f"bad capture size {clip(bad)}: sizes are integers >= 1")
            sizes = sorted(set(value))
        else:
            raise CgwatchError(f"bad capture sizes {clip(value)}: expected a list like [1, 2, 4, 8] or '1,2,4,8'")
        if not sizes:
            raise CgwatchError("no capture sizes: give at least one, e.g. 1,2,4,8")
        if sizes[0] < 1:
            raise CgwatchError(f"bad capture size {clip(sizes[0])}: sizes must be >= 1")
        if limits.max_size is not None and sizes[-1] > limits.max_size:
            raise CgwatchError(f"capture size {clip(sizes[-1])} is above what the engine can serve: at most "
                               f"{limits.max_size} ({limits.max_size_by})")
        return Command("recapture", sizes)
    if name == "kernels":
        if value in ("fused", "plain") and isinstance(value, str):
            return Command("kernels", value)
        raise CgwatchError(f"bad kernels {clip(value)}: expected 'fused' or 'plain'")
    if name == "padding":
        v = _number("padding ratio", value, "a number between 0 and 1")
        try:
            return Command("padding", check_ratio(v))
        except CgwatchError:
            raise CgwatchError(f"bad padding ratio {clip(value)}: expected a number between 0 and 1") from None
    if name == "rate":
        v = _number("rate", value, f"new requests per step, a number from 0 to {MAX_RATE:g}")
        if not 0 <= v <= MAX_RATE:
            raise CgwatchError(f"bad rate {clip(value)}: expected new requests per step, from 0 (no new requests) "
                               f"to {MAX_RATE:g}")
        return Command("rate", v)
    if name in ("pause", "resume"):
        if value is not None:
            raise CgwatchError(f"{name} takes no value, got {clip(value)}")
        return Command("pause", name == "pause")
    if name == "mark":
        if not isinstance(value, str) or not value:
            raise CgwatchError(f"bad mark {clip(value)}: expected a non-empty text")
        return Command("mark", value[:MAX_MARK])
    raise CgwatchError(f"unknown command {clip(name)}: expected {', '.join(COMMANDS)}")


def parse_action(text: str, limits: Limits = Limits()) -> Command:
    """``--at``'s ACTION (``eager``, ``recapture=1,4``, ``rate=0.5``, ...) -> a checked Command."""
    name, _, arg = text.partition("=")
    if name in ("eager", "graph") and not arg:
        return make_command("mode", name)
    if name in ("recapture", "mark", "kernels") and arg:
        return make_command(name, arg, limits)
    if name in ("padding", "rate") and arg:
        try:
            value = float(arg)
        except ValueError:
            value = arg   # make_command says what is wrong with it
        return make_command(name, value, limits)
    if name in ("pause", "resume") and not arg:
        return make_command(name)
    raise CgwatchError(f"bad action {clip(text)}: expected {ACTIONS_HELP}")


def command_from_message(msg: dict, limits: Limits = Limits()) -> Command:
    """A client's JSON command -> Command (checked by make_command, as --at is)."""
    return make_command(msg.get("cmd"), msg.get("value"), limits)


def parse_scheduled(text: str, limits: Limits = Limits()) -> tuple[int, Command]:
    """'200:eager' -> (200, Command('mode', 'eager')): run the action before decode step 200."""
    step, sep, action = text.partition(":")
    if not sep or not step.isdigit() or len(step) > 18:
        raise CgwatchError(f"bad --at {clip(text)}: expected STEP:ACTION, e.g. 200:eager or 400:recapture=1,8,64")
    return int(step), parse_action(action, limits)


def parse_step_range(text: str) -> tuple[int, int]:
    """'100:200' -> (100, 200) for --profile-steps (inclusive)."""
    a, sep, b = text.partition(":")
    if not (sep and a.isdigit() and b.isdigit()) or int(a) > int(b):
        raise CgwatchError(f"bad --profile-steps {text!r}: expected A:B with A <= B, e.g. 100:200")
    return int(a), int(b)


class CommandTaker:
    """How an engine takes commands, shared by cgwatch's loop (engine/loop.py) and the vLLM adapter
    (backends/vllm_engine.py): queued from any thread (``submit``) or by ``--at`` schedule, run
    between steps (``apply_pending``), each answered with the engine's new state. Each command is
    checked again (``make_command`` with ``command_limits()``) before it runs, so nothing a caller
    submits can kill the loop.

    rate, pause and mark mean the same on every engine and live here; an engine implements the
    commands that differ as ``_cmd_mode(value, t)``, ``_cmd_recapture(value, t)``,
    ``_cmd_padding(value, t)`` and ``_cmd_kernels(value, t)``. It provides ``emit``, ``now()``, ``control_state()``, ``workload``,
    ``paused``, ``i``, ``command_limits()``, and calls ``_init_commands(schedule)`` in its constructor.

    ``idle``: the workload has nothing to decode and nothing arriving (a poisson rate of 0 once the
    live requests finished); the loop then waits for commands, as when paused, until one comes."""

    ENGINE_COMMANDS = ("mode", "recapture", "padding", "kernels")
    idle = False

    def _init_commands(self, schedule) -> None:
        import queue
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.schedule = sorted(schedule, key=lambda sc: sc[0])

    def command_limits(self) -> Limits:
        """What this engine can serve (for checking commands); engines override it."""
        return Limits()

    def submit(self, cmd: Command) -> None:
        """Thread-safe: the command runs before the next step."""
        self.commands.put(cmd)

    def apply_pending(self) -> None:
        """Run the commands queued so far (and scheduled ones that are due)."""
        while self.schedule and self.schedule[0][0] <= self.i:
            self.commands.put(self.schedule.pop(0)[1])
        while not self.commands.empty():
            self._apply(self.commands.get())

    def wait_for_command(self, timeout_s: float = 0.05) -> bool:
        """While paused or idle: block up to ``timeout_s`` for a command (resume among them) and run it.
        True if one ran."""
        import queue
        try:
            cmd = self.commands.get(timeout=timeout_s)
        except queue.Empty:
            return False
        self._apply(cmd)
        return True

    def _wait_idle(self) -> None:
        """The loop's turn while idle: wait for a command; after one, the next step asks the workload again."""
        if self.wait_for_command():
            self.idle = False

    def _starved(self) -> None:
        """The workload has nothing to decode and nothing arriving: say so once, and idle."""
        if not self.idle:
            from cgwatch import records as R
            self.idle = True
            self.emit(R.alert(self.now(), "no live requests and arrival rate 0: waiting for commands "
                              "(raise the rate to go on)", level="info"))

    def _apply(self, cmd: Command) -> None:
        """Run one command between steps, emit what happened and the new state, answer the sender."""
        from cgwatch import records as R
        try:
            if cmd.name != "pause":   # checked again here: a caller may have built it by hand
                cmd = replace(make_command(cmd.name, cmd.value, self.command_limits()), reply=cmd.reply)
            elif not isinstance(cmd.value, bool):
                raise CgwatchError(f"bad pause value {clip(cmd.value)}: expected true or false")
            self._run_command(cmd)
        except CgwatchError as e:
            if cmd.reply:
                cmd.reply({"ok": False, "error": str(e)})
            else:   # a scheduled command (--at) has nobody to answer: say so in the run
                self.emit(R.alert(self.now(), f"{cmd.name} refused: {e}"))
            return
        self._commands_changed()
        state = self.control_state()
        self.emit(R.event(R.EV_STATE, self.now(), **state))
        if cmd.reply:
            cmd.reply({"ok": True, "state": state})

    def _commands_changed(self) -> None:
        """After a command ran: refresh what depends on the engine's state (a hook)."""

    def _run_command(self, cmd: Command) -> None:
        from cgwatch import records as R
        t = self.now()
        if cmd.name in self.ENGINE_COMMANDS:
            getattr(self, f"_cmd_{cmd.name}")(cmd.value, t)
        elif cmd.name == "rate":
            self.workload.set_rate(cmd.value)
            self.emit(R.event(R.EV_RATE, t, rate=cmd.value))
        elif cmd.name == "pause":
            if cmd.value != self.paused:
                self.paused = cmd.value
                self.emit(R.event(R.EV_PAUSE, t, paused=cmd.value))
        elif cmd.name == "mark":
            self.emit(R.event(R.EV_MARK, t, text=cmd.value))
        else:
            raise CgwatchError(f"unknown command {cmd.name!r}")
