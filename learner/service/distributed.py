"""Learners as ranks of one ``torch.distributed`` job: who reads what, and one model.

A job of ``world_size`` ranks (launched by ``torchrun``, or with explicit ``--rank``,
``--world-size``, ``--master-addr``, ``--master-port``) reads one topic: partition ``p`` goes
to rank ``p % world_size`` (:func:`partitions_of`). The ranks keep one model this way:

- **Id maps in lockstep.** Every micro-batch round, the ranks exchange the ids of their
  valid events and every rank admits all of them, in rank order, into its id maps: each id
  gets the same row on every rank, tables grow alike and capacity evictions agree.
- **Every rank's update, on every rank**, every ``sync_every`` rounds
  (:meth:`Ranks.synchronise`): each parameter and Adam moment becomes its value at the last
  synchronisation plus the sum of the ranks' changes since (embedding tables row by row,
  over the rows some rank trained, kept by an :class:`UpdateLog`). A user seen by one rank
  keeps that rank's whole update, an item seen by two gets both, as if the ranks' steps had
  been taken one after another (to first order). Plain averaging would give each update a
  1/N share and learn slower than one learner on the same events. After it every rank holds
  the same parameters.

Collectives go over gloo on the CPU and NCCL on CUDA. Objects (ids, offsets, checkpoint
state) travel with ``all_gather_object``/``broadcast_object_list``; tensors in one flat
``all_reduce`` per synchronisation.

>>> partitions_of(rank=1, world_size=2, n_partitions=5)
[1, 3]
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from learner.core.updates import (
    UpdateLog,
    has_moments,
    optimizer_step,
    set_optimizer_step,
    state_tensors,
)
from stream.errors import ConfigError, DwellError

logger = logging.getLogger(__name__)


class RankFailure(DwellError):
    """Another rank of the job is gone or a collective failed: the job must restart."""

    retriable = True


def partitions_of(rank: int, world_size: int, n_partitions: int) -> list[int]:
    """The partitions rank ``rank`` of ``world_size`` reads: ``p % world_size == rank``."""
    return [p for p in range(n_partitions) if p % world_size == rank]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Where a rank stands in its job; unset values come from torchrun's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"
    timeout_s: float = 120.0

    @classmethod
    def resolve(
        cls, rank: int = -1, world_size: int = 0, master_addr: str = "", master_port: int = 0,
        device: str = "cpu", timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
    ) -> JobSpec:
        """Flags win over torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``MASTER_ADDR``, ``MASTER_PORT``); without either, a job of one.

        >>> JobSpec.resolve(env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
        1
        >>> JobSpec.resolve(rank=2, world_size=2, env={})
        Traceback (most recent call last):
        ...
        stream.errors.ConfigError: rank 2 is not in a job of 2 ranks (0 to 1)
        """
        env = os.environ if env is None else env
        world = world_size or int(env.get("WORLD_SIZE", 1))
        me = rank if rank >= 0 else int(env.get("RANK", 0))
        if world < 1 or not 0 <= me < world:
            raise ConfigError(f"rank {me} is not in a job of {world} ranks (0 to {world - 1})")
        return cls(
            rank=me, world_size=world, local_rank=int(env.get("LOCAL_RANK", me)),
            master_addr=master_addr or env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=master_port or int(env.get("MASTER_PORT", 29500)),
            backend="nccl" if rank_device(device, 0).startswith("cuda") else "gloo",
            timeout_s=timeout_s,
        )


def rank_device(device: str, local_rank: int) -> str:
    """The device of a rank: a bare ``cuda`` (or ``auto`` on a GPU machine) becomes the GPU of
    the rank's local rank, so that the ranks of one machine do not share one GPU.

    >>> rank_device("cpu", 1), rank_device("cuda", 1), rank_device("cuda:3", 1)
    ('cpu', 'cuda:1', 'cuda:3')
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{local_rank}" if device == "cuda" else device


class Ranks:
    """This process's membership of the job, and the collectives the learner needs."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.rank, self.world_size = spec.rank, spec.world_size
        if spec.backend == "nccl":  # NCCL's object collectives use the current device
            torch.cuda.set_device(rank_device("cuda", spec.local_rank))
        if not dist.is_initialized():
            logger.info("rank %d of %d: joining %s:%d (%s)", spec.rank, spec.world_size,
                        spec.master_addr, spec.master_port, spec.backend)
            timeout = datetime.timedelta(seconds=spec.timeout_s)
            # Under torchrun its agent serves the store at MASTER_ADDR:MASTER_PORT and keeps
            # it across restarts: each attempt meets under its own prefix, so that no rank
            # reads an address a rank of the previous attempt left there. Else rank 0 serves.
            agent = (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                     and os.environ.get("MASTER_ADDR") == spec.master_addr
                     and os.environ.get("MASTER_PORT") == str(spec.master_port))
            store = dist.TCPStore(spec.master_addr, spec.master_port, spec.world_size,
                                  is_master=not agent and spec.rank == 0, timeout=timeout)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                spec.backend, store=dist.PrefixStore(f"dwell/attempt-{attempt}", store),
                rank=spec.rank, world_size=spec.world_size, timeout=timeout,
            )

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- objects --------------------------------------------------------------------------
    def exchange(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a collective: every rank must call it)."""
        out: list[Any] = [None] * self.world_size
        with _collective("exchange"):
            dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks)."""
        out: list[Any] | None = [None] * self.world_size if self.leader else None
        with _collective("gather"):
            dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.leader else None]
        with _collective("broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is true on every rank."""
        return all(self.exchange(bool(ok)))

    # -- one model ------------------------------------------------------------------------
    def synchronise(self, updates: UpdateLog) -> dict[str, np.ndarray]:
        """Apply every rank's update since the last synchronisation on every rank.

        For each tensor (a parameter or an Adam moment; embedding tables row by row, over
        the rows some rank trained) the new value is ``base + sum over ranks of (value_r -
        base_r)``: each rank's change is kept whole, as if the ranks' updates had been
        applied one after another (to first order). It is computed from two sums, of the
        values and of the bases, taken in one flat all-reduce, so every rank ends with the
        very same parameters. Moments take part once every rank has them. Returns the rows
        written, per kind ("user", "item"): what any rank trained.
        """
        model, n = updates.model, self.world_size
        tensors = updates.tensors()  # (name, kind, param, optimizer) in a fixed order
        device = next(model.parameters()).device
        union, moments = self._agree(updates.rows(),
                                     [has_moments(p, o) for _, _, p, o in tensors], device)
        index = {k: torch.from_numpy(v).to(device) for k, v in union.items()}
        positions = {k: updates.positions(k, v) for k, v in union.items()}
        values: list[torch.Tensor] = []
        writes: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for i, (name, kind, param, opt) in enumerate(tensors):
            for slot, tensor in enumerate(state_tensors(param, opt, moments[i])):
                if kind == "dense":
                    current, base = tensor.data, updates.dense_base(name, slot, tensor)
                    writes.append((tensor, None))
                else:
                    current = tensor.data[index[kind]]
                    base = updates.row_base(name, slot, positions[kind], current)
                    writes.append((tensor, index[kind]))
                values += [current.reshape(-1), base.reshape(-1)]
        # Adam's step counts too: the job has taken every rank's steps (bias correction)
        values += [torch.tensor([optimizer_step(p, o) for _, _, p, o in tensors],
                                dtype=torch.float32, device=device),
                   torch.tensor([updates.step_base(name) for name, *_ in tensors],
                                dtype=torch.float32, device=device)]
        flat = torch.cat(values)
        with _collective("synchronise"):
            dist.all_reduce(flat)
        pieces = torch.split(flat, [v.numel() for v in values])
        combined = [pieces[2 * j] - pieces[2 * j + 1] * ((n - 1) / n)
                    for j in range(len(pieces) // 2)]
        for (_, _, param, opt), step in zip(tensors, combined[-1].tolist(), strict=True):
            set_optimizer_step(param, opt, step)
        for (tensor, rows), new in zip(writes, combined, strict=False):
            if rows is None:
                tensor.data.copy_(new.reshape(tensor.shape))
            elif rows.numel():
                tensor.data[rows] = new.reshape(rows.numel(), -1)
        model.counts_changed()  # the counted buffers hold every rank's counts now
        updates.reset()
        return union

    def _agree(self, rows: dict[str, np.ndarray], moments: list[bool], device
               ) -> tuple[dict[str, np.ndarray], list[bool]]:
        """The union of every rank's trained rows per kind, and which parameters have Adam
        moments on every rank: two small tensor collectives (no pickling)."""
        kinds = ("user", "item")
        head = torch.tensor([rows[k].size for k in kinds] + [not m for m in moments],
                            dtype=torch.int64, device=device)
        with _collective("synchronise"):
            dist.all_reduce(head, op=dist.ReduceOp.MAX)
        sizes = head[:2].tolist()
        padded = torch.full((sum(sizes),), -1, dtype=torch.int64, device=device)
        start = 0
        for kind, size in zip(kinds, sizes, strict=True):
            mine = torch.from_numpy(rows[kind]).to(device)
            padded[start: start + mine.numel()] = mine
            start += size
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        with _collective("synchronise"):
            dist.all_gather(gathered, padded)
        every = torch.stack(gathered).cpu().numpy()
        union, start = {}, 0
        for kind, size in zip(kinds, sizes, strict=True):
            block = every[:, start: start + size].ravel()
            union[kind] = np.unique(block[block >= 0])
            start += size
        return union, [flag == 0 for flag in head[2:].tolist()]


class _collective:
    """Turn a failed collective (a peer died, a timeout) into :class:`RankFailure`."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, RuntimeError | dist.DistBackendError):
            raise RankFailure(f"{self.what} with the other ranks failed: {exc}") from exc
        return False
