"""The model topic's records: keys and values of user and video rows, dense tensors and the
record that marks a version complete.

The model topic (``<topic>.model``, one partition, compacted) holds the model as the latest
value of each key:

===================  =========================================================================
key                  value
===================  =========================================================================
``u:<id>``           a user's row: header, then the floats of every user table and counted
                     buffer side by side (:class:`~learner.serving.model.Layout`); None (a
                     tombstone) once the learner evicted the id
``v:<id>``           a video's row, the same way; the header's ``aux`` is its last seen
                     duration bucket
``d:<name>``         a dense tensor (a parameter or persistent buffer), flattened
``m:version``        JSON: the version now complete, its layout, the newest trained event's
                     time, the input offsets it covers, the number of users and videos
===================  =========================================================================

``<id>`` is the original id as JSON (``u:7`` for the integer 7, ``u:"7"`` for the string),
so that a server needs no id map and integer and string ids stay distinct. The header of a
row or tensor is ``<Bqq``: the format (1), the version the record belongs to, ``aux``.

>>> key = encode_key("u", "a:b")
>>> key, decode_key(key)
(b'u:"a:b"', ('u', 'a:b'))
>>> keys, values = encode_rows("v", [7], np.array([[0.5, 1.0]], np.float32), 3, np.array([4]))
>>> rows = decode_rows(values, 2)
>>> rows.version.tolist(), rows.aux.tolist(), rows.values.tolist()
([3], [4], [[0.5, 1.0]])
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

FORMAT = 1
USER, VIDEO, DENSE, META = "u", "v", "d", "m"
#: The key of the record that marks a version complete.
VERSION_KEY = b"m:version"
SIDE_OF_PREFIX = {USER: "user", VIDEO: "item"}  # the backbones' names of the two sides
_HEADER = [("format", "u1"), ("version", "<i8"), ("aux", "<i8")]
HEADER_BYTES = 17


class WireError(ValueError):
    """A record of the model topic that cannot be read (or an id that cannot be written)."""


def model_topic(topic: str) -> str:
    """The model topic of the events topic ``topic``.

    >>> model_topic("events")
    'events.model'
    """
    return f"{topic}.model"


def encode_key(prefix: str, key: Hashable) -> bytes:
    """The record key of a row: the prefix, a colon and the id as JSON (ints and strs only:
    the ids a learner reads from the stream)."""
    if type(key) is str:
        return prefix.encode() + b":" + orjson.dumps(key)
    if type(key) is bool or not isinstance(key, int | np.integer):
        raise WireError(f"model topic keys hold int or str ids, not {type(key).__name__}")
    return b"%s:%d" % (prefix.encode(), key)


def encode_keys(prefix: str, ids: Sequence[Hashable]) -> list[bytes]:
    """:func:`encode_key` of each id, the common types without a call each (~0.2 us a key
    against ~4 with :mod:`json`)."""
    head = prefix.encode() + b":"
    dumps = orjson.dumps
    return [head + dumps(key) if type(key) is str else
            b"%s%d" % (head, key) if type(key) is int else encode_key(prefix, key)
            for key in ids]


def decode_key(key: bytes | None) -> tuple[str, Hashable]:
    """(prefix, id) of a row key, (prefix, name) of a dense or meta key."""
    if key is None or len(key) < 3 or key[1:2] != b":":
        raise WireError(f"not a model topic key: {key!r}")
    prefix, rest = key[:1].decode(), key[2:].decode("utf-8", "replace")
    if prefix in (DENSE, META):
        return prefix, rest
    if prefix not in SIDE_OF_PREFIX:
        raise WireError(f"unknown model topic key prefix {prefix!r} in {key!r}")
    try:
        value = json.loads(rest)
    except ValueError as exc:
        raise WireError(f"row key {key!r} does not hold a JSON id") from exc
    if type(value) not in (int, str):
        raise WireError(f"row key {key!r} holds a {type(value).__name__}, not an int or str")
    return prefix, value


def _dtype(width: int) -> np.dtype:
    return np.dtype([*_HEADER, ("values", "<f4", (width,))])


def encode_rows(prefix: str, ids: Sequence[Hashable], values: np.ndarray, version: int,
                aux: np.ndarray | None = None) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of the rows of ``ids`` (``values`` (n, width) float32, ``aux`` an
    int per row, 0 by default), as ``version``'s."""
    n, width = values.shape
    packed = np.zeros(n, _dtype(width))
    packed["format"], packed["version"] = FORMAT, version
    if aux is not None:
        packed["aux"] = aux
    packed["values"] = values
    raw, size = packed.tobytes(), packed.dtype.itemsize
    return encode_keys(prefix, ids), [raw[i * size:(i + 1) * size] for i in range(n)]


