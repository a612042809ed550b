"""The version gate against the installed vllm."""

import importlib.metadata

import pytest

vllm = pytest.importorskip("vllm")

from cgwatch.backends import vllm_version as V  # noqa: E402
from cgwatch.errors import CgwatchError  # noqa: E402


def test_installed_vllm_is_in_the_tested_range():
    assert importlib.metadata.version("vllm") == vllm.__version__
    assert V.require_vllm() == vllm.__version__
    assert V.import_vllm() is vllm


@pytest.mark.parametrize("fake", ["0.32.0", "0.34.1", "1.0.0"])
def test_a_version_outside_the_range_is_one_clear_line(monkeypatch, fake):
    monkeypatch.setattr(V.importlib.metadata, "version", lambda name: fake)
    with pytest.raises(CgwatchError) as e:
        V.import_vllm()
    msg = str(e.value)
    assert msg == (f"vllm {fake} is not supported: cgwatch's vLLM backend is tested with vllm >=0.33.0,<0.34 "
                   "(pip install 'cgwatch[vllm]' installs it)")


def test_the_extra_pins_the_tested_range():
    import pathlib
    import tomllib
    root = pathlib.Path(__file__).resolve().parents[2]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm{V.SUPPORTED_SPEC}"]
