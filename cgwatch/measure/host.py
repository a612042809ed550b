"""Host-side readings: this process's CPU% and RSS (psutil) and the torch caching allocator."""

from __future__ import annotations

import psutil
import torch


class HostStats:
    def __init__(self, device: torch.device):
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # first call primes the counter
        self.cuda = device.type == "cuda"
        self.device = device

    def sample(self) -> dict:
        try:
            cpu, rss = self.proc.cpu_percent(None), self.proc.memory_info().rss
        except psutil.Error:
            cpu = rss = None
        alloc = torch.cuda.memory_allocated(self.device) if self.cuda else None
        reserved = torch.cuda.memory_reserved(self.device) if self.cuda else None
        return {"cpu_pct": cpu, "rss_bytes": rss, "torch_allocated_bytes": alloc, "torch_reserved_bytes": reserved}


def cpu_seconds_by_pid(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every process but ``exclude`` (benchmarks: what competes for the
    machine). Per-process times are exact; /proc/stat's machine totals are tick-sampled and alias with
    a periodic loop, so the competition is summed process by process."""
    out = {}
    for p in psutil.process_iter():
        if p.pid not in exclude:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
    return out
