"""What a user gets from the package index: the sdist can run its own tests, the license is stated and
shipped, and a bench leaves no file behind unasked (tests/test_bench.py)."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_the_sdist_carries_its_tests_and_the_license(tmp_path):
    """Built with setuptools' own PEP 517 hook (what 'python -m build --sdist' calls), from a copy of the tree."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist"))
    out = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                          "print(b.build_sdist(sys.argv[1]))", str(tmp_path / "dist")],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "deprecated" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    with tarfile.open(tmp_path / "dist" / out.stdout.split()[-1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(next(n for n in tar.getnames() if n.endswith("/PKG-INFO")
                                        and n.count("/") == 1)).read().decode()
    needed = {"LICENSE", "tests/conftest.py", "tests/check_cases.py", "tests/fake_vllm.py",
              "tests/vllm_contract/conftest.py", "probes/capture_check.py",
              "tests/__snapshots__/test_tui/test_snapshot_replay.svg", "cgwatch/samples/llama1b_poisson_h100.jsonl"}
    assert needed <= names, needed - names
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")} <= names
    assert "License-Expression: Apache-2.0" in pkg_info and "License-File: LICENSE" in pkg_info


def test_license_is_apache_2_0_in_spdx_form():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0" and meta["project"]["license-files"] == ["LICENSE"]
    setuptools_min = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(setuptools_min.split(">=")[1].split(".")[0]) >= 77   # PEP 639: SPDX license + license-files


@pytest.mark.skipif(not (ROOT / ".gitignore").exists(), reason="a git checkout (an sdist has no .gitignore)")
def test_gitignore_covers_bench_traces():
    assert "bench-*.jsonl" in (ROOT / ".gitignore").read_text().split()


def _bounds() -> dict[str, str]:
    """name -> lower bound of every requirement with one (runtime and test), from pyproject.toml."""
    import re
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in meta["dependencies"] + meta["optional-dependencies"]["test"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", req.split(";")[0].strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


@pytest.mark.skipif(not (ROOT / ".ci" / "minimums.txt").exists(), reason="a git checkout (CI's own files)")
def test_ci_tests_the_declared_minimums():
    """.ci/minimums.txt pins every lower bound pyproject declares (but torch, CI's CPU build, and transformers,
    whose own needs are newer), at that very version, so CI's minimums job tests what users may install."""
    pins = {}
    for line in (ROOT / ".ci" / "minimums.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    bounds = _bounds()
    assert set(pins) == set(bounds) - {"torch", "transformers"}
    norm = lambda v: tuple(int(x) for x in v.split("."))   # noqa: E731
    for name, version in pins.items():
        assert norm(version) + (0,) * (3 - len(norm(version))) == norm(bounds[name]) + (0,) * (3 - len(norm(bounds[name]))), name
    assert "minimums.txt" in (ROOT / ".ci" / "run").read_text()
