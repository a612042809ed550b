"""Names the cause of a failed CUDA graph capture, with a fix hint.

Used by the engine for its per-bucket captures (and meant to grow into ``cgwatch check``).
Cause classes follow the errors PyTorch/CUDA raise during capture (see docs/../facts: 900 = a host
sync or other capture-unsafe call, 901 = capture invalidated, unjoined side-stream work, OOM).
"""

from __future__ import annotations

_CLASSES = (
    # (cause, substrings of the error text, hint)
    ("out of memory", ("out of memory", "outofmemory"),
     "lower --gpu memory use (fewer/smaller buckets, shorter --max-seq) or capture fewer sizes"),
    ("host sync", ("operation not permitted when stream is capturing", "cudaerrorstreamcaptureunsupported",
                   "capture_unsupported", "operation not permitted"),
     "a host sync ran during capture (.item(), .cpu(), .tolist(), print(tensor), nonzero, boolean-mask "
     "indexing): keep the step on the GPU"),
    ("unjoined side-stream work", ("unjoined",),
     "work forked to another stream during capture must be joined back (stream.wait_stream) before it ends"),
    ("capture invalidated", ("invalidated", "previous error during capture", "cudaerrorstreamcaptureinvalidated"),
     "a capture-unsafe call (often from another thread, or a sync) invalidated the capture"),
    ("cpu tensor", ("expected all tensors to be on the same device", "cpu tensor"),
     "every tensor the step touches must live on the GPU"),
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised during, original first (a failed capture body is often
    masked by the capture_end error that the graph context raises on exit)."""
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out[::-1]


def classify(exc: BaseException) -> tuple[str, str]:
    """(cause, hint) for a capture exception; ("error", hint) when the cause is unknown."""
    for e in _chain(exc):
        text = f"{type(e).__name__}: {e}".lower()
        for cause, needles, hint in _CLASSES:
            if any(n in text for n in needles):
                return cause, hint
    return "error", "see the error text"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The original error's first line."""
    e = _chain(exc)[0]
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: " + (text[0] if text else ""))[:limit]
