"""GMF's training arithmetic, compiled with numba: one call per training step, or per micro-batch.

:mod:`~learner.core.backbones.gmf.steps` holds the steps (their checks, the optimiser's
state, the choice between them and the autograd steps); this module holds what they
compute, as loops that numba compiles to machine code on first use (cached on disk,
``cache=True``). At the
learner's train batch of 64 a step is a few hundred multiply-adds per pair, and written as
numpy array operations it was ~50 operations of ~5-10 us of Python and numpy overhead each;
compiled, the whole step is one call. :func:`train_steps` runs every step of a micro-batch in
one call, and like every kernel here releases the interpreter lock while it runs.

The arithmetic is the closed form of GMF's gradients (``logit = w . (p_u * q_i) + b``):
``dL/dp_u`` sums ``dL/dz * w * q_i`` over the user's pairs, alike for ``q_i``;
``dL/dw = sum dL/dz * p_u * q_i``; ``dL/db = sum dL/dz``. Tables and moments are float32,
as in PyTorch; scalars are accumulated in float64.

``hyper`` is the optimiser's step, worked out by the caller (it owns the step counters):
``[user step size, item step size, w step size, w bias correction, b step size,
b bias correction, beta1, beta2, sparse eps, dense eps]``; see :func:`mixed_adam`.

>>> import numpy as np
>>> rows, inverse = unique_rows(np.array([7, 3, 7, 5]))
>>> rows.tolist(), inverse.tolist()
([3, 5, 7], [2, 0, 2, 1])
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from learner.core.jit import JitOptions
from learner.core.losses import IDL_A
from learner.core.meta import ADAM_EPS

# numpy's error model (1/0 is inf, no exception, no check in the loops); fastmath's
# reassociation and contraction, which let LLVM vectorise the sums (1.6x a step), but not
# its no-NaN / no-inf assumptions; no interpreter lock held while a kernel runs
JIT: JitOptions = {"cache": True, "error_model": "numpy", "nogil": True,
                   "fastmath": {"reassoc", "contract", "nsz", "arcp"}}

SPARSE_USER, SPARSE_ITEM, DENSE_W, BIAS2_W, DENSE_B, BIAS2_B, BETA1, BETA2, EPS_S, EPS_D = range(10)
HYPER_SIZE = 10


@njit(**JIT)
def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


@njit(**JIT)
def _sigmoid(z: float) -> float:
    return 0.5 * (math.tanh(0.5 * z) + 1.0)  # no overflow for large |z|


@njit(**JIT)
def _idl_wp(z: float) -> float:
    """IDL's normalised positive weight of a vague logit (see learner.core.losses.idl_weights)."""
    lp, ln = _softplus(-z), _softplus(z)
    wp, wn = ln / (lp + IDL_A), lp / (ln + IDL_A)
    return wp / (wp + wn)


@njit(**JIT)
def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows, sorted, and each entry's index among them (``np.unique`` with
    ``return_inverse``)."""
    order = np.argsort(rows, kind="mergesort")
    distinct = np.empty(rows.size, rows.dtype)
    inverse = np.empty(rows.size, np.int64)
    m = -1
    for k in range(rows.size):
        r = rows[order[k]]
        if m < 0 or r != distinct[m]:
            m += 1
            distinct[m] = r
        inverse[order[k]] = m
    return distinct[: m + 1], inverse


@njit(**JIT)
def _logit(p: np.ndarray, q: np.ndarray, w: np.ndarray, b: float) -> float:
    z = 0.0
    for d in range(w.size):
        z += p[d] * q[d] * w[d]
    return z + b


@njit(**JIT)
def _adam_rows(table, avg, sq, rows, grad, step_size, beta1, beta2, eps) -> None:
    """RowSparseAdam's update of ``rows`` (distinct) of a table by ``grad`` (one row each)."""
    for j in range(rows.size):
        r = rows[j]
        for d in range(table.shape[1]):
            g = grad[j, d]
            a = avg[r, d] + (g - avg[r, d]) * (1.0 - beta1)
            s = sq[r, d] + (g * g - sq[r, d]) * (1.0 - beta2)
            avg[r, d] = a
            sq[r, d] = s
            table[r, d] -= step_size * (a / (math.sqrt(s) + eps))


