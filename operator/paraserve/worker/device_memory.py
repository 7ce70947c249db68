"""What a rank holds in memory: activation peaks it accounts for, process RSS, device peaks."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch


class ActivationMeter:
    """Peak bytes of activation tensors alive at once, as the forward pass reports them.

    CPU has no allocator statistics, so the forward pass calls ``observe`` at each point
    where its working set peaks (the attention scores, the MLP's gated product) with every
    activation alive there; on GPU the device's own peak counters are exported as well.
    """

    def __init__(self) -> None:
        self.peak = 0

    def observe(self, *tensors: torch.Tensor) -> None:
        seen: set[int] = set()
        total = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
        self.peak = max(self.peak, total)


def process_rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak RSS the kernel reports."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class DevicePeaks:
    allocated: int
    reserved: int


def device_peaks(device: torch.device) -> DevicePeaks | None:
    """The CUDA caching allocator's peaks; None on CPU."""
    if device.type != "cuda":
        return None
    return DevicePeaks(
        allocated=torch.cuda.max_memory_allocated(device),
        reserved=torch.cuda.max_memory_reserved(device),
    )
