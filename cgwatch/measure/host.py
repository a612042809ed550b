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
