"""The learner's pieces: table growth, id maps, test-then-train."""

import numpy as np
import orjson
import torch

from learner.core.backbones import GMF
from learner.core.ids.idmap import IdMap
from learner.core.optim import MixedAdam, ensure_rows
from learner.core.prequential import auc_score
from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import LearnerSettings, OnlineLearner
from stream.event import decode_batch


def gmf_settings(**settings) -> LearnerSettings:
    """The settings these tests were written for: the paper's GMF (the default is wide)."""
    return LearnerSettings(**{**PAPER_SETTINGS, **settings})



def test_idmap_keeps_int_and_str_apart_and_round_trips():
    m = IdMap()
    assert m.lookup([7, "7", 7, "x"]).tolist() == [0, 1, 0, 2]
    assert m.lookup(["new"], add=False).tolist() == [-1]
    clone = IdMap()
    clone.load_state_dict(m.state_dict())
    assert clone.lookup(["x", 7], add=False).tolist() == [2, 0]


def test_growth_keeps_rows_and_adam_state():
    torch.manual_seed(0)
    model = GMF(dim=4, users=2, items=2)
    opt = MixedAdam(model, lr=0.1)
    loss = model(torch.tensor([0, 1]), torch.tensor([1, 0])).sum()
    loss.backward()
    opt.step()
    before = model.user.weight.detach().clone()
    state_before = opt.sparse.state[model.user.weight]["exp_avg"].clone()
    ensure_rows(model, opt, users=5, items=2)
    assert model.user.weight.shape == (8, 4) and model.rows() == (8, 2)
    assert torch.equal(model.user.weight[:2], before)
    state = opt.sparse.state[model.user.weight]
    assert state["exp_avg"].shape == (8, 4) and torch.equal(state["exp_avg"][:2], state_before)
    assert opt.sparse.param_groups[0]["params"][0] is model.user.weight
    # the grown table still trains, new rows included
    opt.zero_grad()
    model(torch.tensor([6]), torch.tensor([1])).sum().backward()
    row = model.user.weight[6].detach().clone()
    opt.step()
    assert not torch.equal(model.user.weight[6], row)


def _events(n, rng):
    users, videos = rng.integers(0, 30, n), rng.integers(0, 40, n)
    like = (users % 2) == (videos % 2)
    play = np.where(like, 20_000, 500)
    return [
        orjson.dumps({"user_id": int(u), "video_id": int(v), "play_ms": int(p),
                      "duration_ms": 20_000, "ts_ms": i, "context": {"explicit": int(k)}})
        for i, (u, v, p, k) in enumerate(zip(users, videos, play, like, strict=True))
    ]


def test_learner_scores_before_training_and_learns_a_pattern():
    rng = np.random.default_rng(0)
    learner = OnlineLearner(gmf_settings(dim=8, lr=0.05, train_batch=32))
    first = decode_batch(_events(256, rng))
    before = learner.predict_many(first.user_id, first.video_id)
    result = learner.learn_many(first)
    assert result.counts == {"positive": int((first.play_ms >= 20_000).sum()),
                             "negative": int((first.play_ms < 20_000).sum()), "vague": 0}
    assert result.steps == 8
    # the first batch was scored with the untrained model (exact window AUC of its scores)
    labels = (first.play_ms >= 20_000).astype(int)
    assert learner.evaluator.values()[("short", "dwell")] == auc_score(before, labels)
    for _ in range(30):
        learner.learn_many(decode_batch(_events(256, rng)))
    assert learner.evaluator.values()[("short", "explicit")] > 0.9


def test_vague_events_and_sampled_items_are_trained_with_ig():
    import pytest as _pytest

    from learner.core.errors import ConfigError

    rng = np.random.default_rng(1)
    learner = OnlineLearner(gmf_settings(dim=8, loss="idl", meta="ig", num_neg=2,
                                            train_batch=32))
    total = 0
    for _ in range(5):
        batch = decode_batch(_events(200, rng))
        result = learner.learn_many(batch)
        total += sum(result.branches.values())
        assert sum(result.branches.values()) == result.steps
        assert result.sampled > 300  # ~2 per event, few dropped
        assert 0 <= result.vague_positive <= result.vague_total == result.sampled
        assert result.scores.shape == (200,)
    assert total == learner.steps
    with _pytest.raises(ConfigError, match="loss=idl"):
        OnlineLearner(gmf_settings(meta="ig", loss="bce"))


