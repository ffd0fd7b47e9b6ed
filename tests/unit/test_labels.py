"""Label bands at their boundaries."""

import numpy as np
import pytest

from learner.core.labels import NEGATIVE, POSITIVE, VAGUE, LabelRule

RULE = LabelRule(pos_ratio=0.9, long_view_ms=30_000, skip_ms=3_000, neg_ratio=0.2)


@pytest.mark.parametrize(
    "play,duration,expected",
    [
        (9_000, 10_000, POSITIVE),  # r == pos_ratio
        (8_999, 10_000, VAGUE),  # just below
        (30_000, 1_000_000, POSITIVE),  # play == long_view_ms, tiny ratio
        (29_999, 1_000_000, NEGATIVE),  # r < neg_ratio
        (2_999, 100_000, NEGATIVE),  # play < skip_ms
        (3_000, 10_000, VAGUE),  # play == skip_ms, r = 0.3
        (2_999, 3_000, POSITIVE),  # quick but complete: positive wins over skip
        (4_000, 20_000, VAGUE),  # r == neg_ratio
        (3_999, 20_000, NEGATIVE),  # r just below neg_ratio
        (0, 5_000, NEGATIVE),
        (50_000, 10_000, POSITIVE),  # loops: r > 1
    ],
)
def test_band_boundaries(play, duration, expected):
    assert RULE.classify(np.array([play]), np.array([duration]))[0] == expected


def test_vectorised_over_a_batch():
    play = np.array([9_000, 1_000, 5_000])
    out = RULE.classify(play, np.array([10_000] * 3))
    assert out.dtype == np.int8 and out.tolist() == [POSITIVE, NEGATIVE, VAGUE]
