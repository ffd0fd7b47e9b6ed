"""The wide model's compiled steps (learner.core.backbones.wide.steps) against autograd's.

Each test runs the same batches through a model trained by the compiled step and a twin
trained by autograd (``kernel="torch"``), and asks for the same scores, parameters, count
buffers and optimiser state (SparseAdam's moments and step counts on the bias rows,
Adagrad's sums and steps on the dense weights).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.core.backbones import GMF, Wide
from learner.core.backbones.wide.steps import WideInverseGradient, WideLossStep
from learner.core.errors import ConfigError
from learner.core.fast import make_inverse_gradient, make_loss_step
from learner.core.losses import make_loss
from learner.core.meta import InverseGradient, Pairs
from learner.core.optim import MixedAdam, ensure_rows
from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from stream.event import EventBatch
from tests.unit.test_gmf_steps import _assert_same_state as same_parameters_and_optimiser_state
from tests.unit.twins import alternate_forced_branches, grow_alike, same_step

SIZES = (24, 16, 16)


def _pair(seed: int, users: int = 40, items: int = 30):
    torch.manual_seed(seed)
    model = Wide(users=users, items=items, feature_sizes=SIZES)
    twin = copy.deepcopy(model)
    return model, twin, MixedAdam(model, lr=0.01), MixedAdam(twin, lr=0.01)


def _assert_same_state(a: Wide, b: Wide, opt_a: MixedAdam, opt_b: MixedAdam) -> None:
    """GMF's comparison of parameters and optimiser state, and the count buffers."""
    same_parameters_and_optimiser_state(a, b, opt_a, opt_b)
    for (name, p), q in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def _pairs(gen: torch.Generator, users: int, items: int, n: int = 48):
    """Random pairs (ids repeating, as in a real batch), context features, labels."""
    feats = torch.stack([torch.randint(0, size, (n,), generator=gen) for size in SIZES], 1)
    return (torch.randint(0, users, (n,), generator=gen),
            torch.randint(0, items, (n,), generator=gen), feats,
            torch.randint(0, 2, (n,), generator=gen).float())


def _autograd_step(model, opt, loss_fn, users, items, feats, labels, vague, step):
    opt.zero_grad()
    logits = model(users, items, feats)
    loss = loss_fn(logits, labels, vague, step)
    loss.backward()
    opt.step()
    return float(loss.detach()), int(((logits.detach() > 0) & vague).sum())


@pytest.mark.parametrize("loss_name", ["bce", "idl"])
def test_compiled_loss_step_is_the_autograd_step(loss_name):
    """Batches with some, all and no vague events; counts observed between steps, so the count
    features and their weights move; the tables grown mid-run (the compiled step must not
    keep views of the old tensors)."""
    model, twin, opt, opt_twin = _pair(4)
    fast = make_loss_step(twin, opt_twin, loss_name)
    assert type(fast) is WideLossStep
    loss_fn = make_loss(loss_name)
    gen = torch.Generator().manual_seed(5)
    for k in range(40):
        if k == 20:
            grow_alike(((model, opt), (twin, opt_twin)), 90, 70)
        users, items, feats, labels = _pairs(gen, *model.rows())
        vague = torch.rand(users.numel(), generator=gen) < (0.5, 1.0, 0.0)[k % 3]
        with torch.no_grad():
            expected_scores = torch.sigmoid(model(users, items, feats)).numpy()
        np.testing.assert_allclose(fast.scores(users.numpy(), items.numpy(), feats.numpy()),
                                   expected_scores, rtol=1e-5, atol=1e-6)
        expected = _autograd_step(model, opt, loss_fn, users, items, feats, labels, vague, k)
        loss, lean = fast.step(users.numpy(), items.numpy(), feats.numpy(), labels.numpy(),
                               vague.numpy())
        assert loss == pytest.approx(expected[0], rel=1e-5, abs=1e-7)
        assert lean == expected[1]
        for m in (model, twin):
            m.observe(users[~vague], items[~vague], labels[~vague])
    assert float(model.counts_weight.detach().abs().sum()) > 0  # the count weights were trained
    _assert_same_state(model, twin, opt, opt_twin)


