"""Measurement plumbing on the CPU: NVML failures read n/a, the sampler's GPU-busy fraction, the timer."""

import types

import pytest
import torch

from cgwatch.measure import nvml as nvml_mod
from cgwatch.measure.gpu_timer import StepTimer
from cgwatch.measure.host import HostStats
from cgwatch.measure.nvml import Nvml
from cgwatch.measure.sampler import Sampler


class NVMLError(Exception):
    pass


def broken(*a, **k):
    raise NVMLError("NotSupported")


def fake_pynvml(**overrides):
    ok = dict(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "h", nvmlDeviceGetHandleByUUID=lambda u: "h",
              nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87, memory=40),
              nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=5, total=80),
              nvmlDeviceGetPowerUsage=lambda h: 350_000, nvmlDeviceGetClockInfo=lambda h, c: 1980,
              nvmlDeviceGetName=lambda h: b"Fake GPU", nvmlSystemGetDriverVersion=lambda: "1.0", NVML_CLOCK_SM=1)
    ok.update(overrides)
    return types.SimpleNamespace(**ok)


def test_every_nvml_reading_works_through_the_fake(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml())
    n = Nvml(torch_device=0)
    assert n.sample() == {"gpu_util": 87, "mem_util": 40, "mem_used_bytes": 5, "mem_total_bytes": 80,
                          "power_w": 350.0, "sm_clock_mhz": 1980}
    assert n.static_info()["gpu_name"] == "Fake GPU"


@pytest.mark.parametrize("fn", ["nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
                                "nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo"])
def test_one_failing_query_reads_na_and_the_rest_still_work(monkeypatch, fn):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml(**{fn: broken}))
    s = Nvml(torch_device=0).sample()
    failed = {"nvmlDeviceGetUtilizationRates": ("gpu_util", "mem_util"),
              "nvmlDeviceGetMemoryInfo": ("mem_used_bytes", "mem_total_bytes"),
              "nvmlDeviceGetPowerUsage": ("power_w",), "nvmlDeviceGetClockInfo": ("sm_clock_mhz",)}[fn]
    assert all(s[k] is None for k in failed)
    assert all(v is not None for k, v in s.items() if k not in failed)


def test_no_driver_means_all_na(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml(nvmlInit=broken))
    n = Nvml(torch_device=0)
    assert not n.available and set(n.sample().values()) == {None} and n.used_bytes() is None


def test_sampler_gpu_busy_is_busy_ms_over_wall_ms():
    clock = iter([0.0, 1.0, 3.0])
    busy = iter([0.0, 500.0, 2500.0])
    recs = []
    s = Sampler(Nvml(None), HostStats(torch.device("cpu")), lambda: next(busy), lambda: next(clock), recs.append)
    assert s.sample()["gpu_busy"] == 0.5
    assert s.sample()["gpu_busy"] == 1.0
    cpu = Sampler(Nvml(None), HostStats(torch.device("cpu")), lambda: None, lambda: 1.0, recs.append).sample()
    assert cpu["gpu_busy"] is None and cpu["rss_bytes"] > 0 and cpu["torch_allocated_bytes"] is None


def test_cpu_timer_completes_at_once():
    t = StepTimer(torch.device("cpu"))
    t.start()
    assert t.stop("rec") == [("rec", None, None)]   # (payload, gpu_ms, gap_ms): no events on the CPU
    assert t.drain() == []


class _FakeEvent:
    """A CUDA event stand-in: record() stamps the fake stream clock; always complete."""
    clock = [0.0]

    def record(self):
        self.at = self.clock[0]

    def query(self):
        return True

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return other.at - self.at


def test_gap_chain_logic_with_fake_events():
    """gap = previous step's end to this step's start, only for steps issued back to back."""
    t = StepTimer(torch.device("cpu"))
    t.cuda = True
    t._events = lambda: (_FakeEvent(), _FakeEvent())
    clock = _FakeEvent.clock

    def step(name, start, end):
        clock[0] = start
        t.start()
        clock[0] = end
        return t.stop(name)

    assert step("a", 0.0, 2.0) == [("a", 2.0, None)]          # the first step: no gap
    assert step("b", 2.5, 4.0) == [("b", 1.5, 0.5)]           # back to back: 0.5 ms after a's end
    t.break_chain()                                           # a prefill or a command in between
    assert step("c", 9.0, 10.0) == [("c", 1.0, None)]
    assert step("d", 10.0, 11.0) == [("d", 1.0, 0.0)]
    assert t.drain() == []                                    # a sync: the next one has no gap
    assert step("e", 12.0, 13.0) == [("e", 1.0, None)]
    assert t.busy_ms == pytest.approx(6.5)
