"""GMF's compiled steps (learner.core.backbones.gmf.steps) against the autograd ones."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.core.backbones import GMF, NeuMF
from learner.core.backbones.gmf.steps import GMFInverseGradient, GMFLossStep
from learner.core.errors import ConfigError
from learner.core.fast import make_inverse_gradient, make_loss_step
from learner.core.losses import make_loss
from learner.core.meta import InverseGradient, Pairs
from learner.core.optim import MixedAdam
from learner.core.settings import PAPER_SETTINGS, LearnerSettings
from tests.unit.twins import alternate_forced_branches, same_step


def gmf_settings(**settings) -> LearnerSettings:
    """The settings these tests were written for: the paper's GMF (the default is wide)."""
    return LearnerSettings(**{**PAPER_SETTINGS, **settings})



def _pair(seed: int, users: int = 40, items: int = 30) -> tuple[GMF, GMF, MixedAdam, MixedAdam]:
    torch.manual_seed(seed)
    model = GMF(dim=8, users=users, items=items)
    twin = copy.deepcopy(model)
    return model, twin, MixedAdam(model, lr=0.01), MixedAdam(twin, lr=0.01)


def _batch(gen: torch.Generator, users: int, items: int, n_vague: int = 24, n_meta: int = 16):
    """Random vague and meta pairs, ids repeating (as in a real batch), labels 0/1."""
    def pairs(n):
        return Pairs(torch.randint(0, users, (n,), generator=gen),
                     torch.randint(0, items, (n,), generator=gen))
    return pairs(n_vague), pairs(n_meta), torch.randint(0, 2, (n_meta,), generator=gen).float()


def _assert_same_state(a: GMF, b: GMF, opt_a: MixedAdam, opt_b: MixedAdam) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    for o_a, o_b in zip(opt_a.optimizers, opt_b.optimizers, strict=True):
        for p_a, p_b in zip(o_a.param_groups[0]["params"], o_b.param_groups[0]["params"],
                            strict=True):
            s_a, s_b = o_a.state[p_a], o_b.state[p_b]
            assert s_a.keys() == s_b.keys()
            for key in s_a:
                if torch.is_tensor(s_a[key]):
                    assert s_a[key].dtype == s_b[key].dtype, key
                    torch.testing.assert_close(s_a[key], s_b[key], atol=1e-6, rtol=1e-5)
                else:
                    assert s_a[key] == s_b[key], key


def _run_both(lookahead: str, steps: int = 40, sync: bool = False):
    """Autograd and compiled IG steps on the same batches; with ``sync`` each compiled step starts
    from a copy of the autograd side's state. Yields (branches, parameter pairs) per step."""
    model, twin, opt, opt_twin = _pair(0)
    slow = InverseGradient(model, opt, sample_lr=1e-2, lookahead=lookahead)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        if sync or _ == 0:
            twin = copy.deepcopy(model)
            opt_twin = MixedAdam(twin, lr=0.01)
            opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))
            fast = GMFInverseGradient(twin, opt_twin, sample_lr=1e-2, lookahead=lookahead)
        vague, meta, labels = _batch(gen, 40, 30)
        opt.zero_grad()
        yield same_step(slow, fast, vague, meta, labels), (model, twin, opt, opt_twin)


def test_compiled_step_follows_the_autograd_step_with_the_plain_look_ahead():
    steps = list(_run_both("sgd"))
    assert len({branch for branch, _ in steps}) >= 2  # the steps went more than one way
    _assert_same_state(*steps[-1][1])


def test_compiled_step_is_the_autograd_step_up_to_the_sign_steps_rounding():
    """The default look-ahead moves each coordinate by ``sample_lr * g / (|g| + 1e-8)``: where
    a row's gradient sums to about 1e-8 (contributions that nearly cancel), float32 rounding
    of ``g`` shows in the step. From the same state, all but a few coordinates per step agree
    to 1e-6, and none moves by more than ``sample_lr`` apart."""
    for _, (model, twin, _opt, _opt_twin) in _run_both("adam", sync=True):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            diff = (p - q).detach().abs()
            assert int((diff > 1e-6).sum()) <= 3 and float(diff.max()) <= 1e-2


def test_forced_branches_and_growing_tables_agree_and_the_state_is_torchs():
    """Each branch forced in turn; tables grown mid-run; the compiled steps alternate with
    autograd steps on the same model, so each must leave state the other can carry on."""
    model, twin, opt, opt_twin = _pair(2, users=8, items=8)
    gen = torch.Generator().manual_seed(3)
    alternate_forced_branches(model, twin, opt, opt_twin,
                              GMFInverseGradient(twin, opt_twin, lookahead="sgd"),
                              lambda: _batch(gen, *model.rows()))
    _assert_same_state(model, twin, opt, opt_twin)


