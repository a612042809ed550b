import pytest

from cgwatch.capture_errors import classify, first_line


def chained(original: Exception, outer: Exception) -> Exception:
    try:
        try:
            raise original
        except Exception:
            raise outer
    except Exception as e:
        return e


@pytest.mark.parametrize("exc, cause", [
    (RuntimeError("CUDA error: operation not permitted when stream is capturing"), "host sync"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
    (RuntimeError("Capture stream has unjoined work"), "unjoined side-stream work"),
    (RuntimeError("CUDA error: operation failed due to a previous error during capture / invalidated"),
     "capture invalidated"),
    (RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"), "cpu tensor"),
    (ValueError("something else"), "error"),
])
def test_causes(exc, cause):
    assert classify(exc)[0] == cause


def test_the_original_error_wins_over_the_capture_end_error():
    # what torch raises: the body's host sync, then capture_end's "invalidated" on exit
    e = chained(RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore"),
                RuntimeError("CUDA error: capture invalidated"))
    assert classify(e)[0] == "host sync"
    assert first_line(e) == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
