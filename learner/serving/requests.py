"""The bodies of ``POST /rank`` and ``POST /score``: decoded, checked, or refused with a reason.

msgspec reads the JSON straight into typed structs (types checked in C, unknown fields
refused so that a misspelt field is not silently ignored); ids obey the events' rule
(:func:`stream.event.check_id`: a string of 1 to 128 bytes or a 64-bit integer), and sizes
the server's bounds. The id rule is checked in C too where it can be: a request whose string
ids are at most 32 characters (so at most 128 bytes) is read by a struct that says so
(``ShortId``); only a request with a longer one is read again, its long ids' bytes counted
one by one. Whatever is wrong raises :class:`RequestError` with an HTTP status, a
bounded cause (a metric label) and a message for the client.

>>> limits = Limits(max_k=100, max_candidates=1000)
>>> asked = parse_rank(b'{"user_id": "u1", "k": 3}', limits)
>>> asked.user_id, asked.candidates, asked.k, asked.hour
('u1', None, 3, None)
>>> parse_rank(b'{"user_id": "u1", "k": 1000}', limits)
Traceback (most recent call last):
...
learner.serving.requests.RequestError: k must be from 1 to 100 (got 1000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from stream.event import MAX_ID_BYTES, InvalidEvent, check_id

#: A user or video id as JSON gives it: a string of 1 to 128 characters (the bytes are
#: counted after), a 64-bit integer.
Id = (Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_BYTES)]
      | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)])
#: An id that obeys the rule as read: a string of at most 32 characters is at most 128 bytes.
ShortId = (Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_BYTES // 4)]
           | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)])


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx, or 503), ``cause`` (a metric label),
    the message."""

    def __init__(self, status: int, cause: str, message: str) -> None:
        super().__init__(message)
        self.status, self.cause = status, cause


@dataclass(frozen=True)
class Limits:
    """The bounds a request must keep to."""

    max_k: int
    max_candidates: int


#: The hour of day (UTC) a request scores for: the model's ``hour`` feature.
Hour = Annotated[int, msgspec.Meta(ge=0, le=23)]


class RankRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``{"user_id": ..., "candidates": [...] (optional), "k": 10 (optional), "hour": 0..23
    (optional: the hour now, UTC)}``."""

    user_id: Id
    candidates: list[Id] | None = None
    k: int = 10
    hour: Hour | None = None


class ScoreRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``{"pairs": [[user_id, video_id], ...], "hour": 0..23 (optional: the hour now, UTC)}``."""

    pairs: list[tuple[Id, Id]]
    hour: Hour | None = None


class _ShortRank(RankRequest, forbid_unknown_fields=True, frozen=True):
    user_id: ShortId
    candidates: list[ShortId] | None = None


class _ShortScore(ScoreRequest, forbid_unknown_fields=True, frozen=True):
    pairs: list[tuple[ShortId, ShortId]]


_RANK = (msgspec.json.Decoder(_ShortRank), msgspec.json.Decoder(RankRequest))
_SCORE = (msgspec.json.Decoder(_ShortScore), msgspec.json.Decoder(ScoreRequest))


def _decode(decoders: tuple[msgspec.json.Decoder, msgspec.json.Decoder], body: bytes,
            ) -> tuple[Any, bool]:
    """The request in ``body`` and whether it may hold an id of over 32 characters."""
    if not body.strip():
        raise RequestError(400, "not_json", "the body is empty: expected a JSON object")
    short, general = decoders
    try:
        return short.decode(body), False
    except msgspec.ValidationError:
        pass  # maybe a long id: read again by the general struct, whose errors are the truth
    except msgspec.DecodeError as exc:
        raise RequestError(400, "not_json", f"the body is not JSON: {exc}") from None
    try:
        return general.decode(body), True
    except msgspec.ValidationError as exc:
        raise RequestError(400, "invalid", str(exc)) from None


def _check_ids(ids: list, where: str) -> None:
    """RequestError naming the first id of ``ids`` over 128 bytes (the structs checked the
    rest of the rule): the strings of over 32 characters are looked at one by one."""
    for i in (i for i, v in enumerate(ids) if type(v) is str and len(v) > MAX_ID_BYTES // 4):
        try:
            check_id(ids[i], f"{where}[{i}]")
        except InvalidEvent as exc:
            raise RequestError(400, "invalid", exc.detail) from None
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
            raise RequestError(400, "invalid", f"{where}[{i}] is not valid Unicode") from None


def parse_rank(body: bytes, limits: Limits) -> RankRequest:
    """The ``/rank`` request in ``body``; RequestError if it breaks a rule."""
    request, long_ids = _decode(_RANK, body)
    if long_ids:
        _check_ids([request.user_id], "user_id")
    if not 1 <= request.k <= limits.max_k:
        raise RequestError(400, "invalid", f"k must be from 1 to {limits.max_k} "
                                           f"(got {request.k})")
    if request.candidates is not None:
        if not 1 <= len(request.candidates) <= limits.max_candidates:
            raise RequestError(400, "invalid", f"candidates must hold 1 to "
                               f"{limits.max_candidates} video ids, or be left out for the "
                               f"popular pool (got {len(request.candidates)})")
        if long_ids:
            _check_ids(request.candidates, "candidates")
    return request


def parse_score(body: bytes, limits: Limits) -> ScoreRequest:
    """The ``/score`` request in ``body``; RequestError if it breaks a rule."""
    request, long_ids = _decode(_SCORE, body)
    if not 1 <= len(request.pairs) <= limits.max_candidates:
        raise RequestError(400, "invalid", f"pairs must hold 1 to {limits.max_candidates} "
                           f"[user_id, video_id] pairs (got {len(request.pairs)})")
    if long_ids:
        users, videos = zip(*request.pairs, strict=True)
        _check_ids(list(users), "the user_id of pairs")
        _check_ids(list(videos), "the video_id of pairs")
    return request