@dataclass(frozen=True)
class Rows:
    """Decoded rows: their versions, ``aux`` values and (n, width) float32 values."""

    version: np.ndarray
    aux: np.ndarray
    values: np.ndarray


def decode_rows(values: Sequence[bytes], width: int) -> Rows:
    """Rows of ``width`` floats; WireError for a value of another size or format."""
    size = HEADER_BYTES + 4 * width
    bad = [i for i, v in enumerate(values) if len(v) != size]
    if bad:
        raise WireError(f"{len(bad)} row value(s) of {len(values[bad[0]])} bytes where the "
                        f"layout's rows take {size} (a model of another layout?)")
    packed = np.frombuffer(b"".join(values), _dtype(width))
    if packed.size and (packed["format"] != FORMAT).any():
        raise WireError(f"row format {int(packed['format'].max())}, this reader knows {FORMAT}")
    return Rows(packed["version"].astype(np.int64), packed["aux"].astype(np.int64),
                packed["values"].astype(np.float32).reshape(len(values), width))


def encode_dense(name: str, tensor: np.ndarray, version: int) -> tuple[bytes, bytes]:
    """Key and value of a dense tensor, as ``version``'s."""
    flat = np.ascontiguousarray(tensor, np.float32).reshape(1, -1)
    keys, values = encode_rows(DENSE, [0], flat, version)
    return f"{DENSE}:{name}".encode(), values[0]


def decode_dense(value: bytes, shape: Sequence[int]) -> np.ndarray:
    """A dense tensor of ``shape`` from its value."""
    return decode_rows([value], int(np.prod(shape, dtype=np.int64))).values.reshape(shape)


def encode_version(version: int, layout: Mapping[str, Any], newest_event_ms: int,
                   offsets: Mapping[int, int], users: int, videos: int, full: bool,
                   published_ms: int) -> bytes:
    """The value of the record that marks ``version`` complete."""
    return json.dumps({
        "format": FORMAT, "version": int(version), "layout": dict(layout),
        "newest_event_ms": int(newest_event_ms),
        "offsets": {str(p): int(o) for p, o in sorted(offsets.items())},
        "users": int(users), "videos": int(videos), "full": bool(full),
        "published_ms": int(published_ms),
    }, separators=(",", ":")).encode()


def decode_version(value: bytes | None) -> dict[str, Any]:
    """The completion record's fields; WireError if it is not one."""
    try:
        data = json.loads(value) if value is not None else None
    except ValueError as exc:
        raise WireError(f"version record is not JSON: {(value or b'')[:60]!r}") from exc
    if not isinstance(data, dict) or not {"version", "layout", "newest_event_ms"} <= data.keys():
        raise WireError(f"version record without version, layout or newest_event_ms: "
                        f"{str(value)[:80]}")
    if data.get("format") != FORMAT:
        raise WireError(f"version record format {data.get('format')}, this reader knows "
                        f"{FORMAT}")
    data["offsets"] = {int(p): int(o) for p, o in data.get("offsets", {}).items()}
    return data
