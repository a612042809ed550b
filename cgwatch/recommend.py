"""`cgwatch recommend`: being built (issue 4)."""

from __future__ import annotations

from cgwatch.errors import CgwatchError


def add_parser(sub) -> None:
    p = sub.add_parser("recommend", help="(being built)")
    p.set_defaults(func=run)


def run(a) -> int:
    raise CgwatchError("'cgwatch recommend' is not built yet")
