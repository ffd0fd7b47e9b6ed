"""The bodies of ``POST /rank`` and ``POST /score``: decoded, checked, or refused with a reason.

msgspec reads the JSON straight into typed structs (types checked in C, unknown fields
refused so that a misspelt field is not silently ignored); ids then obey the events' rule
(:func:`stream.event.check_id`: a string of 1 to 128 bytes or a 64-bit integer), and sizes
the server's bounds. Whatever is wrong raises :class:`RequestError` with an HTTP status, a
bounded cause (a metric label) and a message for the client.

>>> limits = Limits(max_k=100, max_candidates=1000)
>>> parse_rank(b'{"user_id": "u1", "k": 3}', limits)
RankRequest(user_id='u1', candidates=None, k=3)
>>> parse_rank(b'{"user_id": "u1", "k": 1000}', limits)
Traceback (most recent call last):
...
learner.serving.requests.RequestError: k must be from 1 to 100 (got 1000)
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from stream.event import InvalidEvent, check_id

#: A user or video id as JSON gives it.
Id = str | int


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


class RankRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``{"user_id": ..., "candidates": [...] (optional), "k": 10 (optional)}``."""

    user_id: Id
    candidates: list[Id] | None = None
    k: int = 10


class ScoreRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``{"pairs": [[user_id, video_id], ...]}``."""

    pairs: list[tuple[Id, Id]]


_RANK = msgspec.json.Decoder(RankRequest)
_SCORE = msgspec.json.Decoder(ScoreRequest)


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    if not body.strip():
        raise RequestError(400, "not_json", "the body is empty: expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(400, "invalid", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, "not_json", f"the body is not JSON: {exc}") from None


def _check_ids(ids: list[Id], where: str) -> None:
    """RequestError naming the first id of ``ids`` that breaks the id rule. Only the ids that
    could break it are looked at one by one: long strings, empty ones, huge integers."""
    for i in (i for i, v in enumerate(ids) if (type(v) is str and (not v or len(v) > 32))
              or (type(v) is int and not -(2**63) <= v < 2**63)):
        try:
            check_id(ids[i], f"{where}[{i}]")
        except InvalidEvent as exc:
            raise RequestError(400, "invalid", exc.detail) from None
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
            raise RequestError(400, "invalid", f"{where}[{i}] is not valid Unicode") from None


def parse_rank(body: bytes, limits: Limits) -> RankRequest:
    """The ``/rank`` request in ``body``; RequestError if it breaks a rule."""
    request = _decode(_RANK, body)
    _check_ids([request.user_id], "user_id")
    if not 1 <= request.k <= limits.max_k:
        raise RequestError(400, "invalid", f"k must be from 1 to {limits.max_k} "
                                           f"(got {request.k})")
    if request.candidates is not None:
        if not 1 <= len(request.candidates) <= limits.max_candidates:
            raise RequestError(400, "invalid", f"candidates must hold 1 to "
                               f"{limits.max_candidates} video ids, or be left out for the "
                               f"popular pool (got {len(request.candidates)})")
        _check_ids(request.candidates, "candidates")
    return request


def parse_score(body: bytes, limits: Limits) -> ScoreRequest:
    """The ``/score`` request in ``body``; RequestError if it breaks a rule."""
    request = _decode(_SCORE, body)
    if not 1 <= len(request.pairs) <= limits.max_candidates:
        raise RequestError(400, "invalid", f"pairs must hold 1 to {limits.max_candidates} "
                           f"[user_id, video_id] pairs (got {len(request.pairs)})")
    users, videos = zip(*request.pairs, strict=True)
    _check_ids(list(users), "the user_id of pairs")
    _check_ids(list(videos), "the video_id of pairs")
    return request
