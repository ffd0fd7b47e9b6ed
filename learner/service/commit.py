"""The commit protocol: how a learner makes its progress durable, written once.

Every commit (on a timer, on revoke, on the way out) takes the same steps:

1. wait for the micro-batch training in the background (offsets follow their training);
2. flush the dead letters: each one acknowledged, or (``DeadLetterError``) the failure is
   counted and logged and nothing is committed; the letters are sent again and the next
   commit waits for them;
3. with a checkpoint folder and events since the last checkpoint, write a checkpoint (the
   learner's state and the next offset of every partition) durably, or
   (``CheckpointError``) count the failure, mark checkpoints unhealthy, commit nothing;
4. commit the offsets: the checkpoint's, or without checkpoints the processed ones. A
   blocking commit that fails (the broker away) returns False; the next commit sends the
   offsets again.

:class:`CommitProtocol` also keeps what makes a run's ending truthful (the offsets it
committed, where it started on each partition: :meth:`~CommitProtocol.uncommitted`), the
positions where a revoked partition resumes if it comes back, and the last commit on the
way out, retried until a deadline. It is handed its consumer (a
:class:`~stream.clients.BatchConsumer`), its dead-letter queue, an optional
:class:`~learner.service.checkpoint.Checkpointer`, the metrics and a callable that gives the
learner's state; it builds no client, so it runs on fakes (``tests/unit/test_commit.py``).
A rank of a distributed job uses :class:`BarrierCommitProtocol`: the same steps taken
together by every rank, with one checkpoint written by rank 0.

How the daemon drives it (an example, not a doctest)::

    commits = CommitProtocol(metrics, Checkpointer(folder), state=learner.state_dict,
                             topic="events", group="learners")
    commits.consumer, commits.dlq = consumer, dead_letter_queue  # consumer built with
    # on_revoke=commits.on_revoke, on_assign=commits.on_assign
    ...
    commits.mark_processed(records)   # after the batch is trained
    commits.commit()                  # False: nothing committed, tried again next time
    ...
    commits.final_commit(timeout_s=30.0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from learner.service.checkpoint import Checkpointer, CheckpointError
from learner.service.monitoring import Metrics
from stream.clients import BatchConsumer, Record
from stream.dlq import DeadLetterError
from stream.errors import ClientError  # what either Kafka client raises

if TYPE_CHECKING:
    from learner.service.distributed import Ranks

logger = logging.getLogger(__name__)

#: What a commit is told after a checkpoint is durable: its offsets and its file (None where
#: another rank wrote it).
OnCheckpoint = Callable[[dict[int, int], Path | None], None]


class DeadLetters(Protocol):
    """What the protocol needs of :class:`stream.dlq.DeadLetterQueue`."""

    written: int
    truncated: int

    def flush(self) -> None:
        """Wait for every dead letter's acknowledgement; DeadLetterError if one failed."""


def format_uncommitted(uncommitted: Mapping[int, int]) -> str:
    """``{partition: events}`` for people.

    >>> format_uncommitted({3: 120, 0: 1})
    'partition 0: 1 event, partition 3: 120 events'
    """
    return ", ".join(f"partition {p}: {n:,} event{'s' if n != 1 else ''}"
                     for p, n in sorted(uncommitted.items()))


