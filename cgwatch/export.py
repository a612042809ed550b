"""`cgwatch export`: being built (issue 4)."""

from __future__ import annotations

from cgwatch.errors import CgwatchError


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="(being built)")
    p.set_defaults(func=run)


def run(a) -> int:
    raise CgwatchError("'cgwatch export' is not built yet")
