"""Id maps with a capacity: least recently seen ids evicted, their rows started afresh."""

from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry

from learner.core.backbones.base import INIT_STD
from learner.core.errors import ConfigError
from learner.core.ids.idmap import IdMap
from learner.core.ids.intmap import IntMap
from learner.core.sampling import NegativeSampler, Reservoir
from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.service.checkpoint import Checkpointer
from learner.service.config import Config
from learner.service.daemon import Daemon
from stream.event import decode_batch
from stream.scan import IntIds


def gmf_settings(**settings) -> LearnerSettings:
    """The settings these tests were written for: the paper's GMF (the default is wide)."""
    return LearnerSettings(**{**PAPER_SETTINGS, **settings})


# -- the map on its own ---------------------------------------------------------------------


def test_capacity_is_never_exceeded_and_rows_stay_dense():
    m = IdMap(capacity=50)
    rng = np.random.default_rng(0)
    for _ in range(40):
        ids = rng.integers(0, 500, 30).tolist()
        rows = m.lookup(ids)
        assert len(m) <= 50 and rows.min() >= 0 and rows.max() < 50
        # every id of the lookup is mapped, and to the row just returned
        assert m.lookup(ids, add=False).tolist() == rows.tolist()
    assert len(m) == 50
    assert sorted(m.lookup(m.state_dict()["ids"], add=False).tolist()) == list(range(50))


def test_rows_are_handed_out_in_order_until_the_capacity():
    m = IdMap(capacity=4)
    assert m.lookup(["a", "b", "a"]).tolist() == [0, 1, 0]
    assert m.lookup(["c", 7]).tolist() == [2, 3]
    assert m.evictions == 0 and m.last_evicted.size == 0


def test_the_least_recently_seen_id_is_evicted_first():
    m = IdMap(capacity=3)
    for key in ("a", "b", "c"):  # seen at times 1, 2, 3
        m.lookup([key])
    m.lookup(["a"])  # a is now the most recent: b is the oldest
    assert m.lookup(["d"]).tolist() == [1]  # d takes b's row
    assert "b" not in m and m.last_evicted.tolist() == [1]
    assert m.lookup(["e"]).tolist() == [2]  # then c goes
    assert "c" not in m and set(m.state_dict()["ids"]) == {"a", "d", "e"}
    m.lookup(["f", "g"])  # the two oldest now: a (time 4), then d (time 5)
    assert "a" not in m and "d" not in m and m.last_evicted.tolist() == [0, 1]
    assert m.evictions == 4


def test_a_query_without_add_does_not_count_as_seeing():
    m = IdMap(capacity=2)
    m.lookup(["a"])
    m.lookup(["b"])
    assert m.lookup(["a", "zz"], add=False).tolist() == [0, -1]
    m.lookup(["c"])
    assert "a" not in m and "b" in m and "zz" not in m


def test_ids_of_one_lookup_never_evict_each_other():
    m = IdMap(capacity=4)
    m.lookup(["a", "b", "c", "d"])
    m.lookup(["d"])
    rows = m.lookup(["x", "a", "y", "x"])  # a is the oldest but is in this lookup
    assert "a" in m and rows[1] == 0
    assert set(m.state_dict()["ids"]) == {"a", "d", "x", "y"}
    assert sorted(m.last_evicted.tolist()) == [1, 2]  # b and c, not a or d
    assert rows[0] == rows[3] and len(set(rows.tolist())) == 3


def test_a_lookup_with_more_distinct_ids_than_capacity_is_refused_and_changes_nothing():
    m = IdMap(capacity=3)
    m.lookup(["a", "b"])
    before = m.state_dict()
    with pytest.raises(ConfigError, match="capacity must be at least the distinct ids"):
        m.lookup(["a", "c", "d", "e"])
    after = m.state_dict()
    assert after["ids"] == before["ids"] and after["clock"] == before["clock"]
    assert m.lookup(["c", "d", "c"]).tolist() == [2, 0, 2]  # 3 distinct ids fit: a evicted
    with pytest.raises(ConfigError):
        IdMap(capacity=0)


def test_unbounded_rows_go_in_order_of_first_appearance():
    m = IdMap()
    assert m.lookup(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]
    assert m.lookup(["c", "d", "a", "d", 7]).tolist() == [2, 3, 0, 3, 4]
    assert m.lookup(["z", "a"], add=False).tolist() == [-1, 0] and len(m) == 5


def test_unbounded_map_never_evicts():
    m = IdMap()
    m.lookup(list(range(10_000)))
    assert len(m) == 10_000 and m.evictions == 0 and m.last_evicted.size == 0
    assert m.capacity is None