class CommitProtocol:
    """Flush dead letters, checkpoint, commit, for one learner (see the module's docstring).

    ``state`` gives the learner's state for a checkpoint, ``settle`` waits for the training
    in the background, ``on_checkpoint`` hears of each durable checkpoint. ``consumer`` and
    ``dlq`` may be set once they are built. ``clock`` and ``sleep`` are for the tests.
    """

    #: Whether every member takes the commit together (then its outcome is the members'
    #: common one: a member's own failed offset commit is only retried next time).
    collective = False

    def __init__(
        self,
        metrics: Metrics,
        checkpointer: Checkpointer | None = None,
        *,
        state: Callable[[], dict[str, Any]] = dict,
        topic: str = "",
        group: str = "",
        consumer: BatchConsumer | None = None,
        dlq: DeadLetters | None = None,
        settle: Callable[[], None] = lambda: None,
        on_checkpoint: OnCheckpoint | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.metrics, self.checkpointer = metrics, checkpointer
        self.consumer, self.dlq = consumer, dlq
        self.topic, self.group = topic, group
        self._state, self._settle, self._on_checkpoint = state, settle, on_checkpoint
        self._clock, self._sleep = clock, sleep
        self.last_commit = clock()
        self.since_checkpoint = 0  # events processed since the last durable checkpoint
        #: partition -> offset to resume from when assigned: the loaded checkpoint's, or
        #: where this learner's state stood when the partition was revoked
        self.resume: dict[int, int] = {}
        #: partition -> offset this learner last committed (blocking), or first processed
        self.committed: dict[int, int] = {}
        self.first_offsets: dict[int, int] = {}
        self._dead_letters_counted = (0, 0)  # the queue's (written, truncated) published

    # -- the bookkeeping --------------------------------------------------------------------
    def mark_processed(self, records: Sequence[Record]) -> None:
        """These records are trained: their offsets may be committed."""
        assert self.consumer is not None
        self.consumer.mark_processed(records)
        self._note_first_offsets(records)
        self.since_checkpoint += len(records)

    def _note_first_offsets(self, records: Sequence[Record]) -> None:
        """Remember where this learner started on each partition it processes (what counts
        as uncommitted while it has committed nothing there)."""
        assert self.consumer is not None
        processed = self.consumer.processed()
        new = processed.keys() - self.first_offsets.keys()
        if not new:
            return
        first: dict[int, int] = {}
        for r in records:
            if r.partition in new:
                first.setdefault(r.partition, r.offset)
        for partition in new:
            self.first_offsets[partition] = first.get(partition, processed[partition])

    def uncommitted(self) -> dict[int, int]:
        """Events processed by this learner whose offsets are not committed, by partition
        (empty when the committed offsets reached what it processed)."""
        if self.consumer is None:
            return {}
        out = {}
        for partition, offset in self.consumer.processed().items():
            base = self.committed.get(partition, self.first_offsets.get(partition, offset))
            if offset > base:
                out[partition] = offset - base
        return out

    def offsets(self) -> dict[int, int]:
        """Where this learner's state stands on every partition it knows: processed, else
        the offset it resumes from."""
        assert self.consumer is not None
        return {**self.resume, **self.consumer.processed()}

    # -- the protocol -----------------------------------------------------------------------
    def commit(self, blocking: bool = True) -> bool:
        """Make progress durable: flush dead letters, checkpoint if configured, commit.

        ``blocking=False`` (in a rebalance callback) sends the offset commit without waiting.
        Returns False when a dead letter or the checkpoint could not be written (then
        nothing is committed and the next commit tries again), or a blocking offset commit
        failed (not for a collective commit: there a member's offsets are sent again next
        time).
        """
        self.last_commit = self._clock()
        self._settle()  # offsets are committed after the training of their events
        flushed = self.flush_dead_letters()
        mine = self.offsets() if self.checkpointer is not None else None
        flushed, offsets, since = self._agree(flushed, mine or {}, self.since_checkpoint)
        if not flushed:
            return False
        if since and not self._checkpoint(offsets):
            return False
        return self.commit_offsets(mine, blocking) or self.collective

    def _agree(self, flushed: bool, offsets: dict[int, int],
               since: int) -> tuple[bool, dict[int, int], int]:
        """Whether every member flushed its dead letters, the offsets of the checkpoint and
        the events since the last one: a learner alone takes its own word."""
        return flushed, offsets, since if self.checkpointer is not None else 0

    def flush_dead_letters(self) -> bool:
        """Wait for every dead letter's acknowledgement and count them; False if one failed
        (it is sent again, and nothing may be committed now)."""
        assert self.dlq is not None
        try:
            self.dlq.flush()
            return True
        except DeadLetterError as exc:
            self.metrics.dead_letter_failures.inc()
            logger.error("DEAD-LETTER WRITE FAILED, offsets not committed (nothing is lost; "
                         "the dead letters are sent again and the commit retried): %s", exc)
            return False
        finally:
            written, truncated = self._dead_letters_counted
            self.metrics.dead_letters_written.inc(self.dlq.written - written)
            self.metrics.dead_letters_truncated.inc(self.dlq.truncated - truncated)
            self._dead_letters_counted = (self.dlq.written, self.dlq.truncated)

    def _checkpoint(self, offsets: dict[int, int]) -> bool:
        """Write a checkpoint holding ``offsets``; False (counted, logged) if it failed."""
        started = self._clock()
        try:
            path = self._save(offsets)
        except CheckpointError as exc:
            self.metrics.checkpoint_failures.inc()
            self.metrics.checkpoint_healthy.set(0)
            logger.error("CHECKPOINT FAILED, offsets not committed (nothing is lost; the "
                         "events since the last checkpoint will be trained again): %s", exc)
            return False
        self.metrics.checkpoint_duration.set(self._clock() - started)
        self.metrics.checkpoint_time.set(time.time())
        self.metrics.checkpoint_healthy.set(1)
        self.since_checkpoint = 0
        if self._on_checkpoint is not None:
            self._on_checkpoint(offsets, path)
        return True

    def _save(self, offsets: dict[int, int]) -> Path | None:
        assert self.checkpointer is not None
        return self.checkpointer.save({"format": 1, "topic": self.topic, "offsets": offsets,
                                       "learner": self._state()})

    def commit_offsets(self, offsets: dict[int, int] | None, blocking: bool) -> bool:
        """Commit ``offsets`` (None: the processed ones), surviving a broker that is away:
        they are committed next time. False when a blocking commit failed."""
        assert self.consumer is not None
        chosen = self.consumer.processed() if offsets is None else offsets
        try:
            if self.consumer.commit(offsets, blocking):
                self.metrics.commits.inc()
        except ClientError as exc:
            logger.warning("offset commit failed (%r): will retry at the next commit", exc)
            return False
        if blocking:
            self.committed.update(chosen)
        return True

    def final_commit(self, timeout_s: float) -> bool:
        """Commit on the way out, retrying once a second until ``timeout_s`` has passed (a
        collective commit: ``int(timeout_s)`` times, at least once, so every member tries
        as often); False, with the uncommitted events logged, when it gave up."""
        deadline = self._clock() + timeout_s
        attempts = 0
        while not self.commit():
            attempts += 1
            if (attempts >= max(1, int(timeout_s)) if self.collective
                    else self._clock() >= deadline):
                logger.error("stopping without committing the last offsets (%s): their "
                             "events will be read again by the next learner of group %s",
                             format_uncommitted(self.uncommitted()) or "none processed",
                             self.group)
                return False
            if attempts == 1:
                logger.error("last commit failed: retrying")
            self._sleep(1.0)
        return True

    # -- rebalances -------------------------------------------------------------------------
    def on_revoke(self, revoked: Collection[int]) -> None:
        """Commit what was processed before ``revoked`` are given up (without waiting: the
        client may call this on its IO thread), and remember where the learner's state
        stands on every partition: one that comes back resumes there (the commit may not
        have landed yet)."""
        assert self.consumer is not None
        positions = self.consumer.processed()
        self.commit(blocking=False)
        self.resume.update(positions)
        for partition in revoked:  # counted afresh if it comes back (uncommitted())
            self.first_offsets.pop(partition, None)
            self.committed.pop(partition, None)

    def on_assign(self, partitions: Collection[int]) -> None:
        """Seek each assigned partition the learner holds a position of to that position."""
        assert self.consumer is not None
        for partition in sorted(set(partitions) & set(self.resume)):
            self.consumer.seek(partition, self.resume[partition])
            logger.info("partition %d resumes from checkpoint offset %d",
                        partition, self.resume[partition])


class BarrierCommitProtocol(CommitProtocol):
    """The commit of one rank of a distributed job, taken by every rank together.

    The ranks synchronise their models, agree on whether all flushed their dead letters and
    on the events since the last checkpoint; rank 0 writes one checkpoint that holds the
    model, every rank's own state and the offsets of every rank's partitions; once it is
    durable every rank commits its own partitions' offsets. Every rank returns the same.
    :meth:`join` hands it the job (known once the daemon has opened).
    """

    collective = True
    ranks: Ranks
    partitions: set[int]

    def join(self, ranks: Ranks, partitions: Collection[int], sync: Callable[[], None],
             local_state: Callable[[], dict[str, Any]]) -> None:
        """The job's collectives, this rank's partitions, how to synchronise the ranks'
        models, and this rank's own state for a checkpoint."""
        self.ranks, self.partitions = ranks, set(partitions)
        self._sync, self._local_state = sync, local_state

    def offsets(self) -> dict[int, int]:
        return {p: o for p, o in super().offsets().items() if p in self.partitions}

    def _agree(self, flushed: bool, offsets: dict[int, int],
               since: int) -> tuple[bool, dict[int, int], int]:
        self._sync()
        everyone = self.ranks.exchange({"flushed": flushed, "offsets": offsets,
                                        "since": since})
        merged = dict(self.resume)
        for r in everyone:
            merged.update(r["offsets"])
        total = sum(r["since"] for r in everyone) if self.checkpointer is not None else 0
        return all(r["flushed"] for r in everyone), merged, total

    def _save(self, offsets: dict[int, int]) -> Path | None:
        states = self.ranks.gather(self._local_state())  # only rank 0 writes
        error = None
        if self.ranks.leader:
            assert self.checkpointer is not None
            try:
                self.checkpointer.save({
                    "format": 2, "topic": self.topic, "offsets": offsets,
                    "learner": self._state(), "ranks": states,
                    "world_size": self.ranks.world_size,
                })
            except CheckpointError as exc:
                error = str(exc)
        error = self.ranks.broadcast(error)
        if error is not None:
            raise CheckpointError(f"on rank 0: {error}")
        return None
