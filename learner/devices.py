"""Where the model runs: device choice and host-to-device copies.

``--device auto`` takes the GPU when torch sees one, else the CPU. Batches are built on the
host with numpy; on CUDA they are copied from pinned (page-locked) memory with
``non_blocking=True``, so the copy overlaps the work already queued on the GPU. On the CPU a
tensor is a view of the numpy array: no copy at all.

>>> resolve_device("cpu")
device(type='cpu')
>>> transfer_plan(torch.device("cpu")), transfer_plan(torch.device("cuda", 0))
((False, False), (True, True))
"""

from __future__ import annotations

import numpy as np
import torch

from stream.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch sees no CUDA GPU here (use cpu or auto)")
    return device


def transfer_plan(device: torch.device) -> tuple[bool, bool]:
    """(pin the host copy, copy without blocking) for a transfer to ``device``."""
    on_gpu = device.type == "cuda"
    return on_gpu, on_gpu


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor of ``array`` on ``device``: a view on the CPU, a pinned async copy on CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    pin, non_blocking = transfer_plan(device)
    if pin:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=non_blocking)
