"""Python's own settings for a learner's run: the garbage collector and the thread switch.

Both are process-wide, so :func:`tuned` sets them for the length of a run and puts back what
was there:

- **gc threshold.** A tracked object or two a record (the client's record, its headers)
  make the default 700 collect several times a micro-batch, each walking the batch in hand
  (~20% of the daemon's time, measured with ``gc.callbacks``).
- **switch interval.** A micro-batch trained on a second thread (``learn_many(background=
  True)``) needs the interpreter lock only to start its compiled call and to return; a
  thread that asks for the lock waits up to the switch interval (Python's default 5 ms)
  while another runs Python, longer than a batch's training (~1 ms), so the training would
  start only once the learner waits for it.

>>> import sys
>>> before = sys.getswitchinterval()
>>> with tuned(gc_threshold=0, switch_interval_s=0.001):
...     sys.getswitchinterval()
0.001
>>> sys.getswitchinterval() == before
True
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def tuned(gc_threshold: int, switch_interval_s: float) -> Iterator[None]:
    """Within the block: the collector's first threshold ``gc_threshold`` and the thread
    switch interval ``switch_interval_s`` (0 for either: leave Python's)."""
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    if gc_threshold:
        gc.set_threshold(gc_threshold, *thresholds[1:])
    if switch_interval_s:
        sys.setswitchinterval(switch_interval_s)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
