"""One compact JSON encoding for every record that leaves the engine (trace lines, protocol lines)."""

from __future__ import annotations

import json
import math


def _jsonable(obj: object) -> object:
    """json fallback: numpy/torch scalars via .item(), anything else as its str()."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:
            pass
    return str(obj)


dumps = json.JSONEncoder(separators=(",", ":"), default=_jsonable).encode   # built once: faster
loads = json.JSONDecoder().decode


def finite(obj: object) -> object:
    """``obj`` with every NaN / infinity replaced by None (JSON has no such numbers): for output written with
    ``allow_nan=False``, so that it is strict JSON that any parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dump_strict(obj: object, f, indent: int | None = 2) -> None:
    """``obj`` as strict JSON (non-finite numbers as null) and a newline."""
    json.dump(finite(obj), f, indent=indent, allow_nan=False)
    f.write("\n")
