"""Device selection and the host-to-device copy, exercised on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.core import devices
from learner.core.errors import ConfigError


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


def test_the_generator_of_the_device_in_use_is_saved_and_restored(monkeypatch):
    cuda = {"state": torch.tensor([1, 2, 3], dtype=torch.uint8), "set": None}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: cuda.update(set=(state.tolist(), device)))
    gpu = torch.device("cuda", 1)
    saved = devices.rng_state(gpu)
    assert sorted(saved) == ["cpu", "cuda"] and saved["cuda"].tolist() == [1, 2, 3]
    expected = torch.rand(3)
    devices.set_rng_state(gpu, saved)
    assert cuda["set"] == ([1, 2, 3], gpu)
    assert torch.equal(torch.rand(3), expected)  # the CPU generator too


def test_a_cpu_checkpoint_on_a_gpu_restores_what_it_has_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("nothing to set"))
    devices.set_rng_state(torch.device("cuda"), devices.rng_state(torch.device("cpu")))
    assert "no CUDA generator state" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_resumed_gpu_learner_draws_the_same_new_rows():
    from learner.core.trainer import LearnerSettings, OnlineLearner

    learner = OnlineLearner(LearnerSettings(device="cuda"))
    state = learner.state_dict()
    first = torch.randn(4, device="cuda")
    learner.load_state_dict(state)
    assert torch.equal(torch.randn(4, device="cuda"), first)
