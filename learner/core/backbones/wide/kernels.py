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
    _adam_rows,
    _idl_wp,
    _sigmoid,
    _softplus,
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
def mixed_step(model, layout, sparse, dense, counters, users, items, feats, counted, dz,
               hyper) -> None:
    """One step of the learner's optimiser from ``dL/dz`` of the pairs: SparseAdam on the bias
    rows of the pairs, Adagrad on ``c``, ``a`` and ``b``; the step counters advanced."""
    ub, ib, _uc, _ic, _prior, ctx, cw, b = model
    offsets, cross_start, tab_size = layout
    u_rows, u_inv = unique_rows(users)
    i_rows, i_inv = unique_rows(items)
    g_u, g_i = np.zeros((u_rows.size, 1)), np.zeros((i_rows.size, 1))
    g_c, g_a, g_b = np.zeros(ctx.size), np.zeros(N_COUNT_FEATURES), np.zeros(1)
    for k in range(users.size):
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
    for j in range(counters.size):
        counters[j] += 1
    beta1, beta2 = hyper[BETA1], hyper[BETA2]
    for table, avg, sq, rows, grad, step in ((ub, sparse[0], sparse[1], u_rows, g_u, counters[0]),
                                             (ib, sparse[2], sparse[3], i_rows, g_i, counters[1])):
        size = hyper[LR_S] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        _adam_rows(table, avg, sq, rows, grad, size, beta1, beta2, hyper[EPS_S])
    for param, total, g_dense, step in ((ctx, dense[0], g_c, counters[2]),
                                        (cw, dense[1], g_a, counters[3]),
                                        (b, dense[2], g_b, counters[4])):
        _adagrad(param, total, g_dense, hyper[LR_D] / (1 + (step - 1) * hyper[LR_DECAY]),
                 hyper[EPS_D])


@njit(**JIT)
def loss_step(model, layout, sparse, dense, counters, users, items, feats, labels, vague, idl,
              hyper) -> tuple[float, int]:
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
    mixed_step(model, layout, sparse, dense, counters, users, items, feats, counted, dz, hyper)
    return total / denominator if (idl or genuine) else 0.0, lean


@njit(**JIT)
def train_steps(model, layout, sparse, dense, counters, users, items, feats, labels, vague,
                order, bounds, idl, hyper, leans, losses) -> None:
    """Every step of a micro-batch, one after the other: step ``c`` is :func:`loss_step` on
    the pairs ``order[bounds[c]:bounds[c + 1]]``; fills ``leans[c]`` and ``losses[c]``."""
    for c in range(bounds.size - 1):
        chunk = order[bounds[c]:bounds[c + 1]]
        losses[c], leans[c] = loss_step(model, layout, sparse, dense, counters, users[chunk],
                                        items[chunk], feats[chunk], labels[chunk],
                                        vague[chunk], idl, hyper)


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
    scores(model, layout, rows, rows, feats, np.empty(2, np.float32))
    train_steps(model, layout, sparse, (sums[0], sums[1], sums[2]), counters, rows, rows, feats,
                labels, rows > 0, rows, np.array([0, 2]), True, hyper, np.empty(1, np.int64),
                np.empty(1))
