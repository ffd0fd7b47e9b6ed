"""Checks every backbone in ``BACKBONES`` must pass, in the manner of river's estimator checks.

A backbone registered in :data:`learner.core.backbones.BACKBONES` is picked up here without being
named: shapes, training under every loss in :data:`learner.core.losses.LOSSES`, sparse embedding
gradients, table growth and determinism.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learner.core.backbones import BACKBONES, Backbone, make_backbone
from learner.core.features import FEATURE_SIZES
from learner.core.losses import LOSSES
from learner.core.optim import MixedAdam, ensure_rows

NAMES = sorted(BACKBONES)
LOSS_NAMES = sorted(LOSSES)
DIM = 8
USERS = ITEMS = 20
STEPS = 200
BATCH = 64
LR = 0.05


def build(name: str, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return BACKBONES[name](dim=DIM, users=USERS, items=ITEMS, feature_sizes=FEATURE_SIZES)


def random_batch(
    n: int, gen: torch.Generator, users: int = USERS, items: int = ITEMS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u = torch.randint(0, users, (n,), generator=gen)
    i = torch.randint(0, items, (n,), generator=gen)
    feats = torch.stack(
        [torch.randint(0, size, (n,), generator=gen) for size in FEATURE_SIZES], dim=1
    )
    return u, i, feats


def table_names(model: Backbone) -> tuple[str, ...]:
    return model.user_tables + model.item_tables


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only add overhead, and stall badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Problem:
    """Every (user, item) pair once; label ``(u + i) % 2``; a third vague (label arbitrary).

    :meth:`for_model` gives a model with no user x item interaction (``interactions``
    False: the wide model, a sum of per-id and context terms) the label ``u % 2 or i % 2``
    instead, which a sum can fit and ``(u + i) % 2`` is not."""

    users: torch.Tensor
    items: torch.Tensor
    feats: torch.Tensor
    labels: torch.Tensor
    vague: torch.Tensor

    def for_model(self, model: Backbone) -> Problem:
        if model.interactions:
            return self
        truth = ((self.users % 2) | (self.items % 2)).float()
        return dataclasses.replace(self, labels=torch.where(self.vague, self.labels, truth))

    def genuine_bce(self, model: Backbone) -> float:
        genuine = ~self.vague
        with torch.no_grad():
            logits = model(self.users[genuine], self.items[genuine], self.feats[genuine])
        return float(F.binary_cross_entropy_with_logits(logits, self.labels[genuine]))


@pytest.fixture(scope="module")
def problem() -> Problem:
    gen = torch.Generator().manual_seed(42)
    users = torch.arange(USERS).repeat_interleave(ITEMS)
    items = torch.arange(ITEMS).repeat(USERS)
    n = users.numel()
    _, _, feats = random_batch(n, gen)
    vague = torch.randperm(n, generator=gen) < n // 3
    truth = ((users + items) % 2).float()
    # The label entry of a vague event is arbitrary: noise in [0, 1), not the truth.
    labels = torch.where(vague, torch.rand(n, generator=gen), truth)
    return Problem(users, items, feats, labels, vague)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 37])
def test_output_shape_and_finite(name: str, n: int) -> None:
    model = build(name)
    u, i, feats = random_batch(n, torch.Generator().manual_seed(n))
    for f in (feats, None):
        out = model(u, i, f)
        assert out.shape == (n,)
        assert out.dtype == torch.float32
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", NAMES)
def test_user_logit_is_the_users_own_term(name: str) -> None:
    """Two users alike in every row but their bias: their logits differ by the same amount
    for every video and context, and user_logit says by how much (what a served ranking of
    one user's candidates leaves out)."""
    model = build(name)
    with torch.no_grad():
        for table in model.user_tables:
            weight = getattr(model, table).weight
            weight[1] = weight[0] + (0.7 if table == "user_bias" else 0.0)
        for buffer in model.user_buffers:
            getattr(model, buffer)[1] = getattr(model, buffer)[0]
        _, items, feats = random_batch(ITEMS, torch.Generator().manual_seed(3))
        first, second = torch.zeros(ITEMS, dtype=torch.long), torch.ones(ITEMS, dtype=torch.long)
        gap = model(second, items, feats) - model(first, items, feats)
        said = model.user_logit(second) - model.user_logit(first)
    expected = 0.7 if "user_bias" in model.user_tables else 0.0
    assert torch.allclose(gap, torch.full_like(gap, expected), atol=1e-5)
    assert torch.allclose(said, gap, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_make_backbone_builds_with_default_features(name: str) -> None:
    model = make_backbone(name, dim=4)
    assert isinstance(model, BACKBONES[name])
    u, i, feats = random_batch(5, torch.Generator().manual_seed(0))
    assert model(u, i, feats).shape == (5,)


@pytest.mark.parametrize("name", NAMES)
def test_all_sparse_tables_listed(name: str) -> None:
    """Every sparse table is listed (MixedAdam and ensure_rows find them only there)."""
    model = build(name)
    listed = {id(getattr(model, t)) for t in table_names(model)}
    sparse = {id(m) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    assert listed == sparse
    assert len(listed) == len(table_names(model)), "a table is listed twice"
    assert model.user_tables and model.item_tables
    assert {getattr(model, t).num_embeddings for t in model.user_tables} == {USERS}
    assert {getattr(model, t).num_embeddings for t in model.item_tables} == {ITEMS}
    assert model.rows() == (USERS, ITEMS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_every_loss_trains(name: str, loss_name: str, problem: Problem) -> None:
    model = build(name)
    opt = MixedAdam(model, lr=LR)
    loss_fn = LOSSES[loss_name]
    problem = problem.for_model(model)
    before = problem.genuine_bce(model)
    gen = torch.Generator().manual_seed(7)
    n = problem.users.numel()
    for step in range(STEPS):
        idx = torch.randint(0, n, (BATCH,), generator=gen)
        opt.zero_grad()
        logits = model(problem.users[idx], problem.items[idx], problem.feats[idx])
        loss = loss_fn(logits, problem.labels[idx], problem.vague[idx], step)
        assert bool(torch.isfinite(loss)), f"step {step}: loss {float(loss)}"
        loss.backward()
        opt.step()
    after = problem.genuine_bce(model)
    assert after < 0.5 * before, f"genuine BCE {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_all_vague_batch(name: str, loss_name: str) -> None:
    model = build(name)
    opt = MixedAdam(model, lr=LR)
    u, i, feats = random_batch(16, torch.Generator().manual_seed(3))
    labels = torch.rand(16, generator=torch.Generator().manual_seed(4))
    vague = torch.ones(16, dtype=torch.bool)
    opt.zero_grad()
    loss = LOSSES[loss_name](model(u, i, feats), labels, vague, 0)
    assert loss.shape == ()
    assert bool(torch.isfinite(loss))
    loss.backward()
    opt.step()
    for param in model.parameters():
        assert bool(torch.isfinite(param).all())


@pytest.mark.parametrize("name", NAMES)
def test_embedding_grads_sparse_dense_layers_dense(name: str) -> None:
    model = build(name)
    u, i, feats = random_batch(32, torch.Generator().manual_seed(5))
    target = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(6)).float()
    F.binary_cross_entropy_with_logits(model(u, i, feats), target).backward()
    tables = {id(getattr(model, t).weight) for t in table_names(model)}
    for t in table_names(model):
        grad = getattr(model, t).weight.grad
        assert grad is not None and grad.is_sparse, t
    for pname, param in model.named_parameters():
        if id(param) not in tables:
            assert param.grad is not None, f"{pname} got no gradient"
            assert not param.grad.is_sparse, pname


@pytest.mark.parametrize("name", NAMES)
def test_ensure_rows_grows_every_table(name: str) -> None:
    model = build(name)
    opt = MixedAdam(model, lr=LR)
    gen = torch.Generator().manual_seed(8)
    # A step first, so growth must carry SparseAdam state too.
    u, i, feats = random_batch(32, gen)
    model(u, i, feats).sum().backward()
    opt.step()
    old = {t: getattr(model, t).weight.detach().clone() for t in table_names(model)}
    big_users, big_items = 100, 50
    ensure_rows(model, opt, users=big_users, items=big_items)
    users, items = model.rows()
    assert users >= big_users and items >= big_items
    for t in model.user_tables:
        assert getattr(model, t).num_embeddings == users == getattr(model, t).weight.shape[0]
    for t in model.item_tables:
        assert getattr(model, t).num_embeddings == items == getattr(model, t).weight.shape[0]
    for t, before in old.items():
        assert torch.equal(getattr(model, t).weight[: before.shape[0]], before), t
    # New rows score and train; the optimiser steps the grown tables.
    u, i, feats = random_batch(32, gen, users=big_users, items=big_items)
    u[0], i[0] = big_users - 1, big_items - 1
    opt.zero_grad()
    out = model(u, i, feats)
    assert out.shape == (32,) and bool(torch.isfinite(out).all())
    snapshot = {t: getattr(model, t).weight.detach().clone() for t in table_names(model)}
    F.binary_cross_entropy_with_logits(out, torch.ones(32)).backward()
    opt.step()
    for t in model.user_tables:
        row = getattr(model, t).weight[big_users - 1]
        assert not torch.equal(row, snapshot[t][big_users - 1]), t
    for t in model.item_tables:
        row = getattr(model, t).weight[big_items - 1]
        assert not torch.equal(row, snapshot[t][big_items - 1]), t


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name: str) -> None:
    u, i, feats = random_batch(16, torch.Generator().manual_seed(9))
    a, b, c = build(name, seed=1), build(name, seed=1), build(name, seed=2)
    with torch.no_grad():
        out_a, out_b, out_c = a(u, i, feats), b(u, i, feats), c(u, i, feats)
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)