@njit(**JIT)
def _adam_dense(param, avg, sq, grad, step_size, bias2, beta1, beta2, eps) -> None:
    """torch's Adam on a dense parameter (no weight decay, no amsgrad)."""
    for d in range(param.size):
        g = grad[d]
        avg[d] += (g - avg[d]) * (1.0 - beta1)
        sq[d] = sq[d] * beta2 + (1.0 - beta2) * g * g
        param[d] -= step_size * avg[d] / (math.sqrt(sq[d]) / bias2 + eps)


@njit(**JIT)
def _gradients(P, Q, w, users, items, u_inv, i_inv, n_users, n_items, dz) -> tuple:
    """GMF's gradients from ``dL/dz`` of the pairs ``users[k]``, ``items[k]`` (k < dz.size):
    per distinct user row (``u_inv[k]`` of ``n_users``), per distinct item row, ``w``, ``b``."""
    dim = w.size
    gp = np.zeros((n_users, dim), np.float64)
    gq = np.zeros((n_items, dim), np.float64)
    gw = np.zeros(dim, np.float64)
    gb = np.zeros(1, np.float64)
    for k in range(dz.size):
        u, i = users[k], items[k]
        for d in range(dim):
            gp[u_inv[k], d] += dz[k] * w[d] * Q[i, d]
            gq[i_inv[k], d] += dz[k] * w[d] * P[u, d]
            gw[d] += dz[k] * P[u, d] * Q[i, d]
        gb[0] += dz[k]
    return gp, gq, gw, gb


@njit(**JIT)
def mixed_adam(P, Q, w, b, states, users, items, dz, hyper) -> None:
    """One MixedAdam step from ``dL/dz`` of the pairs (table rows ``users[k]``,
    ``items[k]``). Every row of the pairs is updated, a zero gradient too, as autograd's
    sparse gradient of an embedding lookup holds every row looked up. ``states`` is
    ``(user avg, user sq, item avg, item sq, w avg, w sq, b avg, b sq)``."""
    u_rows, u_inv = unique_rows(users)
    i_rows, i_inv = unique_rows(items)
    gp, gq, gw, gb = _gradients(P, Q, w, users, items, u_inv, i_inv, u_rows.size, i_rows.size,
                                dz)
    beta1, beta2 = hyper[BETA1], hyper[BETA2]
    _adam_rows(P, states[0], states[1], u_rows, gp, hyper[SPARSE_USER], beta1, beta2,
               hyper[EPS_S])
    _adam_rows(Q, states[2], states[3], i_rows, gq, hyper[SPARSE_ITEM], beta1, beta2,
               hyper[EPS_S])
    _adam_dense(w, states[4], states[5], gw, hyper[DENSE_W], hyper[BIAS2_W], beta1, beta2,
                hyper[EPS_D])
    _adam_dense(b, states[6], states[7], gb, hyper[DENSE_B], hyper[BIAS2_B], beta1, beta2,
                hyper[EPS_D])


@njit(**JIT)
def loss_step(P, Q, w, b, states, users, items, labels, vague, idl, hyper) -> tuple[float, int]:
    """The plain step: BCE on the genuine pairs, and with ``idl`` IDL on the vague ones (the
    mean over all), else nothing on them (the mean over the genuine). Returns the loss and
    how many vague pairs leaned positive before the step."""
    n = users.size
    dz = np.zeros(n, np.float64)
    genuine = 0
    for k in range(n):
        if not vague[k]:
            genuine += 1
    total, lean = 0.0, 0
    denominator = n if idl else max(genuine, 1)
    for k in range(n):
        z = _logit(P[users[k]], Q[items[k]], w, b[0])
        if vague[k]:
            if z > 0:
                lean += 1
            if idl:
                wp = _idl_wp(z)
                dz[k] = (_sigmoid(z) - wp) / denominator
                total += wp * _softplus(-z) + (1.0 - wp) * _softplus(z)
        else:
            dz[k] = (_sigmoid(z) - labels[k]) / denominator
            total += _softplus(z) - labels[k] * z
    mixed_adam(P, Q, w, b, states, users, items, dz, hyper)
    return total / denominator if (idl or genuine) else 0.0, lean


