"""What the contract tests share: the installed vLLM release, vLLM's CPU platform on a machine without a
GPU (in this process, and for a ``python -m cgwatch`` subprocess), and reading vLLM's installed source.

Nothing here imports vllm at import time (the default test env has none: conftest imports this module).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent


def _release() -> tuple[int, int] | None:
    try:
        text = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None
    m = re.match(r"\s*v?(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


# (major, minor) of the installed vllm, e.g. (0, 26); None without vllm. Every version-aware
# expectation in these tests branches on it and says what that release does.
RELEASE = _release()


def at_least(minor: int) -> bool:
    """The installed vLLM is 0.<minor> or newer."""
    return RELEASE is not None and RELEASE >= (0, minor)


def source(module: str) -> str:
    """The installed source of a vllm module, read, not imported (the model runners need a GPU stack)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    return pathlib.Path(spec.origin).read_text()


def vllm_honours_cpu_target() -> bool:
    """Does vLLM pick its CPU platform for VLLM_TARGET_DEVICE=cpu in a CUDA build? From 0.28 on
    (``cpu_platform_plugin``: ``is_cpu = envs.VLLM_TARGET_DEVICE == "cpu"``, vllm/platforms/__init__.py:164
    in 0.28, :178 in 0.29/0.30, :176 in 0.31-0.33; 0.30 also selects it before probing the other
    plugins). 0.26 and 0.27 detect CPU only from a "cpu" version suffix or macOS, so on a CUDA build
    without a GPU they find no platform (UnspecifiedPlatform, device_type "")."""
    return "VLLM_TARGET_DEVICE" in source("vllm.platforms")


def use_cpu_platform() -> None:
    """Give vLLM its CPU platform when VLLM_TARGET_DEVICE=cpu, no GPU is visible and vLLM did not pick
    one itself (0.26/0.27, see vllm_honours_cpu_target), the way vLLM resolves one: the module's
    current platform, set before anything reads it. A no-op everywhere else."""
    try:
        import torch
        import vllm.platforms as platforms
    except Exception:
        return
    current = getattr(platforms, "_current_platform", None)
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu" and not torch.cuda.is_available() \
            and (current is None or not getattr(current, "device_type", None)) and not vllm_honours_cpu_target():
        from vllm.platforms.cpu import CpuPlatform
        platforms._current_platform = CpuPlatform()


def cgwatch_command(*args: str) -> list[str]:
    """``python -m cgwatch ARGS`` where vLLM finds its CPU platform itself; on 0.26/0.27 the same CLI
    entry (``cgwatch.cli.main``) run after use_cpu_platform() in the subprocess (vLLM resolves its
    platform in each process, and a CUDA build of 0.26/0.27 ignores VLLM_TARGET_DEVICE=cpu)."""
    if vllm_honours_cpu_target():
        return [sys.executable, "-m", "cgwatch", *args]
    # vllm is imported the way cgwatch imports it (its version gate and its logging stream setting
    # first), then given the CPU platform, then the command line runs as `python -m cgwatch` would
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import support\n"
            "from cgwatch.backends.vllm_version import import_vllm\n"
            "try:\n    import_vllm()\nexcept Exception:\n    pass\n"
            "support.use_cpu_platform()\n"
            "from cgwatch.cli import main\nsys.exit(main())")
    return [sys.executable, "-c", code, *args]


def keep_graph_config_on_cpu(monkeypatch) -> None:
    """vLLM's CPU platform turns CUDA graphs and async scheduling off in its config hook: keep what
    vLLM resolved before the hook, so config resolution goes as on a GPU (its capture list, its
    cudagraph_mode, the batch queue)."""
    from vllm.platforms import current_platform

    cls = type(current_platform)
    original = cls.check_and_update_config.__func__

    def keep_graph_config(klass, vllm_config):
        cc, sc = vllm_config.compilation_config, vllm_config.scheduler_config
        sizes, mode, async_scheduling = cc.cudagraph_capture_sizes, cc.cudagraph_mode, sc.async_scheduling
        original(klass, vllm_config)
        cc.cudagraph_capture_sizes, cc.cudagraph_mode = sizes, mode
        sc.async_scheduling = async_scheduling

    monkeypatch.setattr(cls, "support_static_graph_mode", classmethod(lambda klass: True))
    monkeypatch.setattr(cls, "check_and_update_config", classmethod(keep_graph_config))


def cpu_default_cudagraph_mode() -> str:
    """The cudagraph_mode vLLM resolves by default under keep_graph_config_on_cpu. O2 asks for
    FULL_AND_PIECEWISE in every release; the CPU platform's hook sets the compilation mode to
    DYNAMO_TRACE_ONCE (not VLLM_COMPILE). 0.30 on run ``_normalize_piecewise_cudagraph_mode`` again
    after the platform hook (config/vllm.py:1844 in 0.30, :2083 in 0.33), which drops the piecewise
    part: FULL_DECODE_ONLY. 0.26-0.29 check piecewise compatibility only before the hook
    (config/vllm.py:1276 in 0.26), so FULL_AND_PIECEWISE stays."""
    return "FULL_DECODE_ONLY" if at_least(30) else "FULL_AND_PIECEWISE"