def test_max_steps_trains_a_full_micro_batch_in_fewer_larger_steps():
    rng = np.random.default_rng(2)
    capped = OnlineLearner(gmf_settings(dim=8, lr=0.05, train_batch=32, max_steps=3))
    assert capped.learn_many(decode_batch(_events(256, rng))).steps == 3  # not 8
    assert capped.learn_many(decode_batch(_events(40, rng))).steps == 2  # small: as before
    for _ in range(30):
        capped.learn_many(decode_batch(_events(256, rng)))
    assert capped.evaluator.values()[("short", "explicit")] > 0.9  # still learns


def test_row_sparse_adam_is_torch_sparse_adam_bit_for_bit():
    """learner.core.optim.RowSparseAdam: torch's SparseAdam arithmetic on the gradient's rows, the
    same bits step after step (repeated rows in a gradient, a step without rows, state
    saved and loaded across the two)."""
    import copy

    import torch

    from learner.core.optim import RowSparseAdam

    torch.manual_seed(0)
    start = torch.randn(50, 4)
    mine, theirs = (torch.nn.Parameter(start.clone()) for _ in range(2))
    opts = RowSparseAdam([mine], lr=0.01), torch.optim.SparseAdam([theirs], lr=0.01)
    for step in range(12):
        n = 0 if step == 5 else 30
        rows = torch.randint(0, 50, (1, n))  # uncoalesced: rows repeat
        values = torch.randn(n, 4)
        for param in (mine, theirs):
            param.grad = torch.sparse_coo_tensor(rows, values, (50, 4))
        for opt in opts:
            opt.step()
        if step == 7:  # a checkpoint in between (a copy, as if read from disk): mine to torch
            fresh = torch.optim.SparseAdam([theirs], lr=0.01)
            fresh.load_state_dict(copy.deepcopy(opts[0].state_dict()))
            opts = opts[0], fresh
        assert torch.equal(mine, theirs), step
    for key in ("exp_avg", "exp_avg_sq", "step"):
        a, b = opts[0].state[mine][key], opts[1].state[theirs][key]
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_the_compiled_gmf_steps_learn_as_the_autograd_ones():
    """The learner with ``kernel="auto"`` (GMF's compiled steps) and with ``kernel="torch"``
    (autograd) on the same batches: the same parameters to float32 rounding for the plain
    losses; for IDL+IG the same branches and the same scores to 1e-3 (its sign-like look-ahead
    is steep where a gradient nearly cancels, see tests/unit/test_gmf_steps.py)."""
    from learner.core.backbones.gmf.steps import GMFInverseGradient, GMFLossStep
    from learner.core.meta import InverseGradient

    for setup in ({"loss": "bce"}, {"loss": "idl"}, {"loss": "idl", "meta": "ig", "num_neg": 1}):
        learners = {k: OnlineLearner(gmf_settings(dim=8, lr=0.05, train_batch=32, kernel=k,
                                                     **setup)) for k in ("auto", "torch")}
        fast, slow = learners["auto"], learners["torch"]
        if "meta" in setup:
            assert type(fast.ig) is GMFInverseGradient and type(slow.ig) is InverseGradient
        else:
            assert type(fast.compiled_step) is GMFLossStep and slow.compiled_step is None
        rng = np.random.default_rng(3)
        for _ in range(6):
            batch = decode_batch(_events(200, rng))
            results = {k: learner.learn_many(batch) for k, learner in learners.items()}
            assert results["auto"].branches == results["torch"].branches
            np.testing.assert_allclose(results["auto"].scores, results["torch"].scores,
                                       atol=1e-3 if "meta" in setup else 1e-6)
        if "meta" not in setup:
            for p, q in zip(fast.model.parameters(), slow.model.parameters(), strict=True):
                torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
