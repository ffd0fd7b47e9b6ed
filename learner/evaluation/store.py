"""Results of evaluation runs, one JSON line each, so an interrupted ``dwell eval`` resumes.

>>> import tempfile, pathlib
>>> store = RunStore(pathlib.Path(tempfile.mkdtemp()) / "runs.jsonl")
>>> store.add({"setting": "s", "method": "m", "model": "g", "seed": 0, "auc": 0.7})
>>> store.has("s", "m", "g", 0), len(store.rows())
(True, 1)
"""

from __future__ import annotations

from pathlib import Path

import orjson


class RunStore:
    """Append-only JSONL of run results keyed by (setting, method, model, seed[, tag])."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def has(self, setting: str, method: str, model: str, seed: int, tag: str = "") -> bool:
        key = (setting, method, model, seed, tag)
        return any(
            (r["setting"], r["method"], r["model"], r["seed"], r.get("tag", "")) == key
            for r in self.rows()
        )

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
