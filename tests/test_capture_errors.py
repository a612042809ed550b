"""The capture-failure classifier (cgwatch/capture_errors.py), shared by the engine's per-bucket
captures and ``cgwatch check``."""

import pytest
import torch

from cgwatch import capture_errors as ce

# torch's text for a pageable CPU tensor copied during capture
COPY = "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU tensor is pinned."


def test_cause_names_are_the_strings_traces_carry():
    assert (ce.HOST_SYNC, ce.OOM, ce.UNJOINED, ce.INVALIDATED, ce.CPU_TENSOR, ce.OTHER) == (
        "host sync", "out of memory", "unjoined side-stream work", "capture invalidated", "cpu tensor", "error")


def chained(original: Exception, outer: Exception) -> Exception:
    try:
        try:
            raise original
        except Exception:
            raise outer
    except Exception as e:
        return e


@pytest.mark.parametrize("text, cause", [
    ("CUDA error: operation not permitted when stream is capturing", ce.HOST_SYNC),
    ("CUDA error 900: cudaErrorStreamCaptureUnsupported", ce.HOST_SYNC),
    ("CUDA error: operation not permitted on an event last recorded in a capturing stream", ce.HOST_SYNC),
    ("CUDA error: operation failed due to a previous error during capture", ce.INVALIDATED),
    ("cudaErrorStreamCaptureInvalidated (901)", ce.INVALIDATED),
    ("got CUDA error code 901", ce.INVALIDATED),
    ("CUDA error: capturing stream has unjoined work", ce.UNJOINED),
    ("CUDA error: dependency created on uncaptured work in another stream", ce.UNJOINED),
    ("CUDA error: operation would make the legacy stream depend on a capturing blocking stream", ce.UNJOINED),
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB", ce.OOM),
    ("CUDA error: out of memory", ce.OOM),
    (COPY, ce.CPU_TENSOR),
    ("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!", ce.CPU_TENSOR),
    ("Could not guard on data-dependent expression Eq(u0, 4)", ce.DATA_DEPENDENT),
    ("CUDA out of memory. Tried to allocate 904.00 MiB", ce.OOM),
    ("shape [905, 907] is invalid", ce.OTHER),
    ("something else", ce.OTHER),
])
def test_classify_text(text, cause):
    assert ce.classify(RuntimeError(text)) == (cause, ce.HINTS[cause])


def test_classify_by_exception_type():
    assert ce.classify(torch.OutOfMemoryError("Tried to allocate 9 GiB"))[0] == ce.OOM


def test_the_body_error_wins_over_capture_end_and_first_line_is_its_first_line():
    e = chained(RuntimeError(COPY + "\nmore"), RuntimeError("CUDA error: operation failed due to a previous error "
                                                            "during capture"))
    assert ce.classify(e)[0] == ce.CPU_TENSOR and ce.original(e).args[0].startswith("Cannot copy")
    assert ce.first_line(e) == "RuntimeError: " + COPY
    e = chained(ValueError("unrelated"), RuntimeError("capturing stream has unjoined work"))
    assert ce.classify(e)[0] == ce.UNJOINED                    # an unknown original falls through to the next


def test_every_cause_has_a_hint_and_refinement_is_limited():
    for cause in (ce.HOST_SYNC, ce.DATA_DEPENDENT, ce.CPU_TENSOR, ce.HOST_DATA, ce.BAKED_VALUE, ce.OOM, ce.UNJOINED,
                  ce.INVALIDATED, ce.STALE_OUTPUT, ce.OTHER):
        assert ce.HINTS[cause]
    assert ce.refines(ce.HOST_SYNC, ce.DATA_DEPENDENT) and ce.refines(ce.CPU_TENSOR, ce.HOST_SYNC)
    assert not ce.refines(ce.OOM, ce.HOST_SYNC) and not ce.refines(ce.UNJOINED, ce.HOST_SYNC)
    assert not ce.refines(ce.HOST_SYNC, ce.BAKED_VALUE)
