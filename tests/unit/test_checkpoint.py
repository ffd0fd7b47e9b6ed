"""Checkpoints: atomic files, fall back past corrupt ones, safe loading, exact resume."""

import os
import pickle

import numpy as np
import orjson
import pytest
import torch

from learner.core.errors import ConfigError
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.service.checkpoint import Checkpointer, CheckpointError
from stream.event import decode_batch


def test_keeps_the_last_k_and_loads_the_newest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for i in range(4):
        ckpt.save({"i": i, "a": np.full(3, i)})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-0000000003.pt", "ckpt-0000000004.pt"]
    state = ckpt.load_latest()
    assert state["i"] == 3 and state["a"].tolist() == [3, 3, 3]


def test_a_corrupt_checkpoint_is_reported_and_the_previous_used(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"i": 1})
    newest = ckpt.save({"i": 2})
    newest.write_bytes(newest.read_bytes()[:40])  # truncated
    assert ckpt.load_latest()["i"] == 1
    assert "cannot be read" in caplog.text


def test_arbitrary_pickles_are_refused(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"i": 1})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "ckpt-0000000002.pt").write_bytes(pickle.dumps({"i": Evil()}, protocol=2))
    assert ckpt.load_latest()["i"] == 1  # the pickle was not executed, the older one used


def test_unwritable_folder_raises_and_recovers(tmp_path):
    folder = tmp_path / "ckpt"
    folder.write_text("not a folder")  # unwritable even for root, unlike chmod
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        Checkpointer(folder).save({"i": 1})
    folder.unlink()
    assert Checkpointer(folder).save({"i": 2}).exists()
    assert [p.name for p in folder.iterdir()] == ["ckpt-0000000001.pt"]


def _batches(seed=0, n=4000, size=500):
    rng = np.random.default_rng(seed)
    values = [
        orjson.dumps({"user_id": int(u), "video_id": f"v{int(v)}", "play_ms": int(p),
                      "duration_ms": 10_000, "ts_ms": i * 1000, "context": {"explicit": 1}})
        for i, (u, v, p) in enumerate(zip(rng.integers(0, 2500, n), rng.integers(0, 1500, n),
                                          rng.integers(0, 20_000, n), strict=True))
    ]
    return [decode_batch(values[i : i + size]) for i in range(0, n, size)]


@pytest.mark.parametrize("settings", [
    LearnerSettings(dim=8),
    LearnerSettings(dim=8, model="neumf", loss="idl", meta="ig", num_neg=1),
    LearnerSettings(dim=8, model="deepfm", loss="rce", num_neg=2, sampler="popularity"),
])
def test_resume_from_a_checkpoint_gives_the_same_model(tmp_path, settings):
    batches = _batches()
    whole = OnlineLearner(settings)
    for b in batches[:3]:
        whole.learn_many(b)
    Checkpointer(tmp_path).save({"learner": whole.state_dict()})
    for b in batches[3:]:  # tables grow in here: new rows come from the saved torch RNG
        whole.learn_many(b)
    resumed = OnlineLearner(settings)
    resumed.load_state_dict(Checkpointer(tmp_path).load_latest()["learner"])
    for b in batches[3:]:
        resumed.learn_many(b)
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert whole.evaluator.values()[("run", "dwell")] == resumed.evaluator.values()[
        ("run", "dwell")]


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    gmf = OnlineLearner(LearnerSettings(dim=8))
    with pytest.raises(ConfigError, match="same --model and --dim"):
        OnlineLearner(LearnerSettings(dim=16)).load_state_dict(gmf.state_dict())
