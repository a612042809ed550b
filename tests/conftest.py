import os
import shutil
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides at import whether it interprets: set before anything imports it, so the fused
    # kernels' tests (fixture triton_interpret) run them on the CPU. --kernels auto never picks the
    # interpreter, so nothing else changes.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def addr():
    """A daemon address of the test's own: a Unix socket in a fresh folder under /tmp."""
    d = tempfile.mkdtemp(prefix="cgw", dir="/tmp")   # short: Unix socket paths are limited to ~107 bytes
    yield f"unix:{d}/d.sock"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def triton_interpret():
    """The fused Triton kernels (engine/kernels.py) on CPU tensors, through Triton's interpreter
    (float32 / float16; CI has no GPU). Skips where Triton is not installed or not interpreting."""
    pytest.importorskip("triton")
    from cgwatch.engine import kernels as K
    if not K.interpreting():
        pytest.skip("Triton is not in interpreter mode here (a CUDA machine)")
    return K
