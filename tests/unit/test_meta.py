"""IG: the fast step equals a plain, slow implementation (copies, fresh Adam, winner)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from learner.core.backbones import BACKBONES
from learner.core.features import FEATURE_SIZES
from learner.core.losses import idl_weights, inverse_dual_loss
from learner.core.meta import BRANCHES, InverseGradient, Pairs
from learner.core.optim import MixedAdam


def slow_ig(model, optimizer, vague, meta, labels, sample_lr, branch=None):
    """The reference's way: deep copies, a fresh optimiser per copy, step, compare, load."""
    candidates = {"original": model}
    for name, sign in (("forward", 1.0), ("inverse", -1.0)):
        twin = copy.deepcopy(model)
        for table in twin.modules():
            if isinstance(table, torch.nn.Embedding):
                table.sparse = False  # dense embeddings and one Adam, as in the reference code
        opt = torch.optim.Adam(twin.parameters(), lr=sample_lr)
        opt.zero_grad()
        loss = sign * inverse_dual_loss(twin(vague.users, vague.items, vague.feats)).mean()
        loss.backward()
        opt.step()
        candidates[name] = twin
    with torch.no_grad():
        losses = {b: float(F.binary_cross_entropy_with_logits(
            m(meta.users, meta.items, meta.feats), labels)) for b, m in candidates.items()}
    chosen = branch or min(BRANCHES, key=lambda b: losses[b])
    with torch.no_grad():
        for p, q in zip(model.parameters(), candidates[chosen].parameters(), strict=True):
            p.copy_(q)
    optimizer.zero_grad()
    F.binary_cross_entropy_with_logits(model(meta.users, meta.items, meta.feats),
                                       labels).backward()
    optimizer.step()
    return chosen, losses


