"""NVML readings (nvidia-ml-py, imported as ``pynvml``), nvitop-style: every query goes through
``_q`` and any NVML failure -- NotSupported, NoPermission, a missing driver -- reads as None ("n/a")."""

from __future__ import annotations

try:
    import pynvml
except ImportError:  # the package is a dependency, but a broken install must not crash a run
    pynvml = None


def _q(fn, *args):
    try:
        return fn(*args)
    except Exception:  # pynvml.NVMLError and anything a broken driver throws
        return None


def _init() -> bool:
    try:
        pynvml.nvmlInit()
        return True
    except Exception:
        return False


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


class Nvml:
    """One GPU, found by the UUID torch reports for the CUDA device (so CUDA_VISIBLE_DEVICES is honoured)."""

    def __init__(self, torch_device=None):
        self.handle = None
        if pynvml is None or not _init():
            return
        uuid = None
        try:
            import torch
            if torch_device is not None and torch.cuda.is_available():
                uuid = str(torch.cuda.get_device_properties(torch_device).uuid)
        except Exception:
            uuid = None
        if uuid:
            self.handle = _q(pynvml.nvmlDeviceGetHandleByUUID, uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid)
        if self.handle is None and torch_device is not None:
            self.handle = _q(pynvml.nvmlDeviceGetHandleByIndex, 0)

    @property
    def available(self) -> bool:
        return self.handle is not None

    def static_info(self) -> dict:
        if not self.available:
            return {"gpu_name": None, "driver": None, "mem_total_bytes": None}
        mem = _q(pynvml.nvmlDeviceGetMemoryInfo, self.handle)
        return {"gpu_name": _text(_q(pynvml.nvmlDeviceGetName, self.handle)),
                "driver": _text(_q(pynvml.nvmlSystemGetDriverVersion)),
                "mem_total_bytes": mem.total if mem else None}

    def used_bytes(self) -> int | None:
        mem = _q(pynvml.nvmlDeviceGetMemoryInfo, self.handle) if self.available else None
        return mem.used if mem else None

    def sample(self) -> dict:
        """Utilization %, memory, power W, SM clock MHz; None for whatever NVML can't say."""
        if not self.available:
            return dict.fromkeys(("gpu_util", "mem_util", "mem_used_bytes", "mem_total_bytes", "power_w",
                                  "sm_clock_mhz"))
        h = self.handle
        util = _q(pynvml.nvmlDeviceGetUtilizationRates, h)
        mem = _q(pynvml.nvmlDeviceGetMemoryInfo, h)
        power = _q(pynvml.nvmlDeviceGetPowerUsage, h)
        return {"gpu_util": util.gpu if util else None, "mem_util": util.memory if util else None,
                "mem_used_bytes": mem.used if mem else None, "mem_total_bytes": mem.total if mem else None,
                "power_w": power / 1000.0 if power is not None else None,
                "sm_clock_mhz": _q(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)}
