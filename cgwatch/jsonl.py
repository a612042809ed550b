"""One compact JSON encoding for every record that leaves the engine (trace lines, protocol lines)."""

from __future__ import annotations

import json


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
