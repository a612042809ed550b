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


class CommandTaker:
    """How an engine takes commands, shared by cgwatch's loop (engine/loop.py) and the vLLM adapter
    (backends/vllm_engine.py): queued from any thread (``submit``) or by ``--at`` schedule, run
    between steps (``apply_pending``), each answered with the engine's new state.

    rate, pause and mark mean the same on every engine and live here; an engine implements the
    commands that differ as ``_cmd_mode(value, t)``, ``_cmd_recapture(value, t)`` and
    ``_cmd_padding(value, t)``. It provides ``emit``, ``now()``, ``control_state()``, ``workload``,
    ``paused``, ``i``, and calls ``_init_commands(schedule)`` in its constructor."""

    ENGINE_COMMANDS = ("mode", "recapture", "padding")

    def _init_commands(self, schedule) -> None:
        import queue
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.schedule = sorted(schedule, key=lambda sc: sc[0])

    def submit(self, cmd: Command) -> None:
        """Thread-safe: the command runs before the next step."""
        self.commands.put(cmd)

    def apply_pending(self) -> None:
        """Run the commands queued so far (and scheduled ones that are due)."""
        while self.schedule and self.schedule[0][0] <= self.i:
            self.commands.put(self.schedule.pop(0)[1])
        while not self.commands.empty():
            self._apply(self.commands.get())

    def wait_for_command(self, timeout_s: float = 0.05) -> None:
        """While paused: block up to ``timeout_s`` for a command (resume among them) and run it."""
        import queue
        try:
            self._apply(self.commands.get(timeout=timeout_s))
        except queue.Empty:
            pass

    def _apply(self, cmd: Command) -> None:
        """Run one command between steps, emit what happened and the new state, answer the sender."""
        from cgwatch import records as R
        try:
            self._run_command(cmd)
        except CgwatchError as e:
            if cmd.reply:
                cmd.reply({"ok": False, "error": str(e)})
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
