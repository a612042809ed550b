"""User-facing errors: the CLI prints ``cgwatch: <message>`` on one line and exits non-zero."""

import signal


class CgwatchError(Exception):
    """Bad input or an unusable environment, explained in one line."""


def exit_text(code: int) -> str:
    """How a child process ended, from its return code (negative: the signal that killed it)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
