"""What training changed since a mark: the rows and dense parameters, and their optimiser state.

A distributed job (``learner.service.distributed``) sums the ranks' changes since the last
synchronisation; the learner records what each step trains into an :class:`UpdateLog`
(:meth:`~learner.core.trainer.OnlineLearner.log_updates`). The helpers read and write the
optimiser state of one parameter the way either of :class:`~learner.core.optim.MixedAdam`'s
optimisers keeps it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from learner.core.backbones.base import Backbone
from learner.core.optim import MixedAdam


class UpdateLog:
    """What a rank's training changed since the last synchronisation.

    The learner calls :meth:`record` with the rows it is about to train; the first time a
    row is recorded its value (and Adam moments) is kept as its base. Dense parameters are
    kept whole at every :meth:`reset`.
    """

    def __init__(self, model: Backbone, optimizer: MixedAdam, bases: bool = True) -> None:
        """``bases=False``: record the rows only, not their values (what a publisher of the
        changed rows needs, :mod:`learner.serving.publisher`)."""
        self.model, self.optimizer, self.bases = model, optimizer, bases
        self.reset()

    def tensors(self) -> list[tuple[str, str, torch.Tensor, Any]]:
        """(name, kind, parameter, its optimiser) of every parameter, in a fixed order; then
        the backbone's counted buffers, with no optimiser."""
        m, opt = self.model, self.optimizer
        out: list[tuple[str, str, torch.Tensor, Any]] = [
            (n, "user", getattr(m, n).weight, opt.sparse) for n in m.user_tables]
        out += [(n, "item", getattr(m, n).weight, opt.sparse) for n in m.item_tables]
        sparse = {id(p) for _, _, p, _ in out}
        out += [(n, "dense", p, opt.dense) for n, p in m.named_parameters()
                if id(p) not in sparse and p.requires_grad]
        # counted buffers (no optimiser): the ranks' counts add up as the parameters' changes
        out += [(n, "user", getattr(m, n), None) for n in m.user_buffers]
        out += [(n, "item", getattr(m, n), None) for n in m.item_buffers]
        return out

    def reset(self) -> None:
        """Forget the rows; the current dense values become the bases."""
        self._rows: dict[str, list[np.ndarray]] = {"user": [], "item": []}
        self._recorded: dict[str, np.ndarray] = {"user": np.zeros(0, bool),
                                                 "item": np.zeros(0, bool)}
        self._base: dict[tuple[str, int], list[torch.Tensor]] = {}
        if not self.bases:
            self._steps, self._dense = {}, {}
            return
        self._steps = {name: optimizer_step(p, opt) for name, _, p, opt in self.tensors()}
        self._dense = {
            (name, slot): t.detach().clone()
            for name, kind, p, opt in self.tensors() if kind == "dense"
            for slot, t in enumerate(state_tensors(p, opt, has_moments(p, opt)))
        }

    @torch.no_grad()
    def record(self, users: np.ndarray, items: np.ndarray) -> None:
        """These rows are about to be trained: keep the bases of those not recorded yet."""
        fresh = {}
        for kind, rows in (("user", users), ("item", items)):
            rows = np.unique(rows)
            seen = self._recorded[kind]
            if rows.size and rows[-1] >= seen.size:
                grown = np.zeros(max(2 * seen.size, int(rows[-1]) + 1), bool)
                grown[: seen.size] = seen
                seen = self._recorded[kind] = grown
            fresh[kind] = rows[~seen[rows]]
            seen[fresh[kind]] = True
            self._rows[kind].append(fresh[kind])
        if not self.bases:
            return
        for name, kind, param, opt in self.tensors():
            if kind == "dense" or not fresh[kind].size:
                continue
            index = torch.from_numpy(fresh[kind]).to(param.device)
            state = opt.state.get(param, {}) if opt is not None else {}
            for slot, key in enumerate((None, "exp_avg", "exp_avg_sq")):
                source = param if key is None else state.get(key)
                value = (source.data[index].clone() if source is not None
                         else torch.zeros(index.numel(), param.shape[1], device=param.device))
                self._base.setdefault((name, slot), []).append(value)

    def rows(self) -> dict[str, np.ndarray]:
        """The rows recorded since the last reset, per kind (user, item), sorted."""
        return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64)
                for k, v in self._rows.items()}

    def positions(self, kind: str, union: np.ndarray) -> torch.Tensor:
        """Where, in the sorted ``union`` of rows, each row recorded here (in the order of
        recording) lies."""
        chunks = self._rows[kind]
        mine = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        return torch.from_numpy(np.searchsorted(union, mine))

    def row_base(self, name: str, slot: int, positions: torch.Tensor,
                 current: torch.Tensor) -> torch.Tensor:
        """Bases of the union's rows of table ``name`` (slot 0: the weights, 1 and 2: Adam's
        moments): the kept value for the rows recorded here (at ``positions``, from
        :meth:`positions`), the current one elsewhere."""
        base = current.clone()
        if positions.numel():
            base[positions.to(base.device)] = torch.cat(self._base[(name, slot)])
        return base

    def step_base(self, name: str) -> float:
        """Adam's step count of parameter ``name`` at the last reset."""
        return self._steps.get(name, 0.0)

    def dense_base(self, name: str, slot: int, tensor: torch.Tensor) -> torch.Tensor:
        """Base of a dense tensor (zeros for moments that did not exist at the last reset)."""
        kept = self._dense.get((name, slot))
        return kept if kept is not None else torch.zeros_like(tensor)


def optimizer_step(param: torch.Tensor, optimizer) -> float:
    """Adam's step count for ``param`` (0 before its first step)."""
    step = optimizer.state.get(param, {}).get("step", 0) if optimizer is not None else 0
    return float(step)


def set_optimizer_step(param: torch.Tensor, optimizer, value: float) -> None:
    state = optimizer.state.get(param) if optimizer is not None else None
    if not state or "step" not in state:
        return
    if torch.is_tensor(state["step"]):
        state["step"].fill_(round(value))
    else:
        state["step"] = round(value)


def has_moments(param: torch.Tensor, optimizer) -> bool:
    return optimizer is not None and "exp_avg" in optimizer.state.get(param, {})


def state_tensors(param: torch.Tensor, optimizer, moments: bool) -> list[torch.Tensor]:
    """``param``, and its Adam moments when ``moments``."""
    if not moments:
        return [param]
    state = optimizer.state[param]
    return [param, state["exp_avg"], state["exp_avg_sq"]]
