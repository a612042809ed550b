"""Is a usable vLLM installed? The tested version range, the one-line messages, and the import.

Nothing here imports vllm until ``import_vllm()``: the default (pytorch) path never pays for it, and
``--backend vllm`` on a machine without it fails in one line before anything starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import importlib.util
import re
from dataclasses import dataclass

from cgwatch.errors import CgwatchError

OLDEST, NEWEST = (0, 26), (0, 33)   # vLLM's stat classes are not a stable interface: a tested range of minors
SUPPORTED_SPEC = ">=0.26.0,<0.34"
INSTALL_HINT = "pip install 'cgwatch[vllm]' (vllm 0.33) or 'cgwatch[vllm026]' (vllm 0.26)"


@dataclass(frozen=True)
class Adapter:
    """What differs between the supported releases, as cgwatch must handle it (one field a difference,
    each found in vLLM's own source of those releases; docs/VLLM.md lists them)."""
    version: tuple[int, int, int]
    # Model Runner V2 (the default for dense models from 0.26 on) fills SchedulerStats.cudagraph_stats
    # only from 0.30: on 0.26-0.29 cgwatch runs the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0) and says so.
    force_v1_runner: bool
    # 0.26-0.27: LLMEngine.step hands stat loggers only the steps that returned request output, so a
    # forward of prefill chunks alone is never reported; cgwatch reads those steps' SchedulerStats from
    # the engine core's output itself (0.28 on reports them).
    read_outputless_steps: bool

    @property
    def notes(self) -> list[str]:
        out = []
        if self.force_v1_runner:
            out.append(f"vLLM {'.'.join(map(str, self.version))}: Model Runner V2 reports no CUDA graph stats, "
                       f"so cgwatch runs the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0)")
        return out


def adapter_for(text: str) -> Adapter:
    """The adapter of a supported version (check_version first)."""
    v = parse_version(text)
    assert v is not None
    return Adapter(version=v, force_v1_runner=v[:2] < (0, 30), read_outputless_steps=v[:2] < (0, 28))


def parse_version(text: str) -> tuple[int, int, int] | None:
    """'0.33.0' / '0.33.1+cu130' / '0.33.0rc1.dev4' -> (0, 33, 0/1); None if it does not start with X.Y."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check_version(text: str) -> str:
    """The version text if it is in the tested range, else a CgwatchError naming the supported versions."""
    v = parse_version(text)
    if v is None or not OLDEST <= v[:2] <= NEWEST:
        raise CgwatchError(f"vllm {text} is not supported: cgwatch's vLLM backend supports vllm "
                           f"{SUPPORTED_SPEC}, i.e. 0.26.x to 0.33.x ({INSTALL_HINT})")
    return text


def installed_version() -> str:
    """vLLM's version from its package metadata, without importing it; a CgwatchError if it is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise CgwatchError(f"--backend vllm needs the vllm package, {SUPPORTED_SPEC} and the torch it pins: "
                           f"{INSTALL_HINT}")
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
    # vLLM logs to stdout by default: that is where cgwatch prints its tables, --json and the daemon's
    # "listening on" line; its log goes to stderr instead (a user's own setting wins)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except Exception as e:   # ImportError, or an OSError / RuntimeError from its compiled parts
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CgwatchError(f"vllm {version} is installed but does not import ({type(e).__name__}: {first[:200]}); "
                           f"reinstall: {INSTALL_HINT}") from e
    return vllm
