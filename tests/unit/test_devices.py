"""Device selection and the host-to-device copy, exercised on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner import devices
from stream.errors import ConfigError


def test_auto_takes_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_and_nonsense_are_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        devices.resolve_device("cuda")
    with pytest.raises(ConfigError, match="expected cpu"):
        devices.resolve_device("gpu-please")


def test_cpu_transfer_is_a_view_without_pinning():
    array = np.arange(6, dtype=np.int64)
    tensor = devices.to_device(array, torch.device("cpu"))
    assert not tensor.is_pinned()
    array[0] = 42
    assert tensor[0].item() == 42  # shares the numpy buffer: no copy on the CPU


def test_cuda_transfer_pins_and_does_not_block(monkeypatch):
    """The CUDA branch, run on the CPU with the two torch calls it makes recorded."""
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    real_to = torch.Tensor.to

    def fake_to(self, device, non_blocking=False):
        calls.append(("to", torch.device(device).type, non_blocking))
        return real_to(self, "cpu")

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    out = devices.to_device(np.ones(3, dtype=np.float32), torch.device("cuda", 0))
    assert calls == ["pin", ("to", "cuda", True)]
    assert out.tolist() == [1.0, 1.0, 1.0]
