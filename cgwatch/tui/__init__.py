"""The Textual TUI: one screen over any ``Source`` (live daemon or trace replay)."""

from .app import CgwatchApp, run_tui

__all__ = ["CgwatchApp", "run_tui"]
