"""Text from outside (clients' marks, trace messages, command values) made safe to show.

``printable`` escapes control characters, so that a mark with a newline, a tab, BEL or an escape
sequence shows as ``\\n``, ``\\t``, ``\\x07``, ``\\x1b`` on one line instead of breaking a TUI log,
ringing the bell or driving the terminal. ``clip`` shortens a value quoted in an error message.
The TUI log, the report's alert and event lines and the headless status line all go through
``printable``.
"""

from __future__ import annotations

CLIP = 40   # characters of a value quoted in an error message

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: int) -> str:
    ch = chr(c)
    return _NAMED.get(ch) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), and the Unicode line and
# paragraph separators (they break lines too)
_TABLE = {c: _escape(c) for c in (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029)}


def printable(text: object) -> str:
    """``text`` as a string with every control character escaped (one line, no terminal control)."""
    s = text if isinstance(text, str) else str(text)
    return s.translate(_TABLE)


def clip(value: object, limit: int = CLIP) -> str:
    """A value for an error message: its ``repr``, escaped, cut to ``limit`` characters plus "…" (a
    5,000-digit number or a 1 MiB string is quoted by its first characters, never whole)."""
    if isinstance(value, str):
        value = value[:limit + 1]
    elif isinstance(value, (list, tuple)) and len(value) > limit:
        value = list(value[:limit])
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        s = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    else:
        try:
            s = repr(value)
        except ValueError:   # an integer over Python's 4,300-digit limit inside a list
            s = "<a value too large to show>"
    s = printable(s)
    return s if len(s) <= limit else s[:limit] + "…"
