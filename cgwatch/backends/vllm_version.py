"""Is a usable vLLM installed? The tested version range, the one-line messages, and the import.

Nothing here imports vllm until ``import_vllm()``: the default (pytorch) path never pays for it, and
``--backend vllm`` on a machine without it fails in one line before anything starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from cgwatch.errors import CgwatchError

TESTED = (0, 33)                 # vLLM's stat classes are not a stable interface: pin the minor version
SUPPORTED_SPEC = ">=0.33.0,<0.34"
INSTALL_HINT = "pip install 'cgwatch[vllm]'"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """'0.33.0' / '0.33.1+cu130' / '0.33.0rc1.dev4' -> (0, 33, 0/1); None if it does not start with X.Y."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check_version(text: str) -> str:
    """The version text if it is in the tested range, else a CgwatchError naming the supported versions."""
    v = parse_version(text)
    if v is None or v[:2] != TESTED:
        raise CgwatchError(f"vllm {text} is not supported: cgwatch's vLLM backend is tested with vllm "
                           f"{SUPPORTED_SPEC} ({INSTALL_HINT} installs it)")
    return text


def installed_version() -> str:
    """vLLM's version from its package metadata, without importing it; a CgwatchError if it is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise CgwatchError(f"--backend vllm needs the vllm package: {INSTALL_HINT} "
                           f"(vllm {SUPPORTED_SPEC} and the torch it pins)")
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        raise CgwatchError(f"vllm is importable but has no package metadata: reinstall it with {INSTALL_HINT}") from None


def require_vllm() -> str:
    """Installed and in the tested range (no import yet): its version."""
    return check_version(installed_version())


def import_vllm():
    """Import vllm (checked first). A broken install (e.g. a torch that does not match its pin) is one line."""
    version = require_vllm()
    try:
        import vllm
    except Exception as e:   # ImportError, or an OSError / RuntimeError from its compiled parts
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CgwatchError(f"vllm {version} is installed but does not import ({type(e).__name__}: {first}); "
                           f"reinstall with {INSTALL_HINT}") from e
    return vllm
