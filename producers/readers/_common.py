"""What every reader shares: the result type, cell conversion and file opening."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stream.errors import DataError

logger = logging.getLogger("producers.readers")
_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")
_HOUR_MS = 3_600_000
_BEIJING_OFFSET_H = 8


@dataclass
class ReadResult:
    """Events parsed from one file, with a count of the rows that could not become events.

    ``rows_read == len(events) + sum(rejected.values())``; blank lines are not rows.

    >>> r = ReadResult()
    >>> r.rows_read, r.events, r.rejected
    (0, [], Counter())
    """

    events: list[dict] = field(default_factory=list)
    rows_read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        """Number of rejected rows, all reasons together."""
        return sum(self.rejected.values())


class RowRejected(Exception):
    """Raised by a converter when a row cannot become an event; ``reason`` is the short key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_int(value: Any, name: str) -> int:
    """Convert a cell to int (``"12"``, ``"12.0"``, ``12``, ``12.4`` -> 12); reject if impossible.

    Raises ``RowRejected("missing_<name>")`` for an empty cell and
    ``RowRejected("not_numeric_<name>")`` for text, NaN, infinity or a boolean.

    >>> to_int("13838", "play_ms"), to_int("7.0", "x")
    (13838, 7)
    """
    kind = type(value)
    if kind is str:
        try:
            return int(value)  # the hot path: a plain integer cell
        except ValueError:
            if value == "":
                raise RowRejected(f"missing_{name}") from None
    elif kind is int:
        return value
    elif value is None:
        raise RowRejected(f"missing_{name}")
    if isinstance(value, bool | list | dict):
        raise RowRejected(f"not_numeric_{name}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowRejected(f"not_numeric_{name}") from None
    if not math.isfinite(number):
        raise RowRejected(f"not_numeric_{name}")
    return round(number)


def to_ts_ms(value: Any, name: str, unit: str) -> int:
    """Convert an event time in ``unit`` (``"ms"`` or ``"s"``, float allowed) to Unix ms.

    >>> to_ts_ms("1593878903.438", "ts_ms", "s")
    1593878903438
    """
    if unit == "ms":
        return to_int(value, name)
    if value is None or value == "":
        raise RowRejected(f"missing_{name}")
    if isinstance(value, bool | list | dict):
        raise RowRejected(f"not_numeric_{name}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RowRejected(f"not_numeric_{name}") from None
    if not math.isfinite(seconds):
        raise RowRejected(f"not_numeric_{name}")
    return round(seconds * 1000)


def to_id(value: Any, name: str) -> int | str:
    """Keep an id as the file has it: an integer when written as one, else the string.

    Text such as ``"007"`` stays a string, so it never collides with ``7``.

    >>> to_id("42", "user_id"), to_id("u-7", "user_id"), to_id("007", "user_id")
    (42, 'u-7', '007')
    """
    if value is None or value == "":
        raise RowRejected(f"missing_{name}")
    if isinstance(value, str):
        return int(value) if _INT_RE.fullmatch(value) else value
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise RowRejected(f"bad_{name}")


def cell_value(text: str) -> int | float | str | None:
    """Type a free CSV cell for ``context``: int, finite float, else the text; empty -> None.

    >>> cell_value("3"), cell_value("0.5"), cell_value("abc"), cell_value("")
    (3, 0.5, 'abc', None)
    """
    if text == "":
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def beijing_hour(ts_ms: int) -> int:
    """Hour of day 0..23 in Beijing time (UTC+8, no daylight saving) of a Unix-ms time.

    >>> beijing_hour(1593878903438)  # 2020-07-04 16:08:23 UTC
    0
    """
    return (ts_ms // _HOUR_MS + _BEIJING_OFFSET_H) % 24


def open_text(path: str | Path) -> TextIO:
    """Open a text log for reading (UTF-8, a leading BOM dropped, ``.gz`` decompressed).

    Raises ``DataError`` when the path is missing or is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input log {path} does not exist or is not a file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # the caller closes it


def column_index(header: list[str], columns: list[str], path: str | Path) -> dict[str, int]:
    """Map each wanted column to its position in ``header``; ``DataError`` names the absent ones.

    >>> column_index(["a", "b"], ["b"], "x.csv")
    {'b': 1}
    """
    position = {name.strip(): i for i, name in enumerate(header)}
    missing = [c for c in columns if c not in position]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; header has {', '.join(position)}"
        )
    return {c: position[c] for c in columns}


def read_delimited(
    path: str | Path,
    *,
    kind: str,
    delimiter: str,
    columns: list[str],
    read_rows: Callable[[Any, dict[str, int], ReadResult], None],
) -> ReadResult:
    """Open a delimited log with a header, check its columns, let ``read_rows`` fill the result.

    ``kind`` names the format in errors and in the summary log line.
    """
    result = ReadResult()
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, expected a {kind} header")
            read_rows(reader, column_index(header, columns, path), result)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: not a readable {kind} file: {exc}") from exc
    logger.info(
        "read %d %s rows from %s: %d events, %d rejected %s",
        result.rows_read, kind, path, len(result.events), result.rejected_total,
        dict(result.rejected),
    )
    return result


def collect_rows(
    reader: Any,
    result: ReadResult,
    parse: Callable[[list[str]], tuple[Any, Any, int, int, int, dict]],
    source: str,
) -> None:
    """Turn each non-empty row into an event with ``parse`` or count why it could not.

    ``parse`` returns (user, video, play_ms, duration_ms, ts_ms, context) or raises
    ``RowRejected``; a row with too few cells is rejected as ``short_row``. The event id is
    ``"<source>:<line>"``.
    """
    events, rejected = result.events, result.rejected
    for row in reader:
        if not row:
            continue
        result.rows_read += 1
        try:
            user, video, play, duration, ts_ms, context = parse(row)
        except RowRejected as exc:
            rejected[exc.reason] += 1
            continue
        except IndexError:
            rejected["short_row"] += 1
            continue
        events.append({
            "user_id": user, "video_id": video, "play_ms": play, "duration_ms": duration,
            "ts_ms": ts_ms, "event_id": f"{source}:{reader.line_num}", "context": context,
        })
