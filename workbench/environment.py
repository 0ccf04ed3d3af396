"""Versions and the compute device, for the About box and the status bar.

Warns when the machine has an NVIDIA GPU that torch cannot use (a CPU-only torch build, or a driver
problem), the silent slowdown users of other tools ran into.
"""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeviceInfo", "device_info", "versions"]


@dataclass(frozen=True)
class DeviceInfo:
    """What training will run on, in words, and a warning when it is not what the hardware allows."""

    name: str
    detail: str
    warning: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.name.startswith(("CUDA", "MPS"))


def _nvidia_gpu_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def device_info() -> DeviceInfo:
    import torch

    from core.training import select_device

    device = select_device("auto")
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(f"CUDA:{index}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    if device.type == "mps":
        return DeviceInfo("MPS", "Apple GPU (Metal)")
    threads = torch.get_num_threads()
    detail = f"{platform.processor() or platform.machine()}, {threads} threads"
    if _nvidia_gpu_present():
        reason = ("this torch build has no CUDA support (it is a CPU-only build)" if torch.version.cuda is None
                  else f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot initialise it; check the driver")
        return DeviceInfo("CPU", detail, f"An NVIDIA GPU is present but {reason}. Training runs on the CPU, much slower. "
                          "Install a CUDA build of torch to use the GPU.")
    return DeviceInfo("CPU", detail)


def versions() -> dict[str, str]:
    import numpy
    import pyqtgraph
    import PySide6
    import torch
    from PySide6.QtCore import qVersion

    import core

    return {
        "mmvae-workbench": core.__version__,
        "Python": sys.version.split()[0],
        "PySide6": PySide6.__version__,
        "Qt": qVersion(),
        "pyqtgraph": pyqtgraph.__version__,
        "torch": torch.__version__,
        "NumPy": numpy.__version__,
        "Platform": platform.platform(),
    }