def test_state_round_trip_keeps_the_eviction_order():
    rng = np.random.default_rng(1)
    a = IdMap(capacity=40)
    for _ in range(20):
        a.lookup(rng.integers(0, 200, 25).tolist())
    b = IdMap(capacity=40)
    b.load_state_dict(a.state_dict())
    assert b.evictions == a.evictions > 0
    for _ in range(20):
        ids = rng.integers(0, 200, 25).tolist()
        assert a.lookup(ids).tolist() == b.lookup(ids).tolist()
        assert a.last_evicted.tolist() == b.last_evicted.tolist()
    assert a.state_dict()["ids"] == b.state_dict()["ids"]


def test_old_and_unbounded_states_load_into_a_bounded_map():
    old = {"ids": ["a", "b", "c"]}  # a checkpoint from before capacities
    m = IdMap(capacity=3)
    m.load_state_dict(old)
    assert m.lookup(["c", "a"]).tolist() == [2, 0] and m.evictions == 0
    assert m.lookup(["d"]).tolist() == [1]  # b: seen at time zero, never since
    big = IdMap()
    big.lookup(list(range(10)))
    small = IdMap(capacity=4)  # more ids than its capacity: kept, and no new rows
    small.load_state_dict(big.state_dict())
    assert small.lookup([42]).tolist() == [0] and len(small) == 10
    unbounded = IdMap()
    unbounded.load_state_dict(m.state_dict())  # a bounded map's state into an unbounded one
    assert unbounded.lookup(["d", "e"]).tolist() == [1, 3]


def test_the_int_map_is_a_dict_through_puts_deletes_and_growth():
    rng = np.random.default_rng(0)
    m, reference = IntMap(), {}
    for _ in range(2000):
        keys = np.unique(rng.integers(-50, 3000, rng.integers(1, 60)))
        roll = rng.random()
        if roll < 0.4:
            values = rng.integers(0, 10**9, keys.size)
            m.put(keys, values)
            reference.update(zip(keys.tolist(), values.tolist(), strict=True))
        elif roll < 0.6:
            keys = rng.permutation(np.repeat(keys, 2))
            first = len(reference) + 10**9
            expected = {}
            for key in keys.tolist():
                if key not in reference and key not in expected:
                    expected[key] = first + len(expected)
            rows = m.get_or_put(keys, first)
            reference.update(expected)
            assert rows.tolist() == [reference[k] for k in keys.tolist()]
        else:  # deletes leave every other key reachable (backward shifts)
            m.delete(keys)
            for key in keys.tolist():
                reference.pop(key, None)
        probe = rng.integers(-60, 3100, 200)
        assert m.get(probe).tolist() == [reference.get(k, -1) for k in probe.tolist()]
        assert len(m) == len(reference)


def _ids(rng: np.random.Generator, size: int) -> list:
    """Ids of every kind the map must keep apart: small and negative ints, int64's edges (its
    least value is the compiled map's empty mark), ints past int64, numpy ints, strings."""
    pool = [*range(-5, 40), "a", "7", "", "x" * 200, -(2**63), 2**63 - 1, 2**63, -(2**70),
            np.int64(3), np.int64(-(2**63))]
    return [pool[k] for k in rng.integers(0, len(pool), size).tolist()]


@pytest.mark.parametrize("capacity", [None, 12, 40])
def test_any_ids_map_as_a_dict_would_whatever_their_kinds(capacity):
    rng = np.random.default_rng(capacity or 0)
    m, typed = IdMap(capacity), IdMap(capacity)  # typed: all-int batches as IntIds
    reference: dict = {}  # the unbounded map: rows in order of first appearance
    for _ in range(300):
        ids = _ids(rng, int(rng.integers(1, 10)))
        if rng.random() < 0.3:
            ids = rng.integers(-(2**62), 2**62, 6).tolist()
        rows = m.lookup(ids)
        as_ints = all(type(k) is int and -(2**63) < k < 2**63 for k in ids)
        assert typed.lookup(IntIds(np.array(ids)) if as_ints else ids).tolist() == rows.tolist()
        assert m.last_evicted.tolist() == typed.last_evicted.tolist()
        for key in ids:
            reference.setdefault(key, len(reference))
        if capacity is None:
            assert rows.tolist() == [reference[k] for k in ids]
        assert all(k in m for k in ids) and len(m) == len(set(m.state_dict()["ids"]))
        assert rows.max() < len(m) and m.lookup(ids, add=False).tolist() == rows.tolist()
    clone = IdMap(capacity)
    clone.load_state_dict(m.state_dict())
    ids = _ids(rng, 8)
    assert clone.lookup(ids).tolist() == m.lookup(ids).tolist()
    assert clone.state_dict()["ids"] == m.state_dict()["ids"]
    assert len(m) == (len(reference) if capacity is None else capacity)