def test_compiled_and_autograd_steps_take_turns_on_one_model():
    """Each leaves state the other carries on from: SparseAdam's int step counts and
    Adagrad's float32 ones, the moments and sums, as torch keeps them."""
    model, twin, opt, opt_twin = _pair(2, users=8, items=8)
    fast, loss_fn = WideLossStep(twin, opt_twin, "bce"), make_loss("bce")
    gen = torch.Generator().manual_seed(3)
    for k in range(20):
        users, items, feats, labels = _pairs(gen, 8, 8)
        vague = torch.rand(users.numel(), generator=gen) < 0.3
        _autograd_step(model, opt, loss_fn, users, items, feats, labels, vague, k)
        if k % 2:
            fast.step(users.numpy(), items.numpy(), feats.numpy(), labels.numpy(),
                      vague.numpy())
        else:
            _autograd_step(twin, opt_twin, loss_fn, users, items, feats, labels, vague, k)
    _assert_same_state(model, twin, opt, opt_twin)
    assert opt_twin.sparse.state[twin.user_bias.weight]["step"] == 20


def test_a_step_that_has_run_follows_a_reloaded_checkpoint():
    """The compiled step keeps numpy views of the model's and optimiser's tensors; after a
    checkpoint loads into the same model and optimiser, it must train on the loaded state,
    exactly as a step built afresh on that state does."""
    model, twin, opt, opt_twin = _pair(3)
    fast = WideLossStep(model, opt, "idl")
    gen = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(15):
        users, items, feats, labels = _pairs(gen, 40, 30)
        vague = torch.rand(users.numel(), generator=gen) < 0.4
        batches.append(tuple(t.numpy() for t in (users, items, feats, labels, vague)))
    for batch in batches[:5]:
        fast.step(*batch)
    model.observe(torch.from_numpy(batches[0][0]), torch.from_numpy(batches[0][1]),
                  torch.from_numpy(batches[0][3]))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    for batch in batches[5:10]:  # steps the checkpoint does not hold
        fast.step(*batch)
    for m, o in ((model, opt), (twin, opt_twin)):
        m.load_state_dict(saved[0])
        o.load_state_dict(copy.deepcopy(saved[1]))
    fresh = WideLossStep(twin, opt_twin, "idl")
    for batch in batches[10:]:
        assert fast.step(*batch) == fresh.step(*batch)
    _assert_same_state(model, twin, opt, opt_twin)


def _counted(model: Wide, twin: Wide, gen: torch.Generator) -> None:
    """The same counts in both (the look-ahead must read each row's own)."""
    users, items = model.rows()
    counted = (torch.randint(0, users, (400,), generator=gen),
               torch.randint(0, items, (400,), generator=gen),
               torch.randint(0, 2, (400,), generator=gen).float())
    for m in (model, twin):
        m.observe(*counted)


def _ig_batch(gen: torch.Generator, users: int, items: int):
    vague, meta = (Pairs(*_pairs(gen, users, items, n)[:3]) for n in (24, 16))
    return vague, meta, torch.randint(0, 2, (16,), generator=gen).float()


@pytest.mark.parametrize("lookahead", ["sgd", "adam"])
def test_compiled_ig_step_is_the_autograd_step(lookahead):
    """The same branches, meta losses and leanings step by step, and the same state after 30
    steps, counts observed as the learner does between steps."""
    model, twin, opt, opt_twin = _pair(6)
    slow = InverseGradient(model, opt, sample_lr=0.05, lookahead=lookahead)
    fast = WideInverseGradient(twin, opt_twin, sample_lr=0.05, lookahead=lookahead)
    gen = torch.Generator().manual_seed(7)
    branches = set()
    for _ in range(30):
        _counted(model, twin, gen)
        vague, meta, labels = _ig_batch(gen, 40, 30)
        branches.add(same_step(slow, fast, vague, meta, labels))
    assert len(branches) >= 2  # the steps went more than one way
    _assert_same_state(model, twin, opt, opt_twin)


def test_forced_ig_branches_and_growing_tables_agree_and_the_state_is_torchs():
    """Each branch forced in turn; tables grown mid-run; compiled and autograd IG steps take
    turns on one model, so each must leave state the other can carry on from."""
    model, twin, opt, opt_twin = _pair(8, users=8, items=8)
    gen = torch.Generator().manual_seed(9)

    def batch():
        _counted(model, twin, gen)
        return _ig_batch(gen, *model.rows())

    alternate_forced_branches(model, twin, opt, opt_twin,
                              WideInverseGradient(twin, opt_twin, lookahead="sgd"), batch)
    _assert_same_state(model, twin, opt, opt_twin)


