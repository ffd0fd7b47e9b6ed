"""The collectives of learner.service.distributed between real processes (gloo on loopback)."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.service.distributed import JobSpec, Ranks, partitions_of
from stream.broker import free_port
from stream.errors import ConfigError
from stream.event import decode_batch


def _events(users: list[int], videos: list[int], seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for u, v in zip(users, videos, strict=True):
        play = int(rng.integers(500, 40_000))
        out.append(
            f'{{"user_id":{u},"video_id":{v},"play_ms":{play},"duration_ms":20000,'
            f'"ts_ms":{1000 * u}}}'.encode())
    return out


def _state(learner: OnlineLearner) -> dict[str, np.ndarray]:
    out = {k: v.detach().clone().numpy() for k, v in learner.model.state_dict().items()}
    for i, group in enumerate(learner.optimizer.optimizers):
        for j, p in enumerate(group.param_groups[0]["params"]):
            for key in ("exp_avg", "exp_avg_sq"):
                if key in group.state.get(p, {}):
                    out[f"opt{i}.{j}.{key}"] = group.state[p][key].clone().numpy()
    return out


def _rank(rank: int, world: int, port: int, rounds: int, queue, model: str = "gmf") -> None:
    ranks = Ranks(JobSpec(rank=rank, world_size=world, master_port=port, timeout_s=60))
    try:
        learner = OnlineLearner(LearnerSettings(
            **{**PAPER_SETTINGS, "model": model, "train_batch": 8}, dim=4, loss="idl",
            meta="ig", rank=rank))
        updates = learner.log_updates()
        report = {"rank": rank, "rounds": []}
        for r in range(rounds):
            # disjoint users per rank, shared videos, as a keyed topic gives
            users = [1000 * rank + (7 * i + r) % 13 for i in range(24)]
            videos = [(5 * i + r) % 9 for i in range(24)]
            batch = decode_batch(_events(users, videos, seed=100 * r + rank))
            everyone = ranks.exchange((batch.user_id, batch.video_id))
            u_rows, v_rows = learner.admit([u for b in everyone for u in b[0]],
                                           [v for b in everyone for v in b[1]])
            start = sum(len(b[0]) for b in everyone[:rank])
            base = _state(learner)
            learner.learn_many(batch, rows=(u_rows[start:start + 24], v_rows[start:start + 24]))
            before = _state(learner)
            trained = updates.rows()
            ranks.synchronise(updates)
            report["rounds"].append({"base": base, "before": before, "after": _state(learner),
                                     "trained": trained})
        queue.put(report)
    finally:
        ranks.close()


def _run_job(world: int, rounds: int, model: str = "gmf") -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, rounds, queue, model))
             for r in range(world)]
    for p in procs:
        p.start()
    reports = sorted((queue.get(timeout=120) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return reports


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return _run_job(world=2, rounds=3)


def test_every_rank_holds_the_same_model_after_each_synchronisation(two_ranks):
    for r in range(3):
        after = [rep["rounds"][r]["after"] for rep in two_ranks]
        assert after[0].keys() == after[1].keys()
        for key in after[0]:
            np.testing.assert_array_equal(after[0][key], after[1][key], err_msg=key)
        # and they trained different things before it
        before = [rep["rounds"][r]["before"] for rep in two_ranks]
        assert not np.array_equal(before[0]["user.weight"], before[1]["user.weight"])


def test_synchronisation_applies_every_ranks_update_whole(two_ranks):
    for r in range(3):
        base = two_ranks[0]["rounds"][r]["base"]
        for key in ("user.weight", "item.weight", "predict.weight", "predict.bias"):
            np.testing.assert_array_equal(base[key], two_ranks[1]["rounds"][r]["base"][key])
            expected = base[key] + sum(rep["rounds"][r]["before"][key] - base[key]
                                       for rep in two_ranks)
            np.testing.assert_allclose(two_ranks[0]["rounds"][r]["after"][key], expected,
                                       rtol=1e-5, atol=1e-6, err_msg=key)
        # users are disjoint: each user row moved by its own rank's update only
        user_rows = [rep["rounds"][r]["trained"]["user"] for rep in two_ranks]
        assert not set(user_rows[0]) & set(user_rows[1])
        for rep, rows in zip(two_ranks, user_rows, strict=True):
            np.testing.assert_allclose(two_ranks[0]["rounds"][r]["after"]["user.weight"][rows],
                                       rep["rounds"][r]["before"]["user.weight"][rows],
                                       rtol=1e-5, atol=1e-6)


def test_the_wide_model_s_counts_add_up_over_the_ranks():
    """The wide model's counts (buffers, not trained) are synchronised as the sum of every
    rank's counting: each rank then holds the job's counts, and the same model."""
    ranks = _run_job(world=2, rounds=2, model="wide")
    for r in range(2):
        after = [rep["rounds"][r]["after"] for rep in ranks]
        for key in after[0]:
            np.testing.assert_array_equal(after[0][key], after[1][key], err_msg=key)
        base = ranks[0]["rounds"][r]["base"]["item_counts"]
        counted = sum(rep["rounds"][r]["before"]["item_counts"] - base for rep in ranks)
        assert counted[:, 1].sum() > ranks[0]["rounds"][r]["before"]["item_counts"][:, 1].sum() \
            - base[:, 1].sum()  # the other rank's events are in
        np.testing.assert_allclose(after[0]["item_counts"], base + counted)


def test_a_job_of_one_rank_changes_nothing():
    (report,) = _run_job(world=1, rounds=2)
    for rnd in report["rounds"]:
        for key, value in rnd["before"].items():
            np.testing.assert_array_equal(rnd["after"][key], value, err_msg=key)


def test_partitions_are_dealt_round_robin_and_cover_the_topic():
    shares = [partitions_of(r, 3, 8) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sorted(p for s in shares for p in s) == list(range(8))
    assert partitions_of(3, 4, 2) == []  # more ranks than partitions: an idle rank


def test_job_spec_takes_flags_over_torchrun_variables():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29400"}
    spec = JobSpec.resolve(env=env)
    assert (spec.rank, spec.world_size, spec.local_rank) == (1, 4, 1)
    assert (spec.master_addr, spec.master_port, spec.backend) == ("10.0.0.1", 29400, "gloo")
    assert JobSpec.resolve(rank=3, env=env).rank == 3
    assert JobSpec.resolve(env={}, device="cuda").backend == "nccl"
    assert JobSpec.resolve(env={}).world_size == 1
    with pytest.raises(ConfigError, match="not in a job"):
        JobSpec.resolve(rank=4, env=env)
    assert torch.distributed.is_available()
