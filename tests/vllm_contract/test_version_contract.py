"""The version gate and the pyproject extras against the installed vllm."""

import importlib.metadata
import pathlib
import re
import tomllib

import pytest

vllm = pytest.importorskip("vllm")

from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

from cgwatch.backends import vllm_version as V  # noqa: E402
from cgwatch.errors import CgwatchError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTSIDE = ("vllm {v} is not supported: cgwatch's vLLM backend supports vllm >=0.26.0,<0.34, i.e. 0.26.x to 0.33.x "
           "(pip install 'cgwatch[vllm]' (vllm 0.33) or 'cgwatch[vllm026]' (vllm 0.26))")


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_installed_vllm_is_in_the_tested_range():
    assert importlib.metadata.version("vllm") == vllm.__version__
    assert V.require_vllm() == vllm.__version__
    assert V.import_vllm() is vllm
    assert Version(vllm.__version__) in SpecifierSet(V.SUPPORTED_SPEC)


@pytest.mark.parametrize("fake", ["0.26.0", "0.27.1", "0.29.3", "0.32.0", "0.33.0", "0.33.1+cu130"])
def test_a_version_in_the_range_passes_the_gate(monkeypatch, fake):
    monkeypatch.setattr(V.importlib.metadata, "version", lambda name: fake)
    assert V.require_vllm() == fake
    assert V.import_vllm() is vllm


@pytest.mark.parametrize("fake", ["0.25.2", "0.34.0", "0.34.1", "1.0.0"])
def test_a_version_outside_the_range_is_one_clear_line(monkeypatch, fake):
    monkeypatch.setattr(V.importlib.metadata, "version", lambda name: fake)
    with pytest.raises(CgwatchError) as e:
        V.import_vllm()
    assert str(e.value) == OUTSIDE.format(v=fake)


def test_the_gate_and_the_spec_say_the_same_range():
    spec = SpecifierSet(V.SUPPORTED_SPEC)
    for minor in range(20, 40):
        v = f"0.{minor}.0"
        assert (Version(v) in spec) is (V.OLDEST <= (0, minor) <= V.NEWEST), v


def test_the_extras_pin_the_tested_pairs():
    """`vllm` is vLLM 0.33 with the torch it pins, `vllm026` vLLM 0.26 with its torch (wheel metadata:
    torch==2.14.0 for 0.33, torch==2.11.0 for 0.26); both inside the supported range."""
    ex = extras()
    assert ex["vllm"] == ["vllm>=0.33.0,<0.34", "torch==2.14.0"]
    assert ex["vllm026"] == ["vllm>=0.26.0,<0.27", "torch==2.11.0"]
    supported = SpecifierSet(V.SUPPORTED_SPEC)
    for name in ("vllm", "vllm026"):
        req = Requirement(ex[name][0])
        assert req.name == "vllm"
        lowest = Version(re.search(r">=([\d.]+)", str(req.specifier))[1])
        assert lowest in supported and Version(f"{lowest.major}.{lowest.minor}.99") in supported, name


def test_the_installed_pair_is_the_one_its_extra_pins():
    """This venv is one of the tested pairs: the extra covering the installed vLLM pins the torch that
    vLLM's own wheel requires, and that torch is installed."""
    installed = Version(vllm.__version__)
    covering = [reqs for reqs in extras().values()
                if reqs and Requirement(reqs[0]).name == "vllm" and installed in Requirement(reqs[0]).specifier]
    if not covering:
        pytest.skip(f"vllm {installed}: no extra pins this release (only 0.26 and 0.33 are tested pairs)")
    torch_pin = [r for r in covering[0] if Requirement(r).name == "torch"]
    wheel_pin = [r.replace(" ", "") for r in importlib.metadata.requires("vllm")
                 if Requirement(r).name == "torch" and not Requirement(r).marker]
    assert torch_pin == wheel_pin, (torch_pin, wheel_pin)
    torch_version = Version(importlib.metadata.version("torch"))
    assert torch_version.base_version == torch_pin[0].split("==")[1]
