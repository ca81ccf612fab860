"""One line naming the hardware a measurement ran on (benchmark reports)."""
from __future__ import annotations

import os
import platform

import torch


def describe_hardware(device: str | torch.device) -> str:
    """GPU name and CUDA version, or CPU model, logical cores and torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
