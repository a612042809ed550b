"""User-facing errors: the CLI prints ``cgwatch: <message>`` on one line and exits non-zero."""


class CgwatchError(Exception):
    """Bad input or an unusable environment, explained in one line."""