def test_pairs_without_context_are_scored_and_trained_as_torch_does():
    """No context features (``feats`` None): no context terms, as ``Wide.forward`` without
    them (the steps benchmark's pairs)."""
    model, twin, opt, opt_twin = _pair(10)
    slow = InverseGradient(model, opt, lookahead="sgd")
    fast = WideInverseGradient(twin, opt_twin, lookahead="sgd")
    gen = torch.Generator().manual_seed(11)
    for _ in range(10):
        _counted(model, twin, gen)
        vague, meta, labels = _ig_batch(gen, 40, 30)
        vague, meta = Pairs(vague.users, vague.items), Pairs(meta.users, meta.items)
        with torch.no_grad():
            expected = torch.sigmoid(model(meta.users, meta.items)).numpy()
        np.testing.assert_allclose(fast.scores(meta.users.numpy(), meta.items.numpy(), None),
                                   expected, rtol=1e-5)
        assert slow.step(vague, meta, labels)[0] == fast.step(vague, meta, labels)[0]
    _assert_same_state(model, twin, opt, opt_twin)
    with pytest.raises(ValueError, match="both"):
        fast.step_rows(*(t.numpy() for t in (vague.users, vague.items)), np.zeros((24, 3)),
                       meta.users.numpy(), meta.items.numpy(), None, labels.numpy())


def test_compiled_counting_is_the_model_s_counting():
    """Counts, their moments and the priors estimated from them, as ``Wide.observe`` keeps
    them, rows repeating within a batch and the tables grown between batches."""
    model, twin, opt, opt_twin = _pair(12, users=16, items=8)
    fast = WideLossStep(twin, opt_twin, "bce")
    gen = torch.Generator().manual_seed(13)
    for k in range(12):
        if k == 6:
            for m, o in ((model, opt), (twin, opt_twin)):
                ensure_rows(m, o, 60, 50)
        users, items = model.rows()
        batch = (torch.randint(0, users, (80,), generator=gen),
                 torch.randint(0, items, (80,), generator=gen),
                 (torch.rand(80, generator=gen) < 0.3).float())
        model.observe(*batch)
        fast.observe(*(t.numpy() for t in batch))
        for name in ("user_counts", "item_counts", "moments", "prior"):
            torch.testing.assert_close(getattr(twin, name), getattr(model, name), msg=name)
    assert float(model.prior.min()) != 2.0  # estimated, not the starting prior


def test_the_compiled_step_only_where_it_applies():
    model = Wide(users=8, items=8)
    opt = MixedAdam(model, lr=0.01)
    assert make_loss_step(model, opt, "tce") is None  # no closed form here: autograd
    assert make_loss_step(model, opt, "bce", kernel="torch") is None
    assert type(make_inverse_gradient(model, opt)) is WideInverseGradient
    assert type(make_inverse_gradient(model, opt, kernel="torch")) is InverseGradient
    gmf = GMF(dim=4, users=8, items=8)
    with pytest.raises(ConfigError, match="for Wide, not GMF"):
        WideLossStep(gmf, MixedAdam(gmf, lr=0.01), "bce")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bce or idl, not 'rce'"):
        WideLossStep(model, opt, "rce")


def test_context_features_out_of_range_are_refused_not_read():
    model = Wide(users=8, items=8)
    fast = WideLossStep(model, MixedAdam(model, lr=0.01), "bce")
    rows = np.array([0, 1])
    with pytest.raises(ValueError, match="within the sizes"):
        fast.scores(rows, rows, np.array([[0, 0, 0], [24, 0, 0]]))
    with pytest.raises(ValueError, match="within the sizes"):
        fast.step(rows, rows, np.array([[0, -1, 0], [0, 0, 0]]), np.ones(2, np.float32),
                  np.zeros(2, bool))
    with pytest.raises(ValueError, match="shape"):
        fast.scores(rows, rows, np.zeros((2, 2), np.int64))


