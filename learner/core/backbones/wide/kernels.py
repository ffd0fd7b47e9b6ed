"""The wide model's training arithmetic, compiled with numba: one call per step, or per micro-batch.

:mod:`~learner.core.backbones.wide.steps` holds the steps (their checks, the optimiser's
state); this module holds what they compute. The model is linear in its parameters::

    z = b + b_u + b_i + sum_f c[feat_f + offset_f] + c[cross] + a . counts(u, i)

so every gradient is ``dL/dz`` summed over the pairs that use a weight: ``dL/db_u`` over the
user's pairs, ``dL/dc[j]`` over the pairs whose context (or cross) is ``j``, ``dL/da`` the
pairs' count features weighted by ``dL/dz``. The bias rows take SparseAdam's step (every row
of the pairs, a zero gradient too, as autograd's sparse gradient of a lookup holds every row
looked up); the dense weights ``c``, ``a``, ``b`` Adagrad's, as torch does them. The
primitives the GMF kernels have (SparseAdam on rows, the sigmoid, IDL's weight) are theirs
(:mod:`learner.core.backbones.gmf.kernels`). Parameters and state are float32, as in
PyTorch; sums are accumulated in float64.

The arguments come in tuples of numpy views (:mod:`~learner.core.backbones.wide.steps`):
``model = (b_u table, b_i table, user counts, item counts, the rates' priors, c, a, b)``, ``layout =
(offsets, cross start or -1, tab size)``, ``sparse = (b_u avg, b_u sq, b_i avg, b_i sq)``,
``dense = (c's Adagrad sum, a's, b's)``; ``counters`` the optimiser's step counts
``[b_u, b_i, c, a, b]``, advanced by each step; ``hyper`` :data:`HYPER_SIZE` numbers (see
:func:`mixed_step`).

>>> import numpy as np
>>> out = np.empty(2)
>>> prior = np.array([10.0, 10.0], np.float32)
>>> count_features(np.array([3.0, 4.0], np.float32), np.zeros(2, np.float32), prior, out)
>>> np.round(out, 4).tolist()  # log(8 / 6), and no events: even odds
[0.2877, 0.0]
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from learner.core.backbones.gmf.kernels import (
    JIT,
    NO_BRANCH,
    _adam_rows,
    _idl_wp,
    _lookahead,
    _sigmoid,
    _softplus,
    kept_branch,
    unique_rows,
)
from learner.core.backbones.wide import N_COUNT_FEATURES

#: ``hyper``: SparseAdam's lr, betas and eps; Adagrad's lr, lr decay and eps
LR_S, BETA1, BETA2, EPS_S, LR_D, LR_DECAY, EPS_D = range(7)
HYPER_SIZE = 7


@njit(**JIT)
def count_features(user: np.ndarray, item: np.ndarray, prior: np.ndarray, out: np.ndarray) -> None:
    """The count features of a pair from its user's and video's (positives, events) rows, into
    ``out``: the log-odds of their running rates under the priors of ``prior`` (user's,
    video's) events at one half (as ``Wide.count_features``)."""
    half_u, half_i = prior[0] / np.float32(2), prior[1] / np.float32(2)
    out[0] = math.log(user[0] + half_u) - math.log(user[1] - user[0] + half_u)
    out[1] = math.log(item[0] + half_i) - math.log(item[1] - item[0] + half_i)


@njit(**JIT)
def logits(model, layout, users, items, feats, counted, z) -> None:
    """The logits of the pairs into ``z``, their count features into ``counted`` (n, 4)."""
    ub, ib, uc, ic, prior, ctx, cw, b = model
    offsets, cross_start, tab_size = layout
    for k in range(users.size):
        u, i = users[k], items[k]
        count_features(uc[u], ic[i], prior, counted[k])
        t = b[0] + ub[u, 0] + ib[i, 0]
        for f in range(offsets.size):
            t += ctx[feats[k, f] + offsets[f]]
        if cross_start >= 0:
            t += ctx[cross_start + feats[k, 1] * tab_size + feats[k, 2]]
        for j in range(N_COUNT_FEATURES):
            t += cw[j] * counted[k, j]
        z[k] = t


@njit(**JIT)
def scores(model, layout, users, items, feats, out) -> None:
    """Like probabilities (the sigmoid of the logits) of the pairs into ``out``."""
    n = users.size
    z, counted = np.empty(n), np.empty((n, N_COUNT_FEATURES))
    logits(model, layout, users, items, feats, counted, z)
    for k in range(n):
        out[k] = _sigmoid(z[k])


@njit(**JIT)
def _adagrad(param, total, grad, lr, eps) -> None:
    """torch's Adagrad on a dense float32 parameter (no weight decay), in its order:
    ``sum += g * g``, then ``param -= lr * g / (sqrt(sum) + eps)``; a zero gradient leaves
    both as they are."""
    for d in range(param.size):
        g = np.float32(grad[d])
        s = total[d] + g * g
        total[d] = s
        param[d] -= np.float32(lr) * (g / (np.float32(math.sqrt(s)) + np.float32(eps)))


@njit(**JIT)
def _gradients(layout, u_inv, i_inv, n_users, n_items, n_context, feats, counted, dz) -> tuple:
    """The gradients from ``dL/dz`` of pairs ``k < dz.size``: per distinct user row
    (``u_inv[k]`` of ``n_users``), per distinct video row, of ``c``, ``a`` and ``b``."""
    offsets, cross_start, tab_size = layout
    g_u, g_i = np.zeros((n_users, 1)), np.zeros((n_items, 1))
    g_c, g_a, g_b = np.zeros(n_context), np.zeros(N_COUNT_FEATURES), np.zeros(1)
    for k in range(dz.size):
        d = dz[k]
        g_u[u_inv[k], 0] += d
        g_i[i_inv[k], 0] += d
        for f in range(offsets.size):
            g_c[feats[k, f] + offsets[f]] += d
        if cross_start >= 0:
            g_c[cross_start + feats[k, 1] * tab_size + feats[k, 2]] += d
        for j in range(N_COUNT_FEATURES):
            g_a[j] += d * counted[k, j]
        g_b[0] += d
    return g_u, g_i, g_c, g_a, g_b


@njit(**JIT)
def _adagrad_lr(hyper, step) -> float:
    """Adagrad's rate at its ``step``-th step (torch's ``lr / (1 + (step - 1) lr_decay)``)."""
    return hyper[LR_D] / (1 + (step - 1) * hyper[LR_DECAY])


@njit(**JIT)
def mixed_step(model, layout, sparse, dense, counters, hyper, users, items, feats, counted,
               dz) -> None:
    """One step of the learner's optimiser from ``dL/dz`` of the pairs: SparseAdam on the bias
    rows of the pairs, Adagrad on ``c``, ``a`` and ``b``; the step counters advanced."""
    ub, ib, _uc, _ic, _prior, ctx, cw, b = model
    u_rows, u_inv = unique_rows(users)
    i_rows, i_inv = unique_rows(items)
    g_u, g_i, g_c, g_a, g_b = _gradients(layout, u_inv, i_inv, u_rows.size, i_rows.size,
                                         ctx.size, feats, counted, dz)
    # the context weights take no step where the pairs have no context (their gradient is
    # None in autograd, and torch's Adagrad skips them, step count included)
    with_context = layout[0].size > 0
    for j in range(counters.size):
        if j != 2 or with_context:
            counters[j] += 1
    beta1, beta2 = hyper[BETA1], hyper[BETA2]
    for table, avg, sq, rows, grad, step in ((ub, sparse[0], sparse[1], u_rows, g_u, counters[0]),
                                             (ib, sparse[2], sparse[3], i_rows, g_i, counters[1])):
        size = hyper[LR_S] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        _adam_rows(table, avg, sq, rows, grad, size, beta1, beta2, hyper[EPS_S])
    if with_context:
        _adagrad(ctx, dense[0], g_c, _adagrad_lr(hyper, counters[2]), hyper[EPS_D])
    _adagrad(cw, dense[1], g_a, _adagrad_lr(hyper, counters[3]), hyper[EPS_D])
    _adagrad(b, dense[2], g_b, _adagrad_lr(hyper, counters[4]), hyper[EPS_D])


@njit(**JIT)
def loss_step(model, layout, sparse, dense, counters, hyper, users, items, feats, labels, vague,
              idl) -> tuple[float, int]:
    """The plain step: BCE on the genuine pairs, and with ``idl`` IDL on the vague ones (the
    mean over all), else nothing on them (the mean over the genuine; with none, a zero
    gradient that still steps, as autograd's). Returns the loss and how many vague pairs
    leaned positive before the step."""
    n = users.size
    z, counted = np.empty(n), np.empty((n, N_COUNT_FEATURES))
    logits(model, layout, users, items, feats, counted, z)
    genuine = 0
    for k in range(n):
        if not vague[k]:
            genuine += 1
    dz = np.zeros(n)
    total, lean = 0.0, 0
    denominator = n if idl else max(genuine, 1)
    for k in range(n):
        if vague[k]:
            if z[k] > 0:
                lean += 1
            if idl:
                wp = _idl_wp(z[k])
                dz[k] = (_sigmoid(z[k]) - wp) / denominator
                total += wp * _softplus(-z[k]) + (1.0 - wp) * _softplus(z[k])
        else:
            dz[k] = (_sigmoid(z[k]) - labels[k]) / denominator
            total += _softplus(z[k]) - labels[k] * z[k]
    mixed_step(model, layout, sparse, dense, counters, hyper, users, items, feats, counted, dz)
    return total / denominator if (idl or genuine) else 0.0, lean


@njit(**JIT)
def _shift(s, value, delta) -> float:
    """``value + s * delta`` as torch forms a branch's parameter: in float32."""
    return float(np.float32(value) + np.float32(s) * np.float32(delta))


@njit(**JIT)
def ig_step(model, layout, sparse, dense, counters, hyper, vague_users, vague_items,
            vague_feats, meta_users, meta_items, meta_feats, labels, sample_lr, adam_lookahead,
            forced, meta_losses) -> tuple[int, int, float]:
    """One IG step (see learner.core.meta): look ahead on the vague pairs' IDL, keep the branch
    (0 original, 1 forward, 2 inverse; ``forced`` >= 0 imposes one) whose meta BCE is lowest,
    ties to the earlier, write it back, then one step of the learner's optimiser on the meta
    BCE. Fills ``meta_losses`` (one per branch); returns the branch, how many vague pairs
    leaned positive, and the meta BCE of the kept branch. The counts are the same in every
    branch: they are counted, not trained."""
    ub, ib, _uc, _ic, _prior, ctx, cw, b = model
    offsets, cross_start, tab_size = layout
    n_vague, n_meta = vague_users.size, meta_users.size
    users, u_local = unique_rows(np.concatenate((vague_users, meta_users)))
    items, i_local = unique_rows(np.concatenate((vague_items, meta_items)))

    # 1. look ahead on the vague pairs' IDL: the gradient per distinct row, then delta
    z, counted = np.empty(n_vague), np.empty((n_vague, N_COUNT_FEATURES))
    logits(model, layout, vague_users, vague_items, vague_feats, counted, z)
    dz, lean = np.empty(n_vague), 0
    for k in range(n_vague):
        if z[k] > 0:
            lean += 1
        dz[k] = (_sigmoid(z[k]) - _idl_wp(z[k])) / n_vague
    d_u, d_i, d_c, d_a, d_b = _gradients(layout, u_local, i_local, users.size, items.size,
                                         ctx.size, vague_feats, counted, dz)
    for g in (d_u.reshape(-1), d_i.reshape(-1), d_c, d_a, d_b):  # now the deltas, in place
        _lookahead(g, sample_lr, adam_lookahead)

    # 2. the meta BCE of each branch theta + s * delta, s in (0, -1, +1)
    meta_counted = np.empty((n_meta, N_COUNT_FEATURES))
    logits(model, layout, meta_users, meta_items, meta_feats, meta_counted, np.empty(n_meta))
    signs = (0.0, -1.0, 1.0)
    for s_index in range(3):
        s = signs[s_index]
        total = 0.0
        for k in range(n_meta):
            u, i = u_local[n_vague + k], i_local[n_vague + k]
            t = (_shift(s, b[0], d_b[0]) + _shift(s, ub[meta_users[k], 0], d_u[u, 0])
                 + _shift(s, ib[meta_items[k], 0], d_i[i, 0]))
            for f in range(offsets.size):
                at = meta_feats[k, f] + offsets[f]
                t += _shift(s, ctx[at], d_c[at])
            if cross_start >= 0:
                at = cross_start + meta_feats[k, 1] * tab_size + meta_feats[k, 2]
                t += _shift(s, ctx[at], d_c[at])
            for j in range(N_COUNT_FEATURES):
                t += _shift(s, cw[j], d_a[j]) * meta_counted[k, j]
            total += _softplus(t) - labels[k] * t
        meta_losses[s_index] = total / n_meta
    chosen = kept_branch(meta_losses, forced)
    if chosen:
        s = signs[chosen]
        for j in range(users.size):
            ub[users[j], 0] = _shift(s, ub[users[j], 0], d_u[j, 0])
        for j in range(items.size):
            ib[items[j], 0] = _shift(s, ib[items[j], 0], d_i[j, 0])
        for param, delta in ((ctx, d_c), (cw, d_a), (b, d_b)):
            for d in range(param.size):
                param[d] = _shift(s, param[d], delta[d])

    # 3. one step of the learner's optimiser on the meta BCE, from the kept branch
    z = np.empty(n_meta)
    logits(model, layout, meta_users, meta_items, meta_feats, meta_counted, z)
    for k in range(n_meta):
        z[k] = (_sigmoid(z[k]) - labels[k]) / n_meta
    mixed_step(model, layout, sparse, dense, counters, hyper, meta_users, meta_items,
               meta_feats, meta_counted, z)
    return chosen, lean, meta_losses[chosen]


@njit(**JIT)
def train_steps(model, layout, sparse, dense, counters, hyper, users, items, feats, labels,
                vague, order, bounds, ig, idl, sample_lr, adam_lookahead, branches, leans,
                losses) -> None:
    """Every step of a micro-batch, one after the other: step ``c`` trains the pairs
    ``order[bounds[c]:bounds[c + 1]]``. With ``ig``, a step whose pairs hold vague and
    genuine ones is :func:`ig_step` (its genuine pairs the meta batch; ``branches[c]`` the
    branch kept), any other :func:`loss_step`; without, every step is :func:`loss_step`
    (``branches[c]`` is NO_BRANCH for those). Fills ``leans[c]`` and ``losses[c]``."""
    meta_losses = np.empty(3)
    for c in range(bounds.size - 1):
        chunk = order[bounds[c]:bounds[c + 1]]
        mask = vague[chunk]
        n_vague = np.count_nonzero(mask)
        if ig and 0 < n_vague < chunk.size:
            v, g = chunk[mask], chunk[~mask]
            branches[c], leans[c], losses[c] = ig_step(
                model, layout, sparse, dense, counters, hyper, users[v], items[v], feats[v],
                users[g], items[g], feats[g], labels[g], sample_lr, adam_lookahead, -1,
                meta_losses)
        else:
            branches[c] = NO_BRANCH
            losses[c], leans[c] = loss_step(model, layout, sparse, dense, counters, hyper,
                                            users[chunk], items[chunk], feats[chunk],
                                            labels[chunk], mask, idl)


@njit(**JIT)
def _add_moments(counts, rows, sign, moments) -> None:
    """``sign`` times the count moments of ``rows`` (distinct) into ``moments``: events,
    positives, positives^2 / events and ids counted (as ``count_moments``, in float64)."""
    for r in rows:
        positives, events = np.float64(counts[r, 0]), np.float64(counts[r, 1])
        moments[0] += sign * events
        moments[1] += sign * positives
        if events > 0:
            moments[2] += sign * positives * positives / events
            moments[3] += sign


@njit(**JIT)
def count(user_counts, item_counts, moments, users, items, positive) -> None:
    """Count the genuine events (``positive`` 1.0 or 0.0 each) of the pairs as ``Wide.observe``
    does: each side's counts, and its moments (``moments[side]``) kept up to date over the
    rows the pairs touch."""
    for side in range(2):
        counts = user_counts if side == 0 else item_counts
        rows = users if side == 0 else items
        touched = unique_rows(rows)[0]
        _add_moments(counts, touched, -1.0, moments[side])
        for k in range(rows.size):
            counts[rows[k], 0] += positive[k]
            counts[rows[k], 1] += 1
        _add_moments(counts, touched, 1.0, moments[side])


@functools.cache
def warm_up() -> None:
    """Compile the steps (or load them from numba's disk cache) once per process, on scratch
    arrays of the learner's dtypes, so that a learner's first batch does not pay it."""
    rows = np.arange(2, dtype=np.int64)
    tables = [np.zeros((2, 1), np.float32) for _ in range(6)]
    counts = [np.zeros((2, 2), np.float32) for _ in range(2)]
    dense = [np.zeros(size, np.float32) for size in (3, N_COUNT_FEATURES, 1)]
    sums = [np.zeros_like(d) for d in dense]
    model = (tables[0], tables[1], counts[0], counts[1], np.full(2, 2.0, np.float32), dense[0],
             dense[1], dense[2])
    layout = (np.array([0, 1, 2]), -1, 1)
    sparse = (tables[2], tables[3], tables[4], tables[5])
    feats, labels = np.zeros((2, 3), np.int64), np.ones(2, np.float32)
    hyper, counters = np.full(HYPER_SIZE, 0.5), np.zeros(5, np.int64)
    dense_state = (sums[0], sums[1], sums[2])
    count(counts[0], counts[1], np.zeros((2, 4)), rows, rows, labels)
    scores(model, layout, rows, rows, feats, np.empty(2, np.float32))
    ig_step(model, layout, sparse, dense_state, counters, hyper, rows, rows, feats, rows, rows,
            feats, labels, 1e-3, True, -1, np.empty(3))
    train_steps(model, layout, sparse, dense_state, counters, hyper, rows, rows, feats, labels,
                rows > 0, rows, np.array([0, 2]), True, True, 1e-3, True,
                np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1))
