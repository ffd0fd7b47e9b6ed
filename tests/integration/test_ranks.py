"""Learners as ranks of a torch.distributed job (gloo, CPU), real processes on a real broker.

Each job is launched as users launch it, with ``torchrun`` (``python -m torch.distributed.run``)
running ``dwell learn``; every rank writes its own audit log (``audit.rankN.jsonl``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learner.service.checkpoint import Checkpointer
from stream.admin import committed_offsets, end_offsets
from stream.broker import free_port
from tests.integration.helpers import (
    KUAIRAND_EVENTS,
    KUAIRAND_INVALID,
    learn_until_end,
    read_audit,
    replay_through_broker_loss,
    trained_offsets,
)
from tests.integration.test_faults import _fill, _wait_for

RANK_FLAGS = ("--batch-timeout-s", "0.2", "--progress-interval-s", "5", "--metrics-port", "-1")


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_job_left_behind():
    """A job that a failed test leaves running is killed, torchrun and its ranks."""
    yield
    while _STARTED:
        job = _STARTED.pop()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)


def _job(bootstrap: str, topic: str, tmp: Path, client: str, ranks: int, *extra: str,
         restarts: int = 0, log_name: str = "job.log") -> subprocess.Popen:
    """``torchrun --nproc-per-node RANKS dwell learn ...`` in the background, in a process
    group of its own (its ranks with it)."""
    log = open(tmp / log_name, "ab")  # noqa: SIM115 - handed to the child
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
         "--master-port", str(free_port()), "--max-restarts", str(restarts),
         "-m", "learner.cli", "learn", "--bootstrap", bootstrap, "--client", client,
         "--topic", topic, "--group", f"{topic}-job", "--checkpoint-dir", str(tmp / "ckpt"),
         "--audit-log", str(tmp / "audit.jsonl"), *RANK_FLAGS, *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    _STARTED.append(job)
    return job


def _finish(job: subprocess.Popen, tmp: Path, timeout: float = 240) -> str:
    try:
        code = job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    text = (tmp / "job.log").read_text(errors="replace")
    assert code == 0, text[-3000:]
    return text


def _audits(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("audit.rank*.jsonl"))


def _checkpoint_digests(tmp: Path) -> dict[int, set[str]]:
    """Model digest of each rank at each checkpoint, by checkpoint number."""
    seen: dict[int, set[str]] = {}
    for audit in _audits(tmp):
        checkpoints = [r for r in read_audit(audit) if r["kind"] == "checkpoint"]
        for i, record in enumerate(checkpoints):
            seen.setdefault(i, set()).add(record["model"])
    return seen


def _job_auc(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("job of"))
    return float(line.split("run AUC dwell ")[1].split()[0])


def test_two_ranks_train_every_offset_once_and_hold_one_model(kafka_bootstrap, topic, tmp_path,
                                                              kafka_client):
    sent = _fill(kafka_bootstrap, topic, kafka_client)
    text = _finish(_job(kafka_bootstrap, topic, tmp_path, kafka_client, 2, "--until-end",
                        "--checkpoint-every", "8192"), tmp_path)
    ends = end_offsets(kafka_bootstrap, topic)
    assert sent == sum(ends.values()) == KUAIRAND_EVENTS
    # each rank read exactly its partitions (p % 2), and every offset was trained once
    for rank, audit in enumerate(_audits(tmp_path)):
        assert set(trained_offsets(audit)) == {p for p in ends if p % 2 == rank}
    trained = trained_offsets(*_audits(tmp_path))
    for p, end in ends.items():
        assert trained[p] == dict.fromkeys(range(end), 1), f"partition {p}"
    # one model: the ranks' parameters are bit-identical at every checkpoint
    digests = _checkpoint_digests(tmp_path)
    assert len(digests) >= 3 and all(len(d) == 1 for d in digests.values()), digests
    # one checkpoint for the job, with every partition; offsets committed under the group
    final = Checkpointer(tmp_path / "ckpt").load_latest()
    assert final["world_size"] == 2 and len(final["ranks"]) == 2
    assert {int(p): o for p, o in final["offsets"].items()} == ends
    assert committed_offsets(kafka_bootstrap, f"{topic}-job", topic) == ends
    assert (f"job of 2 ranks: consumed {sent:,} accepted {sent - KUAIRAND_INVALID:,} "
            f"dead-lettered {KUAIRAND_INVALID:,}") in text


def test_a_killed_rank_restarts_the_job_from_its_checkpoint(kafka_bootstrap, topic, tmp_path,
                                                             kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client)
    job = _job(kafka_bootstrap, topic, tmp_path, kafka_client, 2, "--until-end",
               "--batch-size", "256", "--checkpoint-every", "2048", restarts=2)
    rank1 = tmp_path / "audit.rank1.jsonl"

    def checkpointed_twice() -> bool:
        return rank1.exists() and sum(r["kind"] == "checkpoint" for r in read_audit(rank1)) >= 2

    assert _wait_for(checkpointed_twice, timeout=120), (tmp_path / "job.log").read_text()
    pid = next(r["pid"] for r in read_audit(rank1) if r["kind"] == "start")
    os.kill(pid, signal.SIGKILL)
    text = _finish(job, tmp_path)
    ends = end_offsets(kafka_bootstrap, topic)
    # the job ran twice: the second run of every rank resumed from the last checkpoint
    # written before the kill, and from there on nothing was missed
    for audit in _audits(tmp_path):
        records = read_audit(audit)
        assert sum(r["kind"] == "start" for r in records) == 2
        assert any(r["kind"] == "resume" for r in records)
    trained = trained_offsets(*_audits(tmp_path))
    twice = 0
    for p, end in ends.items():
        assert set(trained[p]) == set(range(end)), f"partition {p}: an offset was lost"
        twice += sum(n > 1 for n in trained[p].values())
    assert committed_offsets(kafka_bootstrap, f"{topic}-job", topic) == ends
    assert "job of 2 ranks" in text
    print(f"rank SIGKILLed, job restarted by torchrun; events trained twice: {twice}")


def test_a_job_resumes_with_another_number_of_ranks(kafka_bootstrap, topic, tmp_path,
                                                    kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client)
    job = _job(kafka_bootstrap, topic, tmp_path, kafka_client, 2, "--batch-size", "256",
               "--checkpoint-every", "4096")
    rank0 = tmp_path / "audit.rank0.jsonl"
    assert _wait_for(lambda: rank0.exists() and sum(
        r["kind"] == "batch" for r in read_audit(rank0)) >= 20, timeout=120)
    job.send_signal(signal.SIGTERM)  # torchrun passes it on: the job stops with a checkpoint
    job.wait(timeout=120)
    stopped = Checkpointer(tmp_path / "ckpt").load_latest()
    assert stopped["world_size"] == 2
    for audit in _audits(tmp_path):
        audit.rename(audit.with_suffix(".first"))
    _finish(_job(kafka_bootstrap, topic, tmp_path, kafka_client, 3, "--until-end",
                 "--batch-size", "256"), tmp_path)
    ends = end_offsets(kafka_bootstrap, topic)
    # the three ranks took the partitions up where the two-rank job's checkpoint left them
    resumed = {}
    for audit in _audits(tmp_path):
        rank = int(audit.name.split(".rank")[1].split(".")[0])
        first = trained_offsets(audit)
        for p in first:
            assert p % 3 == rank
            resumed[p] = min(first[p])
    # (a partition the two ranks had not read yet is not in the checkpoint: it starts at 0)
    held = {int(p): o for p, o in stopped["offsets"].items()}
    assert resumed == {p: held.get(p, 0) for p in ends if held.get(p, 0) < ends[p]}
    trained = trained_offsets(*_audits(tmp_path), *tmp_path.glob("audit.rank*.first"))
    for p, end in ends.items():
        assert set(trained[p]) == set(range(end)), f"partition {p}"
    assert committed_offsets(kafka_bootstrap, f"{topic}-job", topic) == ends


def test_two_ranks_carry_on_when_a_broker_dies(kafka_cluster, replicated_topic, tmp_path,
                                               kafka_client):
    topic = replicated_topic
    job = _job(kafka_cluster.bootstrap, topic, tmp_path, kafka_client, 2,
               "--idle-timeout-s", "15", "--checkpoint-every", "8192")
    assert _wait_for(lambda: all(  # both ranks are up, their consumers made
        any(r["kind"] == "start" for r in read_audit(a)) for a in _audits(tmp_path)
    ) and len(_audits(tmp_path)) == 2, timeout=120)
    time.sleep(3)
    loss = replay_through_broker_loss(kafka_cluster, topic, node=1, client=kafka_client)
    assert loss.stats.failed == 0 and sum(loss.ends.values()) == KUAIRAND_EVENTS
    _finish(job, tmp_path, timeout=300)
    trained = trained_offsets(*_audits(tmp_path))
    for p, end in loss.ends.items():
        assert set(trained[p]) == set(range(end)), f"partition {p}: events lost"
    assert committed_offsets(kafka_cluster.bootstrap, f"{topic}-job", topic) == loss.ends


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=False)
def test_two_ranks_reach_the_auc_of_one(kafka_bootstrap, topic, tmp_path, kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client)
    flags = {"loss": "idl", "meta": "ig"}
    _, _, samples = learn_until_end(kafka_bootstrap, topic, group=f"{topic}-one", **flags)
    one = samples[("dwell_auc", (("target", "dwell"), ("window", "run")))]
    text = _finish(_job(kafka_bootstrap, topic, tmp_path, kafka_client, 2, "--until-end",
                        "--loss", "idl", "--meta", "ig", "--checkpoint-dir", ""), tmp_path)
    two = _job_auc(text)
    print(f"prequential run AUC (dwell labels): 1 rank {one:.4f}, 2 ranks {two:.4f}")
    # Ten runs on one day gave gaps of 0.0025 to 0.015, with the numpy and the autograd
    # steps alike (how Kafka splits the micro-batches differs from run to run): 0.01 was
    # inside that noise. That every rank's update is applied whole is checked exactly by
    # tests/unit/test_distributed.py; this is the end-to-end sanity check.
    assert abs(two - one) <= 0.02
