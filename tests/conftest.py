import shutil
import tempfile

import pytest
import torch


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