def test_the_learner_takes_the_compiled_step_for_gmf_on_the_cpu_only():
    model = GMF(dim=4, users=8, items=8)
    opt = MixedAdam(model, lr=0.01)
    assert type(make_inverse_gradient(model, opt)) is GMFInverseGradient
    assert type(make_inverse_gradient(model, opt, kernel="torch")) is InverseGradient
    neumf = NeuMF(dim=4, users=8, items=8)
    assert type(make_inverse_gradient(neumf, MixedAdam(neumf, lr=0.01))) is InverseGradient
    with pytest.raises(ConfigError, match="kernel must be auto or torch"):
        make_inverse_gradient(model, opt, kernel="numpy")
    with pytest.raises(ConfigError, match="for GMF, not NeuMF"):
        GMFInverseGradient(neumf, MixedAdam(neumf, lr=0.01))


@pytest.mark.parametrize("loss_name", ["bce", "idl"])
def test_compiled_loss_step_is_the_autograd_step(loss_name):
    """The learner's plain step both ways, on batches with some, all and no vague events
    (with none genuine, BCE's zero gradient still steps the optimiser, as autograd's does)."""
    model, twin, opt, opt_twin = _pair(4)
    fast = make_loss_step(twin, opt_twin, loss_name)
    assert type(fast) is GMFLossStep
    loss_fn = make_loss(loss_name)
    gen = torch.Generator().manual_seed(5)
    for k in range(30):
        users = torch.randint(0, 40, (32,), generator=gen)
        items = torch.randint(0, 30, (32,), generator=gen)
        labels = torch.randint(0, 2, (32,), generator=gen).float()
        vague = torch.rand(32, generator=gen) < (0.5, 1.0, 0.0)[k % 3]
        opt.zero_grad()
        logits = model(users, items)
        expected = loss_fn(logits, labels, vague, k)
        expected.backward()
        opt.step()
        loss, lean = fast.step(users.numpy(), items.numpy(), None, labels.numpy(),
                               vague.numpy())
        assert loss == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-7)
        assert lean == int(((logits.detach() > 0) & vague).sum())
    _assert_same_state(model, twin, opt, opt_twin)


def test_the_compiled_loss_step_only_where_it_applies():
    model = GMF(dim=4, users=8, items=8)
    opt = MixedAdam(model, lr=0.01)
    assert make_loss_step(model, opt, "tce") is None  # no closed form here: autograd
    assert make_loss_step(model, opt, "bce", kernel="torch") is None
    neumf = NeuMF(dim=4, users=8, items=8)
    assert make_loss_step(neumf, MixedAdam(neumf, lr=0.01), "bce") is None
    with pytest.raises(ConfigError, match="bce or idl, not 'rce'"):
        GMFLossStep(model, opt, "rce")


def test_without_numba_gmf_trains_through_autograd(monkeypatch, caplog):
    from learner.core.backbones.gmf import steps as gmf_steps

    monkeypatch.setattr(gmf_steps, "kernels", None)
    monkeypatch.setattr(gmf_steps, "NO_KERNELS", "ImportError: no numba here")
    model = GMF(dim=4, users=8, items=8)
    opt = MixedAdam(model, lr=0.01)
    with caplog.at_level("WARNING", logger="learner.core.backbones.gmf.steps"):
        assert type(make_inverse_gradient(model, opt)) is InverseGradient
        assert make_loss_step(model, opt, "bce") is None
    assert "no numba here" in caplog.text and "autograd" in caplog.text
    with pytest.raises(ConfigError, match="need numba"):
        GMFInverseGradient(model, opt)


def test_a_step_that_has_run_follows_a_reloaded_checkpoint():
    """The compiled step keeps numpy views of the model's and optimiser's tensors; after a
    checkpoint loads into the same model and optimiser, it must train on the loaded state,
    exactly as a step built afresh on that state does."""
    model, twin, opt, opt_twin = _pair(3)
    fast = GMFInverseGradient(model, opt, lookahead="sgd")
    gen = torch.Generator().manual_seed(4)
    batches = [_batch(gen, 40, 30) for _ in range(15)]
    for vague, meta, labels in batches[:5]:
        fast.step(vague, meta, labels)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    for vague, meta, labels in batches[5:10]:  # steps the checkpoint does not hold
        fast.step(vague, meta, labels)
    model.load_state_dict(saved[0])
    opt.load_state_dict(copy.deepcopy(saved[1]))
    twin.load_state_dict(saved[0])
    opt_twin.load_state_dict(copy.deepcopy(saved[1]))
    fresh = GMFInverseGradient(twin, opt_twin, lookahead="sgd")
    for vague, meta, labels in batches[10:]:
        assert fast.step(vague, meta, labels) == fresh.step(vague, meta, labels)
    _assert_same_state(model, twin, opt, opt_twin)