def random_case(seed, name="gmf"):
    """A backbone of ``name`` (with the context features where it reads them; its counted
    buffers, if any, filled) and a random step."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BACKBONES[name](dim=6, users=12, items=15, feature_sizes=FEATURE_SIZES)

    def ids(high, n):
        return torch.randint(0, high, (n,), generator=gen)

    def feats(n):
        return torch.stack([ids(size, n) for size in FEATURE_SIZES], dim=1)

    for _ in range(3):  # counted events: the look-ahead must read the step's own rows
        model.observe(ids(12, 30), ids(15, 30), torch.randint(0, 2, (30,), generator=gen).float())
    vague = Pairs(ids(12, 20), ids(15, 20), feats(20))
    meta = Pairs(ids(12, 16), ids(15, 16), feats(16))
    labels = torch.randint(0, 2, (16,), generator=gen).float()
    return model, vague, meta, labels


def run_both(seed, branch=None, steps=3, sample_lr=0.05, name="gmf"):
    model, vague, meta, labels = random_case(seed, name)
    twin = copy.deepcopy(model)
    fast_opt, slow_opt = MixedAdam(model, lr=0.01), MixedAdam(twin, lr=0.01)
    ig = InverseGradient(model, fast_opt, sample_lr=sample_lr)
    chosen = []
    for _ in range(steps):  # several steps: the persistent Adam state must match too
        fast_branch, fast_losses, _ = ig.step(vague, meta, labels, branch=branch)
        slow_branch, slow_losses = slow_ig(twin, slow_opt, vague, meta, labels, sample_lr, branch)
        assert fast_branch == slow_branch
        assert fast_losses == pytest.approx(slow_losses, rel=1e-5, abs=1e-6)
        for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(),
                                     strict=True):
            # float32 rounding through the dense layers: a step moves a weight by ~1e-2
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name
        chosen.append(fast_branch)
    return chosen


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_matches_the_slow_implementation(name):
    """Each backbone, its context features and counted buffers included: the fast step (one
    look-ahead through swapped parameters) picks and applies what deep copies would."""
    chosen = []
    for seed in range(3):
        for branch in (*BRANCHES, None):
            chosen += run_both(seed, branch=branch, steps=2, name=name)
    assert set(chosen) == set(BRANCHES)


@pytest.mark.parametrize("branch", BRANCHES)
def test_each_forced_branch_matches_the_slow_implementation(branch):
    for seed in range(3):
        assert run_both(seed, branch=branch) == [branch] * 3


def test_free_choice_matches_and_every_branch_occurs():
    seen = set()
    for seed in range(40):
        seen.update(run_both(seed, steps=2, sample_lr=0.5))
        if seen == set(BRANCHES):
            break
    assert seen == set(BRANCHES)


def test_step_touches_only_the_batch_rows():
    model, vague, meta, labels = random_case(0)
    before = model.user.weight.detach().clone()
    InverseGradient(model, MixedAdam(model, lr=0.01), sample_lr=0.1).step(
        vague, meta, labels, branch="forward")
    used = torch.zeros(12, dtype=torch.bool)
    used[torch.cat([vague.users, meta.users])] = True
    assert torch.equal(model.user.weight[~used], before[~used])
    assert not torch.equal(model.user.weight[used], before[used])


# -- IDL -----------------------------------------------------------------------------------


def idl_direct(y):
    """The formula transcribed with float64 sigmoid/log, no tricks."""
    y = y.double()
    p = torch.sigmoid(y)
    lp, ln = -torch.log(p), -torch.log1p(-p)
    a = 1e-9
    wp, wn = ln / (lp + a), lp / (ln + a)
    wp, wn = wp / (wp + wn), wn / (wp + wn)
    return wp, wn, wp * lp + wn * ln


def test_idl_matches_the_formula_on_random_logits():
    y = torch.randn(1000) * 4
    wp, wn = idl_weights(y)
    dwp, dwn, dloss = idl_direct(y)
    assert torch.allclose(wp.double(), dwp, atol=1e-5)
    assert torch.allclose(wn.double(), dwn, atol=1e-5)
    assert torch.allclose(inverse_dual_loss(y).double(), dloss, rtol=1e-4, atol=1e-6)


def test_idl_is_finite_at_extreme_logits():
    y = torch.tensor([-100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0], requires_grad=True)
    wp, wn = idl_weights(y)
    loss = inverse_dual_loss(y)
    assert torch.isfinite(wp).all() and torch.isfinite(wn).all() and torch.isfinite(loss).all()
    assert torch.allclose(wp + wn, torch.ones(7))
    assert wp[-1] > 0.999 and wn[0] > 0.999  # pushed further the way it leans
    assert wp[3] == pytest.approx(0.5)
    loss.sum().backward()
    assert torch.isfinite(y.grad).all()


def test_idl_gradient_does_not_flow_through_the_weights():
    y = torch.randn(50, requires_grad=True)
    inverse_dual_loss(y).sum().backward()
    wp, wn = idl_weights(y)
    expected = wp * (torch.sigmoid(y) - 1) + wn * torch.sigmoid(y)  # weights as constants
    assert torch.allclose(y.grad, expected.detach(), atol=1e-6)


@pytest.mark.parametrize("name", ["GMF", "NeuMF", "DeepFM"])
def test_swapped_call_matches_functional_call_and_puts_parameters_back(name):
    """The IG step's lean functional call: same outputs and gradients as torch's, on every
    backbone; the module's own parameters are back afterwards, also after an error."""
    from torch.func import functional_call

    import learner.core.backbones as backbones
    from learner.core.meta import SwappedCall

    torch.manual_seed(0)
    model = getattr(backbones, name)(8, 10, 12, (24, 8))
    users, items = torch.randint(0, 10, (16,)), torch.randint(0, 12, (16,))
    feats = torch.stack([torch.randint(0, 24, (16,)), torch.randint(0, 8, (16,))], 1)
    before = dict(model.named_parameters())
    outputs, grads = [], []
    for call in (SwappedCall(model), lambda p, *a: functional_call(model, p, a)):
        params = {k: (v.detach() * 1.5).requires_grad_() for k, v in before.items()}
        out = call(params, users, items, feats)
        grads.append(torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True))
        outputs.append(out.detach())
    assert torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], model(users, items, feats).detach())  # really swapped
    for mine, theirs in zip(*grads, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is not None:  # embedding gradients are sparse
            dense = [g.to_dense() if g.is_sparse else g for g in (mine, theirs)]
            assert torch.allclose(*dense)
    with pytest.raises(IndexError):
        SwappedCall(model)(before, torch.tensor([99]), torch.tensor([0]), feats[:1])
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_swapped_call_refuses_tied_weights():
    from learner.core.errors import ConfigError
    from learner.core.meta import SwappedCall

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].weight = model[0].weight
    with pytest.raises(ConfigError, match="tied"):
        SwappedCall(model)