@njit(**JIT)
def _lookahead(g: np.ndarray, sample_lr: float, adam: bool) -> None:
    """The look-ahead step from the gradient, in place: a fresh Adam's first step
    ``sample_lr * g / (|g| + eps)``, or plain ``sample_lr * g`` (see learner.core.meta)."""
    for j in range(g.size):
        g[j] = sample_lr * (g[j] / (abs(g[j]) + ADAM_EPS) if adam else g[j])


@njit(**JIT)
def kept_branch(meta_losses: np.ndarray, forced: int) -> int:
    """The IG branch kept: ``forced`` where it is one (>= 0), else the one of lowest meta loss,
    ties to the earlier (original, forward, inverse)."""
    if forced >= 0:
        return forced
    chosen = 0
    for s_index in (1, 2):
        if meta_losses[s_index] < meta_losses[chosen]:
            chosen = s_index
    return chosen


@njit(**JIT)
def ig_step(P, Q, w, b, states, vague_users, vague_items, meta_users, meta_items, labels,
            sample_lr, adam_lookahead, forced, hyper, meta_losses) -> tuple[int, int, float]:
    """One IG step (see learner.core.meta): look ahead on the vague pairs' IDL, keep the branch
    (0 original, 1 forward, 2 inverse; ``forced`` >= 0 imposes one) whose meta BCE is lowest,
    ties to the earlier, write it back, then one MixedAdam step on the meta BCE. Fills
    ``meta_losses`` (one per branch); returns the branch, how many vague pairs leaned
    positive, and the meta BCE of the kept branch."""
    n_vague, n_meta, dim = vague_users.size, meta_users.size, w.size
    users, u_local = unique_rows(np.concatenate((vague_users, meta_users)))
    items, i_local = unique_rows(np.concatenate((vague_items, meta_items)))

    # 1. look ahead on the vague events' IDL: the gradient per distinct row, then delta
    dz, lean = np.empty(n_vague, np.float64), 0
    for k in range(n_vague):
        z = _logit(P[vague_users[k]], Q[vague_items[k]], w, b[0])
        if z > 0:
            lean += 1
        dz[k] = (_sigmoid(z) - _idl_wp(z)) / n_vague
    gp, gq, gw, gb = _gradients(P, Q, w, vague_users, vague_items, u_local, i_local,
                                users.size, items.size, dz)
    for g in (gp.reshape(-1), gq.reshape(-1), gw, gb):  # now the deltas, in place
        _lookahead(g, sample_lr, adam_lookahead)
    delta_b = gb[0]

    # 2. the meta BCE of each branch theta + s * delta, s in (0, -1, +1)
    signs = (0.0, -1.0, 1.0)
    for s_index in range(3):
        s = np.float32(signs[s_index])
        total = 0.0
        for k in range(n_meta):
            u, i = u_local[n_vague + k], i_local[n_vague + k]
            pu, qi = P[meta_users[k]], Q[meta_items[k]]
            z = 0.0
            for d in range(dim):
                z += ((pu[d] + s * np.float32(gp[u, d])) * (qi[d] + s * np.float32(gq[i, d]))
                      * (w[d] + s * np.float32(gw[d])))
            z += b[0] + s * np.float32(delta_b)
            total += _softplus(z) - labels[k] * z
        meta_losses[s_index] = total / n_meta
    chosen = kept_branch(meta_losses, forced)
    if chosen:
        s = np.float32(signs[chosen])
        for j in range(users.size):
            for d in range(dim):
                P[users[j], d] += s * np.float32(gp[j, d])
        for j in range(items.size):
            for d in range(dim):
                Q[items[j], d] += s * np.float32(gq[j, d])
        for d in range(dim):
            w[d] += s * np.float32(gw[d])
        b[0] += s * np.float32(delta_b)

    # 3. one MixedAdam step on the meta BCE, from the kept branch
    dz_meta = np.empty(n_meta, np.float64)
    for k in range(n_meta):
        z = _logit(P[meta_users[k]], Q[meta_items[k]], w, b[0])
        dz_meta[k] = (_sigmoid(z) - labels[k]) / n_meta
    mixed_adam(P, Q, w, b, states, meta_users, meta_items, dz_meta, hyper)
    return chosen, lean, meta_losses[chosen]


