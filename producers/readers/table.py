"""Generic reader for CSV, TSV, JSON Lines and Parquet logs, driven by a column mapping."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from stream.errors import ConfigError, DataError

from ._common import (
    ReadResult,
    RowRejected,
    cell_value,
    column_index,
    open_text,
    to_id,
    to_int,
    to_ts_ms,
)

logger = logging.getLogger(__name__)

REQUIRED = ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms")
FORMATS = ("csv", "tsv", "jsonl", "parquet")
TIME_UNITS = ("ms", "s")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".pq": "parquet"}
_PARQUET_BATCH = 65_536  # rows read from a Parquet file at a time


def format_from_suffix(path: str | Path) -> str:
    """Infer ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``"parquet"`` from the file name (a ``.gz``
    ending is skipped).

    >>> format_from_suffix("log.tsv.gz")
    'tsv'
    """
    path = Path(path)
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    try:
        return _SUFFIXES[suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {suffix!r}; "
            f"pass fmt as one of {', '.join(FORMATS)}"
        ) from None


def check_mapping(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a field -> source-column mapping; ``ConfigError`` says what is wrong.

    Keys: the required fields ``user_id, video_id, play_ms, duration_ms, ts_ms``, optional
    ``event_id``, and ``context.<name>`` for free features.

    >>> check_mapping({"user_id": "u", "video_id": "v", "play_ms": "p", "duration_ms": "d",
    ...                "ts_ms": "t", "context.hour": "h"})["context.hour"]
    'h'
    """
    if not mapping:
        raise ConfigError(
            f"a column mapping is needed for this format (fields {', '.join(REQUIRED)})"
        )
    missing = [name for name in REQUIRED if not mapping.get(name)]
    if missing:
        raise ConfigError(f"column mapping lacks required field(s): {', '.join(missing)}")
    unknown = [
        key
        for key in mapping
        if key not in REQUIRED
        and key != "event_id"
        and not (key.startswith("context.") and len(key) > len("context."))
    ]
    if unknown:
        raise ConfigError(
            f"unknown mapping key(s) {', '.join(unknown)}: use {', '.join(REQUIRED)}, "
            "event_id or context.<name>"
        )
    bad = [key for key, column in mapping.items() if not isinstance(column, str) or not column]
    if bad:
        raise ConfigError(f"mapping value(s) for {', '.join(bad)} must be non-empty column names")
    return dict(mapping)


def read_table(
    path: str | Path,
    mapping: Mapping[str, str],
    fmt: str | None = None,
    time_unit: str = "ms",
    *,
    id_prefix: str | None = None,
) -> ReadResult:
    """Read a CSV, TSV, JSONL or Parquet log into events through ``mapping`` (event field ->
    column).

    ``fmt`` None infers the format from the suffix. ``time_unit`` is the unit of the
    ``ts_ms`` column (``"s"`` allows fractions). Ids stay as written (int when the cell is an
    integer, else text); ``context.X`` cells are typed (int, float, else text) in CSV and kept
    as they are in JSONL and Parquet; an empty (null) context cell is left out. Without an
    ``event_id`` column, ``id_prefix`` gives ``"<id_prefix>:<line>"`` ids. Rows with an
    empty or non-numeric required value are rejected and counted by reason
    (``"not_numeric_play_ms"``...).

    >>> r = read_table("log.csv", {"user_id": "uid", "video_id": "vid", "play_ms": "play",
    ...     "duration_ms": "dur", "ts_ms": "ts"}, time_unit="s")  # doctest: +SKIP
    """
    fields = check_mapping(mapping)
    if fmt is None:
        fmt = format_from_suffix(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    if time_unit not in TIME_UNITS:
        raise ConfigError(f"unknown time unit {time_unit!r}; use 'ms' or 's'")
    result = ReadResult()
    with open_text(path) if fmt != "parquet" else open(_file(path), "rb") as handle:
        try:
            rows = (_parquet_rows(handle, fields, path) if fmt == "parquet"
                    else _json_rows(handle) if fmt == "jsonl"
                    else _csv_rows(handle, fmt, fields, path))
            for line, row in rows:
                result.rows_read += 1
                try:
                    if isinstance(row, str):
                        raise RowRejected(row)
                    event = _event(row, fields, time_unit, line, id_prefix,
                                   fmt in ("csv", "tsv"))
                    result.events.append(event)
                except RowRejected as exc:
                    result.rejected[exc.reason] += 1
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: not a readable {fmt.upper()} file: {exc}") from exc
    logger.info(
        "read %d %s rows from %s: %d events, %d rejected %s",
        result.rows_read,
        fmt,
        path,
        len(result.events),
        result.rejected_total,
        dict(result.rejected),
    )
    return result


# Row sources yield (line number, row) where row is a dict of source values, or a str: the
# reason the line cannot be a row at all.


def _csv_rows(handle, fmt: str, fields: dict[str, str], path) -> Iterator[tuple[int, dict | str]]:
    reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file, expected a {fmt.upper()} header line")
    col = column_index(header, list(dict.fromkeys(fields.values())), path)
    width = max(col.values()) + 1
    for row in reader:
        if not row:
            continue
        if len(row) < width:
            yield reader.line_num, "short_row"
            continue
        # CSV has no null: an empty cell is a missing value.
        yield reader.line_num, {name: row[i] if row[i] != "" else None for name, i in col.items()}


def _file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input log {path} does not exist or is not a file")
    return path


def _parquet_rows(handle, fields: dict[str, str], path) -> Iterator[tuple[int, dict | str]]:
    """The rows of a Parquet file, the mapped columns only, numbered from 1 as lines are."""
    import pyarrow as pa  # late: only Parquet logs need it
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(handle)
    except pa.ArrowException as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    names = list(dict.fromkeys(fields.values()))
    missing = [name for name in names if name not in source.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)} in the Parquet file")
    line = 0
    for batch in source.iter_batches(batch_size=_PARQUET_BATCH, columns=names):
        for row in batch.to_pylist():
            line += 1
            yield line, row


def _json_rows(handle) -> Iterator[tuple[int, dict | str]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            row = orjson.loads(text)
        except orjson.JSONDecodeError:
            yield line, "bad_json"
            continue
        yield line, row if isinstance(row, dict) else "not_an_object"


def _event(
    row: dict, fields: dict[str, str], unit: str, line: int, prefix: str | None, typed: bool
) -> dict:
    """Build one event; ``typed`` turns CSV text into int/float for context values."""
    event: dict[str, Any] = {
        "user_id": to_id(row.get(fields["user_id"]), "user_id"),
        "video_id": to_id(row.get(fields["video_id"]), "video_id"),
        "play_ms": to_int(row.get(fields["play_ms"]), "play_ms"),
        "duration_ms": to_int(row.get(fields["duration_ms"]), "duration_ms"),
        "ts_ms": to_ts_ms(row.get(fields["ts_ms"]), "ts_ms", unit),
    }
    event_id = row.get(fields["event_id"]) if "event_id" in fields else None
    if event_id is not None and event_id != "":
        event["event_id"] = str(event_id)
    elif prefix is not None:
        event["event_id"] = f"{prefix}:{line}"
    context = {
        key[len("context.") :]: cell_value(row[column]) if typed else row[column]
        for key, column in fields.items()
        if key.startswith("context.") and row.get(column) is not None
    }
    if context:
        event["context"] = context
    return event