def _batches(n_batches: int = 5, seed: int = 0):
    import numpy as np

    from stream.event import EventBatch

    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        n = int(rng.integers(20, 200))
        duration = rng.integers(1_000, 60_000, n)
        yield EventBatch(
            index=np.arange(n), user_id=rng.integers(0, 50, n).tolist(),
            video_id=rng.integers(0, 40, n).tolist(),
            play_ms=(duration * rng.uniform(0, 1.2, n)).astype(np.int64), duration_ms=duration,
            ts_ms=np.arange(n, dtype=np.int64) * 1_000, explicit=np.full(n, np.nan, np.float32),
            tab=np.full(n, -1, np.int64))


@pytest.mark.parametrize("setup", [{"loss": "idl", "meta": "ig", "num_neg": 1},
                                   {"loss": "bce"}, {"loss": "idl"}])
def test_a_micro_batch_s_steps_in_one_call_are_its_steps_one_by_one(setup):
    """The learner trains a micro-batch's steps in one compiled call (``train``); taken one
    call a step instead, the same batches give the same results and the same state."""
    import numpy as np

    from learner.core.trainer import OnlineLearner

    settings = gmf_settings(dim=8, train_batch=16, **setup)
    at_once, by_step = OnlineLearner(settings), OnlineLearner(settings)
    assert at_once._all_steps is not None
    by_step._all_steps = None  # the learner's step by step path
    for batch in _batches(6):
        a, b = at_once.learn_many(batch), by_step.learn_many(batch)
        assert (a.steps, a.branches, a.vague_positive, a.sampled) == (
            b.steps, b.branches, b.vague_positive, b.sampled)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        assert a.step_seconds.size == a.steps
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    if setup.get("meta") == "ig":
        assert len(a.branches) >= 2  # IG steps and plain ones (a step without genuine pairs)
    _assert_same_state(at_once.model, by_step.model, at_once.optimizer, by_step.optimizer)


def test_training_in_the_background_is_training_in_the_foreground(monkeypatch):
    """``learn_many(background=True)`` returns once the batch is scored; its training, done
    on a second thread, gives the same scores, results and state, and the model is never
    read (scores, checkpoints) before the training it waits for is done."""
    import numpy as np

    from learner.core import trainer
    from learner.core.trainer import OnlineLearner

    small = next(_batches(seed=1))
    learner = OnlineLearner(gmf_settings(dim=8, loss="bce"))
    assert learner.learn_many(small, background=True).steps > 0  # too small: foreground
    assert not learner.training
    monkeypatch.setattr(trainer, "BACKGROUND_MIN_PAIRS", 0)
    settings = gmf_settings(dim=8, train_batch=16, loss="idl", meta="ig", num_neg=1)
    fore, back = OnlineLearner(settings), OnlineLearner(settings)
    trained = []
    for batch in _batches():
        a, b = fore.learn_many(batch), back.learn_many(batch, background=True)
        assert back.training and b.steps == 0 and b.step_seconds.size == 0
        np.testing.assert_array_equal(a.scores, b.scores)  # scored after the last training
        assert b.sampled == a.sampled and b.counts == a.counts
        trained.append(a)
    assert back.training
    state = back.state_dict()  # waits for the training in progress
    assert not back.training and state["steps"] == fore.steps
    done = back.trained()
    assert [(r.steps, r.branches, r.vague_positive) for r in done] == [
        (r.steps, r.branches, r.vague_positive) for r in trained]
    assert [r.loss for r in done] == [r.loss for r in trained]
    assert back.trained() == []
    _assert_same_state(fore.model, back.model, fore.optimizer, back.optimizer)
    back.close()
    assert back._worker is None


def test_a_failure_of_the_background_training_is_raised_to_the_learner(monkeypatch):
    from learner.core import trainer
    from learner.core.trainer import OnlineLearner

    monkeypatch.setattr(trainer, "BACKGROUND_MIN_PAIRS", 0)
    learner = OnlineLearner(gmf_settings(dim=8, loss="bce"))
    batches = list(_batches(2))
    learner.learn_many(batches[0], background=True)
    learner.close()

    def broken(*args):
        raise RuntimeError("the kernel failed")

    learner._all_steps.plan = lambda *args: (broken, (None, None, None))
    learner.learn_many(batches[1], background=True)
    with pytest.raises(RuntimeError, match="the kernel failed"):
        learner.learn_many(batches[0])
    assert not learner.training
