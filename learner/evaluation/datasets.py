"""Data sets for ``dwell eval``, as micro-batches of the learner's :class:`EventBatch`.

MovieLens-1M (the paper's benchmark): ``ml1m.valid.rating`` is the training stream (file
order, which is shuffled); ``ml1m.test.negative`` is split as the reference code's runs
were (``numpy.random.RandomState(0).permutation``: the first 20,004 rows, in file order,
validate; the other 180,038 test). Rating > 2 is positive. The files are read by path from
``../shared/data`` (``DWELL_ML1M_DIR`` overrides): their terms forbid shipping them.

KuaiRand like/hate (shipped): the log ordered by event time, encoded and decoded exactly as
on the wire, so invalid rows (duration 0) drop out as the daemon would dead-letter them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from learner.bridge import to_events
from learner.core.batch import Events
from producers.readers import order_by_time, read_log
from stream.errors import DataError
from stream.event import decode_batch

REPO = Path(__file__).resolve().parents[2]
ML1M_DIR = Path(os.environ.get("DWELL_ML1M_DIR", REPO.parent / "shared/data/ml1m_inverselearning"))
KUAIRAND = REPO / "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"
ML1M_VALIDATION_ROWS = 20_004


@dataclass(frozen=True)
class Ratings:
    """Observed (user, item, liked) triples."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray  # 1 liked (rating > 2), 0 disliked

    def __len__(self) -> int:
        return self.users.size

    def subset(self, index: np.ndarray) -> Ratings:
        return Ratings(self.users[index], self.items[index], self.labels[index])


def _read_ratings(path: Path) -> Ratings:
    if not path.exists():
        raise DataError(f"{path} not found (set DWELL_ML1M_DIR to the ml1m_inverselearning folder)")
    table = np.loadtxt(path, dtype=np.int64, delimiter="\t", usecols=(0, 1, 2), ndmin=2)
    return Ratings(table[:, 0], table[:, 1], (table[:, 2] > 2).astype(np.int8))


def load_ml1m(folder: Path = ML1M_DIR) -> tuple[Ratings, Ratings, Ratings]:
    """(train, validation, test) as in the reference runs."""
    train = _read_ratings(folder / "ml1m.valid.rating")
    rest = _read_ratings(folder / "ml1m.test.negative")
    perm = np.random.RandomState(0).permutation(len(rest))
    valid = np.sort(perm[:ML1M_VALIDATION_ROWS])
    test = np.sort(perm[ML1M_VALIDATION_ROWS:])
    return train, rest.subset(valid), rest.subset(test)


def rating_batches(ratings: Ratings, batch_size: int) -> list[Events]:
    """Micro-batches of rating events: ids only (no time, no duration: constant features)."""
    out = []
    for start in range(0, len(ratings), batch_size):
        part = slice(start, start + batch_size)
        n = ratings.users[part].size
        out.append(Events(
            user_id=ratings.users[part].tolist(),
            video_id=ratings.items[part].tolist(),
            play_ms=np.zeros(n, np.int64), duration_ms=np.ones(n, np.int64),
            ts_ms=np.zeros(n, np.int64),
            explicit=ratings.labels[part].astype(np.float32),
        ))
    return out


def kuairand_batches(batch_size: int, path: Path = KUAIRAND) -> list[Events]:
    """The KuaiRand log in event-time order, through the wire codec, in micro-batches."""
    values = [orjson.dumps(e) for e in order_by_time(read_log(path).events)]
    return [to_events(decode_batch(values[i : i + batch_size]))
            for i in range(0, len(values), batch_size)]