def _batches(n_batches: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        n = int(rng.integers(100, 400))
        duration = rng.integers(1_000, 60_000, n)
        users = rng.integers(0, 60, n)
        yield EventBatch(
            index=np.arange(n), user_id=users.tolist(),
            video_id=rng.integers(0, 50, n).tolist(),
            play_ms=(duration * rng.uniform(0, 1.2, n)).astype(np.int64), duration_ms=duration,
            ts_ms=rng.integers(0, 10**9, n), explicit=np.full(n, np.nan, np.float32),
            tab=rng.integers(-1, 20, n))


def _learners(**settings) -> dict[str, OnlineLearner]:
    return {k: OnlineLearner(LearnerSettings(model="wide", train_batch=64, kernel=k, **settings))
            for k in ("auto", "torch")}


@pytest.mark.parametrize("setup", [{"loss": "bce"}, {"loss": "idl", "num_neg": 1},
                                   {"loss": "idl", "meta": "ig", "num_neg": 1}])
def test_the_learner_learns_the_same_with_the_compiled_steps(setup):
    """The learner with ``kernel="auto"`` and ``kernel="torch"`` on the same batches (new ids
    arriving, so the tables grow): the same scores, results and state, counts included;
    and the distributed update log sees the same rows and the same bases."""
    learners = _learners(**setup)
    fast, slow = learners["auto"], learners["torch"]
    if "meta" in setup:
        assert type(fast.ig) is WideInverseGradient and type(slow.ig) is InverseGradient
        assert fast._all_steps is fast.ig
    else:
        assert type(fast.compiled_step) is WideLossStep and slow.compiled_step is None
        assert fast._all_steps is fast.compiled_step
    logs = {k: learner.log_updates() for k, learner in learners.items()}
    branches: set[str] = set()
    for batch in _batches(8):
        a, b = (learner.learn_many(batch) for learner in (fast, slow))
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
        assert (a.steps, a.vague_positive, a.sampled, a.counts, a.branches) == (
            b.steps, b.vague_positive, b.sampled, b.counts, b.branches)
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        branches.update(a.branches)
    assert fast.model.rows()[0] > 64  # grown
    if "meta" in setup:  # IG steps, the branches going more than one way
        assert len(branches - {"none"}) >= 2
    _assert_same_state(fast.model, slow.model, fast.optimizer, slow.optimizer)
    rows = {k: log.rows() for k, log in logs.items()}
    for kind in ("user", "item"):
        np.testing.assert_array_equal(rows["auto"][kind], rows["torch"][kind])
    for (name, kind, param, _), (_, _, twin, _) in zip(
            logs["auto"].tensors(), logs["torch"].tensors(), strict=True):
        if kind == "dense":
            continue
        union = rows["auto"][kind]
        for slot in (0, 1, 2) if name.endswith("bias") else (0,):
            bases = [log.row_base(name, slot, log.positions(kind, union), t.detach()[union])
                     for log, t in ((logs["auto"], param), (logs["torch"], twin))]
            torch.testing.assert_close(bases[0], bases[1], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("setup", [{"loss": "bce"}, {"loss": "idl", "meta": "ig", "num_neg": 1}])
def test_a_micro_batch_in_one_call_and_in_the_background_is_its_steps_one_by_one(
        monkeypatch, setup):
    """One compiled call for a batch's steps, that call on a second thread (the counting after
    it, there too), and one call a step: the same scores, results and state."""
    from learner.core import trainer

    monkeypatch.setattr(trainer, "BACKGROUND_MIN_PAIRS", 0)
    settings = LearnerSettings(model="wide", train_batch=32, **setup)
    at_once, by_step, back = (OnlineLearner(settings) for _ in range(3))
    by_step._all_steps = None  # the learner's step by step path
    for batch in _batches(6, seed=1):
        a, b = at_once.learn_many(batch), by_step.learn_many(batch)
        c = back.learn_many(batch, background=True)
        assert back.training and c.steps == 0
        assert (a.steps, a.vague_positive, a.branches) == (b.steps, b.vague_positive,
                                                           b.branches)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        np.testing.assert_array_equal(a.scores, c.scores)
    done = back.trained()
    assert [r.loss for r in done][-1] == a.loss
    for other in (by_step, back):
        _assert_same_state(at_once.model, other.model, at_once.optimizer, other.optimizer)
    back.close()
