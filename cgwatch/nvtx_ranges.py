"""NVTX ranges in one ``cgwatch`` domain with registered strings, for Nsight Systems / Compute.

Range names: ``decode_graph_b<N>`` / ``decode_eager`` (a step: wraps the host-side ``replay()``,
since ranges inside a capture are emitted only once), ``capture_b<N>``, ``prefill``.
Filter with ``ncu --nvtx --nvtx-include "cgwatch@decode_graph_b16/"``. Attributes are cached per
name, so a push/pop pair costs about the package's floor (~0.1 us). Without the ``nvtx`` package
every call is a no-op and ``available`` is False.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

try:
    import nvtx as _nvtx
except ImportError:
    _nvtx = None

DOMAIN = "cgwatch"


@lru_cache(maxsize=None)   # called every step: build each name once
def step_range_name(bucket: int | None) -> str:
    return "decode_eager" if bucket is None else f"decode_graph_b{bucket}"


class Nvtx:
    def __init__(self, enabled: bool = True):
        self.domain = _nvtx.get_domain(DOMAIN) if (enabled and _nvtx is not None) else None
        self._attrs: dict[str, object] = {}

    @property
    def available(self) -> bool:
        return self.domain is not None

    def _attr(self, name: str):
        a = self._attrs.get(name)
        if a is None:
            a = self._attrs[name] = self.domain.get_event_attributes(message=name)
        return a

    def push(self, name: str) -> None:
        if self.domain is not None:
            self.domain.push_range(self._attr(name))

    def pop(self) -> None:
        if self.domain is not None:
            self.domain.pop_range()

    @contextmanager
    def range(self, name: str):
        self.push(name)
        try:
            yield
        finally:
            self.pop()
