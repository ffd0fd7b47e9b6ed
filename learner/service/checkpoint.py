"""Atomic checkpoints: learner state plus the next offset of every partition it processed.

A checkpoint is written to a temporary file in the checkpoint folder, flushed, fsynced,
renamed to ``ckpt-<sequence>.pt`` and the folder fsynced; the last ``keep`` are kept. It is
read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
only, never arbitrary pickled objects. NumPy arrays travel as tensors tagged ``__ndarray__``.
A checkpoint that cannot be read (truncated, corrupt) is reported and the previous one used.

>>> import tempfile, numpy as np
>>> ckpt = Checkpointer(tempfile.mkdtemp())
>>> _ = ckpt.save({"offsets": {"t:0": 5}, "arr": np.arange(3)})
>>> state = ckpt.load_latest()
>>> state["offsets"], state["arr"].tolist()
({'t:0': 5}, [0, 1, 2])
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.errors import DwellError

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{10})\.pt$")


class CheckpointError(DwellError):
    """A checkpoint could not be written; offsets must not be committed until one is."""

    retriable = True


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_decode(v) for v in value)
    return value


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Writes and reads the checkpoints of one learner in one folder."""

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def _existing(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))

    def save(self, state: dict) -> Path:
        """Write ``state`` durably; raise CheckpointError (nothing half-written stays)."""
        existing = self._existing()
        sequence = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
        final = self.folder / f"ckpt-{sequence:010d}.pt"
        tmp = self.folder / f".{final.name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(_encode(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.folder)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise CheckpointError(f"cannot write checkpoint in {self.folder}: {exc}") from exc
        for old in self._existing()[: -self.keep]:
            try:
                old.unlink()
            except OSError as exc:  # pruning is best effort
                logger.warning("cannot remove old checkpoint %s: %s", old, exc)
        return final

    def load_latest(self) -> dict | None:
        """The newest readable checkpoint, or None when there is none."""
        for path in reversed(self._existing()):
            try:
                with open(path, "rb") as f:
                    state = torch.load(f, weights_only=True)
                logger.info("loaded checkpoint %s", path)
                return _decode(state)
            except Exception as exc:  # noqa: BLE001 - any unreadable file: fall back
                logger.error("checkpoint %s cannot be read (%s): trying the previous one",
                             path, exc)
        return None