@njit(**JIT)
def scores(P, Q, w, b, users, items, out) -> None:
    """Like probabilities of the pairs (table rows ``users[k]``, ``items[k]``) into ``out``:
    the sigmoid of GMF's logit, accumulated in float64."""
    for k in range(users.size):
        out[k] = _sigmoid(_logit(P[users[k]], Q[items[k]], w, b[0]))


#: :func:`train_steps`' branch of a step that took the plain step instead of an IG step
NO_BRANCH = -1


@njit(**JIT)
def train_steps(P, Q, w, b, states, users, items, labels, vague, order, bounds, ig, idl,
                sample_lr, adam_lookahead, hypers, branches, leans, losses) -> None:
    """Every step of a micro-batch, one after the other: step ``c`` trains the pairs
    ``order[bounds[c]:bounds[c + 1]]`` with the sizes ``hypers[c]``. With ``ig``, a step
    whose pairs hold vague and genuine ones is :func:`ig_step` (its genuine pairs the meta
    batch; ``branches[c]`` the branch kept), any other :func:`loss_step`; without, every step
    is :func:`loss_step` (``branches[c]`` is NO_BRANCH for those). Fills ``leans[c]`` and
    ``losses[c]`` as the steps return them."""
    meta_losses = np.empty(3)
    for c in range(bounds.size - 1):
        chunk = order[bounds[c]:bounds[c + 1]]
        mask = vague[chunk]
        n_vague = np.count_nonzero(mask)
        if ig and 0 < n_vague < chunk.size:
            v, g = chunk[mask], chunk[~mask]
            branches[c], leans[c], losses[c] = ig_step(
                P, Q, w, b, states, users[v], items[v], users[g], items[g], labels[g],
                sample_lr, adam_lookahead, -1, hypers[c], meta_losses)
        else:
            branches[c] = NO_BRANCH
            losses[c], leans[c] = loss_step(P, Q, w, b, states, users[chunk], items[chunk],
                                            labels[chunk], mask, idl, hypers[c])


@functools.cache
def warm_up() -> None:
    """Compile the steps (or load them from numba's disk cache: ~0.5 s) once per process, on
    scratch arrays of the learner's dtypes, so that a learner's first batch does not pay it."""
    rows, dim = np.arange(2, dtype=np.int64), 2
    tables = [np.zeros((2, dim), np.float32) for _ in range(6)]
    dense = [np.zeros(size, np.float32) for size in (dim, 1) for _ in range(3)]
    w, b = dense[0], dense[3]
    states = (*tables[2:], dense[1], dense[2], dense[4], dense[5])
    hyper, labels = np.ones(HYPER_SIZE), np.ones(2, np.float32)
    ig_step(tables[0], tables[1], w, b, states, rows, rows, rows, rows, labels, 1e-3, True, -1,
            hyper, np.empty(3))
    loss_step(tables[0], tables[1], w, b, states, rows, rows, labels, rows > 0, True, hyper)
    scores(tables[0], tables[1], w, b, rows, rows, np.empty(2, np.float32))
    train_steps(tables[0], tables[1], w, b, states, rows, rows, labels, rows > 0, rows,
                np.array([0, 2]), True, True, 1e-3, True, hyper.reshape(1, -1),
                np.empty(1, np.int64), np.empty(1, np.int64), np.empty(1))
