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

import logging

import numpy as np
import torch

from learner.core.errors import ConfigError

logger = logging.getLogger(__name__)


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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random generators that draw on ``device``: torch's CPU generator always (new table
    rows on the CPU, and whatever torch draws on the host), and the device's own where it has
    one (on CUDA, new rows and dropout are drawn by the GPU's generator), for a checkpoint.

    >>> sorted(rng_state(torch.device("cpu")))
    ['cpu']
    """
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`rng_state`. A checkpoint of another kind of device restores the CPU's
    generator only: the device's own draws then differ from the run that wrote it (logged)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            logger.warning("the checkpoint holds no CUDA generator state (written on another "
                           "device): new rows on %s are drawn from a fresh generator", device)


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
