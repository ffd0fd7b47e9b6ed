"""Negative sampling of unseen items and the genuine-event reservoir."""

import numpy as np
import pytest

from learner.core.errors import ConfigError
from learner.core.sampling import NegativeSampler, Reservoir


@pytest.mark.parametrize("mode", NegativeSampler.MODES)
def test_samples_are_never_pairs_the_user_was_seen_with(mode):
    rng = np.random.default_rng(0)
    sampler = NegativeSampler(num_neg=4, mode=mode, seed=1)
    users, items = rng.integers(0, 50, 2000), rng.integers(0, 80, 2000)
    sampler.observe(users, items)
    seen = set(zip(users.tolist(), items.tolist(), strict=True))
    s_users, s_items = sampler.sample(np.arange(50), n_items=80)
    assert s_users.size + sampler.dropped == 200
    assert s_users.size > 150
    assert not seen & set(zip(s_users.tolist(), s_items.tolist(), strict=True))
    assert ((s_items >= 0) & (s_items < 80)).all()


def test_popularity_mode_follows_recent_occurrences():
    sampler = NegativeSampler(num_neg=1, mode="popularity", seed=0, history=1000)
    sampler.observe(np.zeros(900, np.int64), np.full(900, 7))  # user 0 watched item 7 a lot
    sampler.observe(np.zeros(100, np.int64), np.arange(100, 200))
    _users, items = sampler.sample(np.ones(2000, np.int64), n_items=1000)  # user 1: unseen
    assert (items == 7).mean() == pytest.approx(0.9, abs=0.03)


def test_zero_negatives_and_bad_mode():
    assert NegativeSampler(num_neg=0).sample(np.arange(3), 10)[0].size == 0
    with pytest.raises(ConfigError):
        NegativeSampler(mode="nope")


def test_sampler_state_round_trip():
    a = NegativeSampler(num_neg=2, seed=3)
    a.observe(np.array([1, 2]), np.array([3, 4]))
    b = NegativeSampler(num_neg=2, seed=3)
    b.load_state_dict(a.state_dict())
    assert b.sample(np.array([1, 2]), 10)[1].tolist() == a.sample(np.array([1, 2]), 10)[1].tolist()


def test_reservoir_keeps_the_most_recent_events():
    r = Reservoir(size=5, n_feats=2)
    for start in range(0, 12, 4):
        ids = np.arange(start, start + 4)
        r.add(ids, ids + 100, np.stack([ids, ids], 1), (ids % 2).astype(np.float32))
    assert len(r) == 5 and sorted(r.users.tolist()) == [7, 8, 9, 10, 11]
    pick = r.sample(3, np.random.default_rng(0))
    assert len(set(pick.tolist())) == 3
    assert (r.items[pick] == r.users[pick] + 100).all()


def test_the_key_set_is_a_set_through_adds_growth_and_discards():
    from learner.core.ids.keyset import KeySet

    rng = np.random.default_rng(0)
    keys, reference = KeySet(), set()
    sizes = {keys._table.size}
    for step in range(200):
        batch = rng.integers(0, 5_000, int(rng.integers(0, 60)))
        keys.add(batch)
        sizes.add(keys._table.size)
        reference.update(batch.tolist())
        if step % 37 == 36:  # evictions: the keys of some rows go
            gone = step % 7
            keys.discard(lambda k, gone=gone: k % 7 == gone)
            reference = {k for k in reference if k % 7 != gone}
        probe = rng.integers(0, 5_000, 300)
        assert keys.contains(probe).tolist() == [k in reference for k in probe.tolist()]
        assert len(keys) == len(reference) <= keys._table.size // 2
    assert keys.array().tolist() == sorted(reference)
    assert len(sizes) >= 3  # the table grew (and its keys moved) more than once
    big = np.arange(0, 2**62, 2**62 // 3000, dtype=np.int64)  # large keys hash as well
    assert KeySet(big).contains(big).all() and not KeySet(big).contains(big + 1).any()
    with pytest.raises(ValueError, match="non-negative"):
        keys.add(np.array([3, -1]))
