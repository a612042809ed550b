"""Names the cause of a failed CUDA graph capture, with a fix hint.

Used by the engine for its per-bucket captures and by ``cgwatch check``. Two ways in:

- ``classify(exc)``: from the error text (CUDA/PyTorch messages: 900 = a host sync or other
  capture-unsafe call, 901 = capture invalidated, 904 = unjoined side-stream work, out of memory,
  "Cannot copy between CPU and CUDA tensors during CUDA graph capture").
- the op tables below: what ``cgwatch check``'s capture lint flags while it runs the callable eagerly.
  The text alone cannot tell a ``.item()`` from a ``nonzero`` (both are error 900); the lint can, so
  ``refines`` says when a lint finding may replace a text class.

No torch import here: the CLI imports this module at start-up.
"""

from __future__ import annotations

import re

HOST_SYNC = "host sync"
DATA_DEPENDENT = "data-dependent shape"
CPU_TENSOR = "cpu tensor"
HOST_DATA = "tensor from host data"
BAKED_VALUE = "python value baked in"
OOM = "out of memory"
UNJOINED = "unjoined side-stream work"
INVALIDATED = "capture invalidated"
STALE_OUTPUT = "output does not follow inputs"
OTHER = "error"

HINTS = {
    HOST_SYNC: "a value is read on the host during capture (.item(), .cpu(), .tolist(), .numpy(), float()/int()/bool() "
               "of a tensor, `if tensor:`, print(tensor)): keep the value on the GPU (torch.where, masks as "
               "multiplications) or read it outside the captured step",
    DATA_DEPENDENT: "the output shape depends on tensor values (nonzero, boolean-mask indexing, masked_select, unique, "
                    "bincount, repeat_interleave without output_size): use fixed-shape forms (torch.where, "
                    "x * mask, nonzero_static, repeat_interleave(..., output_size=N)) or pad to a static size",
    CPU_TENSOR: "a CPU tensor meets the GPU during capture (created without device=, .to(device)/.cuda() of a CPU "
                "tensor, a Python number assigned by indexing): create it on the GPU once, outside the step, "
                "and pass it in (or copy_ into a static GPU buffer before replay)",
    HOST_DATA: "torch.tensor/as_tensor/from_numpy builds a tensor from host data on every call: its host-to-GPU copy "
               "waits for the GPU and fails the capture (without device= it is a CPU tensor that meets the GPU), and "
               "a graph would keep the values seen at capture anyway: build it once outside and pass it in, or "
               "copy_ new values into a static GPU buffer before each replay",
    BAKED_VALUE: "a Python value that changes between calls (a counter, a global, a host-side computation) is an "
                 "argument here: the graph keeps the value seen at capture; pass it as a GPU tensor input instead",
    OOM: "the capture ran the device out of memory: capture fewer or smaller sizes, free memory first, "
         "or share one memory pool between graphs",
    UNJOINED: "work forked to another stream during capture must fork from the capture stream "
              "(side.wait_stream(torch.cuda.current_stream())) and join back "
              "(torch.cuda.current_stream().wait_stream(side)) before the capture ends",
    INVALIDATED: "an earlier capture-unsafe call (often a sync, or one from another thread) invalidated the capture",
    STALE_OUTPUT: "replay does not follow new inputs: the callable reads something that is not one of its static "
                  "inputs (a tensor built inside from host data, a .to(device) copy of a CPU tensor, a Python "
                  "value baked in at capture, or random ops): make every changing value a GPU input tensor",
    OTHER: "see the error text",
}

# (cause, regexes over "ExceptionType: message", lower case); the first class that matches wins, so
# the specific classes come before the broad ones.
_TEXTS = (
    (OOM, (r"out of memory", r"outofmemory", r"cudaerrormemoryallocation")),
    (UNJOINED, (r"unjoined", r"cudaerrorstreamcaptureunjoined", r"(error|code)\W{0,3}90[456]\b",
                r"dependency created on uncaptured work", r"depend on a capturing blocking stream",
                r"cudaerrorstreamcapture(isolation|implicit)")),
    (HOST_SYNC, (r"operation not permitted when stream is capturing", r"cudaerrorstreamcaptureunsupported",
                 r"capture_unsupported", r"operation not permitted", r"event last recorded in a capturing stream",
                 r"cudaerrorcapturedevent", r"(error|code)\W{0,3}90[07]\b")),
    (CPU_TENSOR, (r"cannot copy between cpu and cuda tensors during cuda graph capture",
                  r"expected all tensors to be on the same device", r"found at least two devices", r"cpu tensor")),
    (DATA_DEPENDENT, (r"data[- ]dependent", r"dynamic output shape", r"dynamicoutputshape")),
    (INVALIDATED, (r"invalidated", r"previous error during capture", r"(error|code)\W{0,3}901\b")),
)

# Which lint finding may stand in for a text class: a 900 says "sync" but the lint knows whether it
# was an .item() or a nonzero; the copy error says "CPU<->GPU copy" but not which way.
_REFINABLE = {HOST_SYNC, CPU_TENSOR, INVALIDATED, OTHER}
_FAILING_CAUSES = {HOST_SYNC, DATA_DEPENDENT, CPU_TENSOR, HOST_DATA}


def refines(text_cause: str, finding_cause: str) -> bool:
    """May a lint finding of ``finding_cause`` replace the text class ``text_cause`` of a failure?"""
    return text_cause in _REFINABLE and finding_cause in _FAILING_CAUSES


# -- the capture lint's op tables (aten overload packet names) ------------------------------------
HOST_SYNC_OPS = frozenset({"item", "_local_scalar_dense", "is_nonzero", "equal", "allclose"})
DATA_DEPENDENT_OPS = frozenset({"nonzero", "nonzero_numpy", "argwhere", "masked_select", "_unique", "_unique2",
                                "unique_dim", "unique_consecutive", "unique_dim_consecutive", "bincount"})
COPY_OPS = frozenset({"_to_copy", "to", "copy_", "_copy_from", "_copy_from_and_resize"})
INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index",
                       "_unsafe_index_put"})


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised during, original first (a failed capture body is often
    masked by the capture_end error that the graph context raises on exit)."""
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out[::-1]


def original(exc: BaseException) -> BaseException:
    """The first exception of the chain: the one raised where the capture really failed."""
    return _chain(exc)[0]


def classify_text(text: str) -> str:
    """The cause class of one error text; OTHER when none matches."""
    text = text.lower()
    for cause, patterns in _TEXTS:
        if any(re.search(p, text) for p in patterns):
            return cause
    return OTHER


def classify(exc: BaseException) -> tuple[str, str]:
    """(cause, hint) for a capture exception; ("error", hint) when the cause is unknown."""
    for e in _chain(exc):
        cause = classify_text(f"{type(e).__name__}: {e}")
        if cause != OTHER:
            return cause, HINTS[cause]
    return OTHER, HINTS[OTHER]


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The original error's first line."""
    e = _chain(exc)[0]
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: " + (text[0] if text else ""))[:limit]
