"""The learner daemon as one rank of a distributed job (see :mod:`learner.service.distributed`).

A :class:`RankDaemon` reads exactly its share of the topic's partitions (explicitly
assigned, no group rebalancing) and still commits under the job's group id, so the group's
lag shows in Kafka's tooling. The ranks move in rounds, one micro-batch each:

1. every rank polls (a rank whose partitions ran dry waits only briefly, so it never holds
   the others up for long), decodes and dead-letters its records;
2. the ranks exchange their events' ids and their flags (stop asked, done, idle, commit or
   progress due): every rank admits every id into its id maps in rank order, then tests and
   trains on its own events;
3. every ``sync_every`` rounds every rank's update is applied on every rank (one model
   again);
4. a checkpoint is taken at a barrier when any rank has one due: the ranks synchronise,
   rank 0 writes one checkpoint that holds the model, every rank's own state (what it has
   seen, its draws) and the offsets of every rank's partitions; once it is durable each rank
   commits its partitions' offsets
   (:class:`~learner.service.commit.BarrierCommitProtocol`). A restart with another number
   of ranks takes the partitions up from the checkpoint's offsets.

Every decision is taken from exchanged values, so all ranks take it in the same round, and
a SIGTERM to any rank stops the whole job at the end of a round with a last checkpoint. A
rank that dies makes the others' next collective fail: they stop without committing (the
checkpoint is the truth), and ``torchrun --max-restarts`` starts the job again from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from learner.core.prequential import RunAUC
from learner.core.trainer import OnlineLearner
from learner.service.commit import BarrierCommitProtocol
from learner.service.config import Config
from learner.service.daemon import Daemon
from learner.service.distributed import JobSpec, Ranks, partitions_of, rank_device
from stream.admin import create_topic, topic_partitions
from stream.clients import Record

logger = logging.getLogger(__name__)

#: How long a rank whose last poll came back empty waits for records in the next round.
DRY_POLL_S = 0.05


def model_digest(model) -> str:
    """A SHA-256 of a model's parameters: equal on ranks that hold the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_path(path: str, rank: int) -> str:
    """A per-rank file name: ``{rank}`` in ``path`` replaced, else ``.rankN`` before the suffix.

    >>> rank_path("/tmp/audit.jsonl", 1), rank_path("/tmp/r{rank}/audit", 0)
    ('/tmp/audit.rank1.jsonl', '/tmp/r0/audit')
    """
    if not path:
        return path
    if "{rank}" in path:
        return path.format(rank=rank)
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rank{rank}{p.suffix}"))


