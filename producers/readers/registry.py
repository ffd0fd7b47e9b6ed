"""Format registry and ``read_log``: pick a reader by name or by sniffing the header."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from stream.errors import ConfigError, DataError

from ._common import ReadResult, open_text
from .kuairand import read_kuairand
from .kuairec import read_kuairec
from .table import read_table

logger = logging.getLogger(__name__)

#: Named readers take ``(path)``; table readers take ``(path, mapping, time_unit=...)``.
READERS: dict[str, Callable[..., ReadResult]] = {
    "kuairand": read_kuairand,
    "kuairec": read_kuairec,
    "csv": partial(read_table, fmt="csv"),
    "tsv": partial(read_table, fmt="tsv"),
    "jsonl": partial(read_table, fmt="jsonl"),
    "parquet": partial(read_table, fmt="parquet"),
}
NAMED = ("kuairand", "kuairec")

_SIGNATURES = {
    "kuairand": {"play_time_ms", "time_ms", "label"},
    "kuairec": {"play_duration", "video_duration", "watch_ratio"},
}


def detect_format(path: str | Path) -> str:
    """Guess a log's format from its first non-blank line.

    Returns ``"kuairand"`` or ``"kuairec"`` when the header carries their columns, else the
    generic kind: ``"parquet"`` (the file starts with Parquet's magic bytes), ``"jsonl"``
    (line starts with ``{``), ``"tsv"`` (has a TAB) or ``"csv"``.

    >>> detect_format("data/kuairec_sample/big_matrix_1000.csv")
    'kuairec'
    """
    if Path(path).is_file():
        with open(path, "rb") as raw:
            if raw.read(4) == b"PAR1":
                return "parquet"
    with open_text(path) as handle:
        try:
            first = next((line for line in handle if line.strip()), "")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    if not first:
        raise DataError(f"{path}: empty file")
    if first.lstrip().startswith("{"):
        return "jsonl"
    kind = "tsv" if "\t" in first else "csv"
    header = {name.strip() for name in next(csv.reader([first], delimiter=kind_sep(kind)))}
    for name, columns in _SIGNATURES.items():
        if columns <= header:
            return name
    return kind


def kind_sep(kind: str) -> str:
    """Field separator of a delimited kind (``"tsv"`` -> TAB, else comma)."""
    return "\t" if kind == "tsv" else ","


def read_log(
    path: str | Path,
    fmt: str = "auto",
    mapping: Mapping[str, str] | None = None,
    *,
    time_unit: str = "ms",
) -> ReadResult:
    """Read any supported log: ``fmt`` is a key of ``READERS`` or ``"auto"``.

    With ``"auto"`` and no mapping the header must identify KuaiRand or KuaiRec; with a
    mapping, the file is read as a generic CSV/TSV/JSONL (kind sniffed from its first line).
    ``ConfigError`` for an unknown format, a generic format without mapping, or a mapping
    given to a named format; ``DataError`` for a missing or unreadable file.

    >>> read_log("data/kuairec_sample/big_matrix_1000.csv").rows_read
    1000
    """
    if fmt == "auto":
        detected = detect_format(path)
        if mapping:
            fmt = "tsv" if detected == "kuairand" else "csv" if detected == "kuairec" else detected
        elif detected in NAMED:
            fmt = detected
        else:
            raise ConfigError(
                f"{path}: header is neither KuaiRand nor KuaiRec; give a column mapping "
                f"(user_id, video_id, play_ms, duration_ms, ts_ms) to read it as {detected}"
            )
        logger.info("%s: format %s", path, fmt)
    if fmt not in READERS:
        raise ConfigError(f"unknown log format {fmt!r}; use auto or one of {', '.join(READERS)}")
    if fmt in NAMED:
        if mapping:
            raise ConfigError(f"format {fmt} has a fixed schema; a column mapping is not used")
        return READERS[fmt](path)
    if not mapping:
        raise ConfigError(f"format {fmt} needs a column mapping (event field -> column)")
    return READERS[fmt](path, mapping, time_unit=time_unit)
