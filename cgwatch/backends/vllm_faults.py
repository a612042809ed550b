"""Fault injection for the vLLM backend's GPU tests and probes: a graph capture that runs out of memory.

``capture_out_of_memory(times)`` patches vLLM's V1 model runner so that its next ``times`` graph
captures (None: all, while the context is open) start with every free byte of the GPU taken, which
makes the capture fail the way a real one does when the graphs do not fit. The memory is given back
when the capture returns or fails.
"""

from __future__ import annotations

import contextlib


def take_all_free_memory() -> list:
    """Allocate GPU memory in shrinking chunks until none is left (released when the list goes)."""
    import torch

    hog, chunk = [], 1 << 30
    while chunk >= (2 << 20):
        try:
            hog.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            chunk //= 4
    return hog


@contextlib.contextmanager
def capture_out_of_memory(times: int | None = None):
    import torch
    from vllm.v1.worker import gpu_model_runner

    runner = gpu_model_runner.GPUModelRunner
    original = runner.capture_model
    left = [times]

    def capture_model(self, *args, **kwargs):
        if left[0] is not None:
            if left[0] <= 0:
                return original(self, *args, **kwargs)
            left[0] -= 1
        hog = take_all_free_memory()
        try:
            return original(self, *args, **kwargs)
        finally:
            del hog
            torch.cuda.empty_cache()

    runner.capture_model = capture_model
    try:
        yield
    finally:
        runner.capture_model = original
