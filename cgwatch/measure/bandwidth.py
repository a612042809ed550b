"""Where the device's memory bandwidth is measured (for the HBM floor of a decode step).

A device-to-device copy of a large buffer, timed with CUDA events after a warm-up. Bytes moved count
both the read and the write (2 x the buffer), as the HBM floor counts bytes a step must read.
"""

from __future__ import annotations

import torch

COPY_BYTES = 1 << 30   # 1 GiB: far above any L2, and a few ms per copy on an H100


def copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, repeats: int = 10) -> float | None:
    """Bytes/s of a device-to-device copy (read + write), median of ``repeats``; None without CUDA."""
    if device.type != "cuda":
        return None
    try:
        src = torch.empty(nbytes, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
    except torch.OutOfMemoryError:
        return None
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    times.sort()
    return 2 * nbytes / times[len(times) // 2]