# -- the sampler and the reservoir forget recycled rows -----------------------------------


def test_sampler_forgets_the_pairs_and_popular_items_of_recycled_rows():
    s = NegativeSampler(num_neg=1, mode="popularity", history=8)
    s.observe(np.array([0, 0, 1, 2]), np.array([5, 6, 5, 7]))
    s.observe(np.array([3, 3, 3, 3, 3, 3]), np.array([1, 2, 6, 1, 2, 6]))  # the ring wraps
    s.forget(np.array([1]), np.array([6]))
    pairs = {(int(k // (1 << 31)), int(k % (1 << 31))) for k in s.state_dict()["seen"]}
    assert pairs == {(0, 5), (2, 7), (3, 1), (3, 2)}
    state = s.state_dict()
    assert state["recent"][: state["recent_count"]].tolist() == [5, 7, 1, 2, 1, 2]
    assert not s._unseen(np.array([0]), np.array([5]))[0]
    assert s._unseen(np.array([0, 1]), np.array([6, 5])).all()


def test_reservoir_drops_events_of_recycled_rows_and_keeps_the_rest_in_order():
    r = Reservoir(size=4, n_feats=1)
    users, items = np.array([0, 1, 2, 3, 4, 5]), np.array([10, 11, 12, 13, 14, 15])
    r.add(users, items, users[:, None], users.astype(np.float32))  # keeps 2, 3, 4, 5
    r.forget(np.array([3]), np.array([15]))
    assert len(r) == 2 and r.users[:2].tolist() == [2, 4] and r.labels[:2].tolist() == [2, 4]
    r.add(np.array([6, 7, 8]), np.array([16, 17, 18]), np.zeros((3, 1), np.int64),
          np.ones(3, np.float32))
    assert sorted(r.users.tolist()) == [4, 6, 7, 8]  # 2 was the oldest


# -- the learner ----------------------------------------------------------------------------


def _batches(seed=0, n=4000, size=500, users=2500, videos=1500):
    rng = np.random.default_rng(seed)
    values = [
        orjson.dumps({"user_id": int(u), "video_id": f"v{int(v)}", "play_ms": int(p),
                      "duration_ms": 10_000, "ts_ms": i * 1000, "context": {"explicit": 1}})
        for i, (u, v, p) in enumerate(zip(rng.integers(0, users, n), rng.integers(0, videos, n),
                                          rng.integers(0, 20_000, n), strict=True))
    ]
    return [decode_batch(values[i : i + size]) for i in range(0, n, size)]


@pytest.mark.parametrize("settings", [
    gmf_settings(dim=8, max_users=600, max_videos=500),
    gmf_settings(dim=8, loss="idl", meta="ig", num_neg=1, meta_source="reservoir",
                    meta_size=800, max_users=700, max_videos=500),
    gmf_settings(dim=8, model="deepfm", loss="rce", num_neg=2, sampler="popularity",
                    max_users=600, max_videos=600),
])
def test_resume_with_a_capacity_gives_the_same_model(tmp_path, settings):
    batches = _batches()
    whole = OnlineLearner(settings)
    for b in batches[:4]:
        whole.learn_many(b)
    assert whole.evictions["user"] > 0 and whole.evictions["video"] > 0  # evicting already
    Checkpointer(tmp_path).save({"learner": whole.state_dict()})
    results = [whole.learn_many(b) for b in batches[4:]]
    resumed = OnlineLearner(settings)
    resumed.load_state_dict(Checkpointer(tmp_path).load_latest()["learner"])
    again = [resumed.learn_many(b) for b in batches[4:]]
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [r.evicted for r in results] == [r.evicted for r in again]
    assert whole.evictions == resumed.evictions
    assert whole.users.state_dict()["ids"] == resumed.users.state_dict()["ids"]
    assert len(whole.users) == settings.max_users and len(whole.videos) <= settings.max_videos
    assert whole.evaluator.values()[("run", "dwell")] == resumed.evaluator.values()[
        ("run", "dwell")]
    opt_a, opt_b = whole.optimizer.state_dict()["sparse"], resumed.optimizer.state_dict()["sparse"]
    for key, value in opt_a["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(value[name], opt_b["state"][key][name])


def test_recycled_rows_start_afresh():
    settings = gmf_settings(dim=4, num_neg=1, loss="idl", meta="ig",
                               meta_source="reservoir", max_users=3, max_videos=3)
    learner = OnlineLearner(settings)
    first = decode_batch([orjson.dumps({"user_id": u, "video_id": v, "play_ms": 9000,
                                        "duration_ms": 9000, "ts_ms": 3_600_000 * 5})
                          for u, v in (("a", "x"), ("b", "y"), ("c", "z"))])
    for _ in range(3):
        result = learner.learn_many(first)
    assert result.evicted == {"user": 0, "video": 0}
    user_state = learner.optimizer.sparse.state[learner.model.user.weight]
    item_state = learner.optimizer.sparse.state[learner.model.item.weight]
    assert user_state["exp_avg"][:3].abs().sum(1).gt(0).all()
    assert learner._item_duration[:3].any() and len(learner.reservoir) == 9
    learner.predict_many(["a", "c"], ["x", "z"])  # b and y are now the least recently seen

    torch.manual_seed(123)
    expected_user, expected_item = (torch.empty(1, 4).normal_(std=INIT_STD) for _ in "ui")
    torch.manual_seed(123)
    users, videos = learner._rows(["d"], ["w"])  # takes the rows of b and y
    assert users.tolist() == [1] and videos.tolist() == [1]
    assert torch.equal(learner.model.user.weight[1:2].detach(), expected_user)
    assert torch.equal(learner.model.item.weight[1:2].detach(), expected_item)
    for state in (user_state, item_state):
        assert not state["exp_avg"][1].any() and not state["exp_avg_sq"][1].any()
        assert state["exp_avg"][[0, 2]].abs().sum(1).gt(0).all()  # the others untouched
    assert learner._item_duration[1] == 0 and learner._item_duration[[0, 2]].all()
    r = learner.reservoir
    assert len(r) == 6 and 1 not in r.users[: len(r)] and 1 not in r.items[: len(r)]
    seen = learner.sampler._unseen  # b watched y (rows 1, 1): forgotten; a watched x: kept
    assert seen(np.array([1, 0]), np.array([1, 0])).tolist() == [True, False]
    assert learner.evictions == {"user": 1, "video": 1}
    second = decode_batch([orjson.dumps({"user_id": "e", "video_id": "v", "play_ms": 1,
                                         "duration_ms": 9000, "ts_ms": 0})])
    assert learner.learn_many(second).evicted == {"user": 1, "video": 1}
    assert learner.evictions == {"user": 2, "video": 2}


def test_the_unbounded_learner_counts_no_evictions():
    learner = OnlineLearner(gmf_settings(dim=4))
    for b in _batches(n=1000):
        assert learner.learn_many(b).evicted == {"user": 0, "video": 0}
    assert learner.users.capacity is None and learner.evictions == {"user": 0, "video": 0}


def test_config_passes_capacities_and_refuses_ones_below_a_batch():
    from stream.errors import ConfigError  # the service's settings raise the Kafka side's

    settings = Config(max_users=5000, max_videos=2048, batch_size=1024).learner_settings()
    assert (settings.max_users, settings.max_videos) == (5000, 2048)
    assert OnlineLearner(settings).videos.capacity == 2048
    assert Config().learner_settings().max_users == 0
    with pytest.raises(ConfigError, match="at least batch_size"):
        Config(max_users=100, batch_size=1024).learner_settings()
    with pytest.raises(ConfigError):
        Config(max_videos=-1).learner_settings()


def test_the_daemon_counts_evictions_per_table():
    config = Config(max_users=600, max_videos=500, batch_size=500, dim=8)
    registry = CollectorRegistry()
    daemon = Daemon(config, registry)
    daemon.consumer = SimpleNamespace(mark_processed=lambda records: None, processed=dict)
    daemon.dlq = SimpleNamespace(send=lambda *a: None)
    for batch_number, b in enumerate(_batches(n=2000)):
        records = [
            SimpleNamespace(value=orjson.dumps({
                "user_id": u, "video_id": v, "play_ms": int(p), "duration_ms": 10_000,
                "ts_ms": 0}), timestamp=0, partition=0, offset=batch_number * 500 + k)
            for k, (u, v, p) in enumerate(zip(b.user_id, b.video_id, b.play_ms, strict=True))
        ]
        daemon.process(records)
    evictions = daemon.learner.evictions
    assert evictions["user"] > 0 and evictions["video"] > 0
    for table, count in evictions.items():
        assert registry.get_sample_value("dwell_idmap_evictions_total",
                                         {"table": table}) == count
