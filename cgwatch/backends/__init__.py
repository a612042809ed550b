"""Engine backends behind one interface (header/start/step/run/close/submit/control_state/now):
``pytorch`` (cgwatch's own decode loop, cgwatch/engine/loop.py) and ``vllm`` (a real vLLM engine,
vllm_engine.py). The CLI and the daemon build engines only through ``make_engine``; records, sinks
and views never know which backend runs. vllm is imported only when the vllm backend is built."""

from __future__ import annotations

from typing import Callable

BACKENDS = ("pytorch", "vllm")
DEFAULT_BACKEND = "pytorch"


def make_engine(cfg, emit: Callable[[dict], None]):
    """An engine for ``cfg``: a ``VllmEngineConfig`` builds the vLLM backend, an ``EngineConfig`` cgwatch's own."""
    if getattr(cfg, "backend", DEFAULT_BACKEND) == "vllm":
        from cgwatch.backends.vllm_engine import VllmEngine
        return VllmEngine(cfg, emit)
    from cgwatch.engine.loop import Engine
    return Engine(cfg, emit)
