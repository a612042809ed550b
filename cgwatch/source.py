"""What a view reads from: a live daemon or a recorded trace, behind one interface.

Views (the TUI) only see ``Source``: records arrive through ``on_record`` (the same dicts the engine
emits, see records.py, plus ``ack`` replies), connection/playback status through ``on_status``, and
every user action goes out through ``send``. A view never asks which kind of source it has; a source
refuses what it cannot do with an ``ack`` whose ``ok`` is false and ``error`` says why (a replay
refuses ``mode``, a live run refuses ``seek``).
"""

from __future__ import annotations

from typing import Callable

ACK = "ack"   # {"type": "ack", "id": int, "cmd": str, "ok": bool, "state": {...} | "error": str}

# Commands a view may send (value in brackets):
#   engine:   mode [eager|graph], recapture [list of sizes], padding [0..1], kernels [fused|plain],
#             rate [req/step], mark [text]
#   both:     pause, resume       (a live engine pauses its loop; a replay pauses playback)
#   playback: speed [0.25..16], seek [seconds, relative], next [alert|mark]
ENGINE_COMMANDS = ("mode", "recapture", "padding", "kernels", "rate", "mark")
PLAYBACK_COMMANDS = ("speed", "seek", "next")

RecordCallback = Callable[[dict], None]
# status: {"connected": bool, "text": str, "dropped": int | None,
#          "position_s": float | None, "duration_s": float | None, "speed": float | None, "paused": bool,
#          "ended": bool (optional: a replay at the end of its trace),
#          "final": bool (optional: the source stopped for good, e.g. its daemon died; text says why)}
StatusCallback = Callable[[dict], None]


class Source:
    """Base class. Callbacks may be called from a background thread."""

    title: str = ""

    def start(self, on_record: RecordCallback, on_status: StatusCallback) -> None:
        raise NotImplementedError

    def send(self, cmd: str, value: object = None) -> int:
        """Queue a command; returns its id. The answer arrives as an ``ack`` record with that id."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def ack(req_id: int, cmd: str, ok: bool, **fields) -> dict:
    return {"type": ACK, "id": req_id, "cmd": cmd, "ok": ok, **fields}