class RankDaemon(Daemon):
    """One rank of a job of learners that keep one model (see the module's docstring)."""

    commit_protocol = BarrierCommitProtocol
    commits: BarrierCommitProtocol

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 spec: JobSpec | None = None) -> None:
        spec = spec or JobSpec.resolve(config.rank, config.world_size, config.master_addr,
                                       config.master_port, config.device, config.dist_timeout_s)
        self.spec = spec
        if config.world_size > 1 or spec.world_size > 1:
            config = dataclasses.replace(config, audit_log=rank_path(config.audit_log, spec.rank))
        cap = min(c for c in (config.max_users, config.max_videos, 1 << 62) if c)
        if cap < config.batch_size * spec.world_size:
            from stream.errors import ConfigError

            raise ConfigError(f"id-map capacity {cap} is below batch_size x ranks "
                              f"({config.batch_size * spec.world_size}): a round's ids all "
                              "need rows at once")
        settings = dataclasses.replace(config.learner_settings(), rank=spec.rank,
                                       device=rank_device(config.device, spec.local_rank))
        super().__init__(config, registry, OnlineLearner(settings))
        self.updates = self.learner.log_updates()
        self.metrics.info.info({"model": config.model, "loss": config.loss, "meta": config.meta,
                                "drift_detector": config.drift_detector,
                                "rank": str(spec.rank), "world_size": str(spec.world_size)})
        self.ranks: Ranks | None = None
        self.partitions: list[int] = []
        self._steps = 0  # optimiser steps of the job so far: the same count on every rank
        self._had_records = True
        self.job: dict = {}  # the whole job's view, refreshed at progress rounds and at the end

    # -- opening: join the job, agree on the partitions, restore ---------------------------
    def _open(self, partitions: list[int] | None = None) -> None:
        cfg = self.config
        self.ranks = Ranks(self.spec)
        count = None
        if self.ranks.leader:
            create_topic(cfg.bootstrap, cfg.topic, partitions=cfg.partitions,
                         options=cfg.client_options())
            count = len(topic_partitions(cfg.bootstrap, cfg.topic, options=cfg.client_options()))
        count = self.ranks.broadcast(count)
        self.partitions = partitions_of(self.spec.rank, self.spec.world_size, count)
        logger.info("rank %d of %d reads partitions %s of %s", self.spec.rank,
                    self.spec.world_size, self.partitions, cfg.topic)
        self.commits.join(self.ranks, self.partitions, sync=self._sync,
                          local_state=self.learner.local_state_dict)
        super()._open(self.partitions)

    def _open_run_log(self) -> None:
        if self.spec.rank == 0:  # one run log for the job
            super()._open_run_log()

    def _restore(self) -> None:
        state = None
        if self.ranks.leader and self.checkpointer is not None:
            state = self.checkpointer.load_latest()
        state = self.ranks.broadcast(state)
        if state is None:
            return
        self._resume_from(state)
        self.updates.reset()  # the loaded model is the base of the next synchronisation
        mine = state.get("ranks") or []
        if self.spec.rank < len(mine):
            self.learner.load_local_state_dict(mine[self.spec.rank])
        elif self.spec.rank > 0:  # a rank the checkpoint did not know: its own fresh state
            fresh = OnlineLearner(self.learner.settings)
            self.learner.load_local_state_dict(fresh.local_state_dict())
        logger.info("rank %d resumes from a checkpoint of %s rank(s)", self.spec.rank,
                    state.get("world_size", 1))

    # -- one round ---------------------------------------------------------------------------
    def _poll(self) -> list[Record]:
        cfg = self.config
        wait = cfg.batch_timeout_s if self._had_records else min(cfg.batch_timeout_s,
                                                                 DRY_POLL_S)
        if not self.partitions:  # more ranks than partitions
            time.sleep(wait)
            return []
        self.consumer.max_wait_s = wait
        records = self.consumer.poll_batch()
        self._had_records = bool(records)
        return records

    def _iterate(self) -> bool:
        cfg = self.config
        records = self._poll()
        now = time.monotonic()
        batch = self.decode(records)
        idle = bool(cfg.idle_timeout_s) and now - self._last_records >= cfg.idle_timeout_s
        everyone = self.ranks.exchange({
            "users": batch.user_id, "videos": batch.video_id,
            "steps": self.learner.planned_steps(len(batch)),
            "stop": self._stop.is_set(), "done": self._done(), "idle": idle and not records,
            "commit": self._commit_due(now),
            "progress": now - self._last_progress >= cfg.progress_interval_s,
        })
        rows = None
        if any(len(r["users"]) for r in everyone):
            users, videos = self.learner.admit([u for r in everyone for u in r["users"]],
                                               [v for r in everyone for v in r["videos"]])
            start = sum(len(r["users"]) for r in everyone[: self.spec.rank])
            rows = users[start: start + len(batch)], videos[start: start + len(batch)]
        steps = max(r["steps"] for r in everyone)  # every rank takes as many steps
        if len(batch):
            self.learn(records, batch, rows, steps=steps, after_step=self._after_step)
        else:
            if records:
                self.learn(records, batch, rows)  # all dead-lettered: counted, no step
            for _ in range(steps):
                self._after_step()
        if any(r["commit"] for r in everyone):
            self.commit()
        if everyone[0]["progress"]:
            self._job_view()
            self._progress(now)
        if any(r["stop"] for r in everyone):
            logger.info("stop asked: the job stops")
            return False
        if all(r["done"] for r in everyone):
            logger.info("every rank processed its target offsets")
            return False
        if all(r["idle"] for r in everyone):
            logger.info("no records on any rank for %.1f s: stopping", cfg.idle_timeout_s)
            return False
        return True

    def _done(self, full_batch: bool = False) -> bool:
        if not self.partitions:
            with self._targets_lock:
                return self._targets is not None
        return super()._done(full_batch)

    def _after_step(self) -> None:
        self._steps += 1
        if self._steps % max(1, self.config.sync_every) == 0:
            self._sync()

    def _sync(self) -> None:
        started = time.perf_counter()
        union = self.ranks.synchronise(self.updates)
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        if self.publisher is not None:  # rank 0: the one model, once the ranks hold it
            self.publisher.touch(union)
            self._publish_due(time.monotonic())

    def _open_publisher(self, track: bool = True) -> None:
        if self.spec.rank == 0:  # the rows each synchronisation wrote: touch() in _sync
            super()._open_publisher(track=False)

    # -- the job's view ----------------------------------------------------------------------
    def _job_view(self) -> None:
        """Exchange each rank's throughput, lag and run-AUC histograms; rank 0 exports them."""
        totals = self.metrics.totals()
        lag = self.consumer.lag()
        seconds = time.monotonic() - (self._first_batch_at or time.monotonic())
        view = self.ranks.exchange({
            "consumed": totals["consumed"], "accepted": totals["accepted"],
            "dead_lettered": totals["dead_lettered"], "lag": sum(lag.values()),
            "events_per_s": totals["consumed"] / seconds if seconds > 0 else 0.0,
            "run": {t: r.state_dict() for t, r in self.learner.evaluator.run.items()},
        })
        auc = {}
        for target in self.learner.evaluator.run:
            merged = RunAUC()
            merged.pos = np.sum([v["run"][target]["pos"] for v in view], axis=0)
            merged.neg = np.sum([v["run"][target]["neg"] for v in view], axis=0)
            auc[target] = merged.get()
        self.job = {
            "ranks": self.spec.world_size,
            **{k: sum(v[k] for v in view) for k in ("consumed", "accepted", "dead_lettered")},
            "auc_run": auc,
            "per_rank": [{k: v[k] for k in ("consumed", "lag", "events_per_s")} for v in view],
        }
        if self.ranks.leader:
            for rank, v in enumerate(view):
                self.metrics.rank_lag.labels(str(rank)).set(v["lag"])
                self.metrics.rank_events_per_second.labels(str(rank)).set(v["events_per_s"])
            logger.info("job of %d ranks: consumed %d | run AUC dwell %.4f | per rank %s",
                        self.spec.world_size, self.job["consumed"], auc["dwell"],
                        [(v["consumed"], v["lag"]) for v in view])

    # -- commits at a barrier ------------------------------------------------------------------
    def _checkpointed(self, offsets: dict[int, int], path: Path | None) -> None:
        if self._audit is not None:  # the proof that the ranks hold one model
            self._write_audit("checkpoint", offsets, rank=self.spec.rank,
                              model=model_digest(self.learner.model))

    def _final_commit(self) -> None:
        """Collective: retry the last commit (every rank the same number of times)."""
        super()._final_commit()
        self._job_view()

    def run(self) -> dict:
        try:
            totals = super().run()
        finally:
            if self.ranks is not None:
                self.ranks.close()
        return {**totals, "job": self.job}
