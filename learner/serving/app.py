"""The HTTP API of ``dwell serve``: a Starlette (ASGI) application.

=================  ==============================================================================
``POST /rank``     ``{"user_id", "candidates"?, "k"?, "hour"?}`` -> the top k videos with their
                   scores, what ordered them, the model version and the hour scored for
``POST /score``    ``{"pairs": [[user_id, video_id], ...], "hour"?}`` -> a score per pair, the
                   version, the hour (the model's hour-of-day feature; default: now, UTC)
``GET /healthz``   200 once a model is loaded, 503 before
``GET /metrics``   Prometheus text (:mod:`learner.serving.metrics`)
=================  ==============================================================================

Bad requests get a 4xx and ``{"error": message, "cause": cause}``, never a 500: a 500 is a
bug, logged and counted (cause ``internal``). Bodies are read up to ``max_body_bytes``
(413 beyond, whatever Content-Length says). Scoring runs on the event loop: it takes about a
millisecond, less than a thread hand-off would cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from learner.serving.metrics import ENDPOINTS, ServeMetrics
from learner.serving.model import ServedModel
from learner.serving.pool import PopularityPool
from learner.serving.ranking import distinct, top_k
from learner.serving.requests import Limits, RequestError, parse_rank, parse_score
from learner.serving.source import ModelSource

logger = logging.getLogger(__name__)

_HTTP_CAUSES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status,
                    media_type="application/json")


def _hour(asked: int | None) -> int:
    """The hour of day a request scores for: the one it names, else the hour now (UTC), as
    the learner's ``hour`` feature of an event now would be."""
    return asked if asked is not None else int(time.time() // 3600 % 24)


def _error(status: int, cause: str, message: str) -> Response:
    return _json({"error": message, "cause": cause}, status)


class ServeApp:
    """The endpoints over one model source, one popular pool (or none) and the metrics."""

    def __init__(self, source: ModelSource, pool: PopularityPool | None, limits: Limits,
                 max_body_bytes: int, registry: CollectorRegistry) -> None:
        self.source, self.pool, self.limits = source, pool, limits
        self.max_body_bytes = max_body_bytes
        self.registry = registry
        self.metrics = ServeMetrics(registry, source, pool)

    async def _body(self, request: Request) -> bytes:
        """The request body, or RequestError 413 once it passes the bound."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(413, "too_large", f"the body is {declared} bytes: at most "
                               f"{self.max_body_bytes} are read")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(413, "too_large", f"the body is over "
                                   f"{self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _model(self) -> ServedModel:
        model = self.source.current()
        if model is None:
            raise RequestError(503, "no_model", "no model loaded yet: retry once /healthz "
                                                "answers 200")
        return model

    async def rank(self, request: Request) -> Response:
        asked = parse_rank(await self._body(request), self.limits)
        model = self._model()  # one model for the whole answer
        views = None
        if asked.candidates is None:
            if self.pool is None or not len(self.pool):
                raise RequestError(503, "no_pool", "no popular videos known yet: name the "
                                                   "candidates")
            candidates, views = self.pool.top()
        else:
            candidates = distinct(asked.candidates)
        self.metrics.candidates.labels("rank").observe(len(candidates))
        hour = _hour(asked.hour)
        ranking = top_k(model, asked.user_id, candidates, asked.k, self.pool, views, hour)
        self.metrics.rankings.labels(ranking.basis).inc()
        items = [{"video_id": v, "score": s}
                 for v, s in zip(ranking.video_ids, ranking.scores.tolist(), strict=True)]
        if ranking.views is not None:
            for item, seen in zip(items, ranking.views.tolist(), strict=True):
                item["views"] = seen
        return _json({"user_id": asked.user_id, "model_version": model.version, "hour": hour,
                      "ranked_by": ranking.basis, "items": items})

    async def score(self, request: Request) -> Response:
        asked = parse_score(await self._body(request), self.limits)
        model = self._model()
        users = [u for u, _ in asked.pairs]
        videos = [v for _, v in asked.pairs]
        self.metrics.candidates.labels("score").observe(len(users))
        hour = _hour(asked.hour)
        return _json({"model_version": model.version, "hour": hour,
                      "scores": model.score(users, videos, hour=hour).tolist()})

    async def healthz(self, request: Request) -> Response:
        model = self.source.current()
        if model is None:
            return _json({"status": "waiting for a model"}, 503)
        return _json({"status": "ready", "model_version": model.version,
                      "newest_event_ms": model.newest_event_ms,
                      "pool_videos": len(self.pool) if self.pool is not None else None})

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def asgi(self) -> Callable[..., Awaitable[None]]:
        """The ASGI application: the routes inside the latency and request counting."""
        app = Starlette(
            routes=[Route("/rank", self.rank, methods=["POST"]),
                    Route("/score", self.score, methods=["POST"]),
                    Route("/healthz", self.healthz, methods=["GET"]),
                    Route("/metrics", self.metrics_text, methods=["GET"])],
            exception_handlers={RequestError: self._refused, HTTPException: self._http_error,
                                Exception: self._failed},
        )
        return self._measured(app)

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        self.metrics.errors.labels(exc.cause).inc()
        return _error(exc.status, exc.cause, str(exc))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        cause = _HTTP_CAUSES.get(exc.status_code, "invalid")
        self.metrics.errors.labels(cause).inc()
        return _error(exc.status_code, cause, str(exc.detail))

    async def _failed(self, request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        self.metrics.errors.labels("internal").inc()
        return _error(500, "internal", f"internal error ({type(exc).__name__}); logged")

    def _measured(self, app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """``app`` inside a plain ASGI wrapper that times every HTTP request and counts it by
        endpoint and status code."""
        requests, latency = self.metrics.requests, self.metrics.latency

        async def measured(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            endpoint = scope["path"].strip("/")
            endpoint = endpoint if endpoint in ENDPOINTS else "other"
            code = [500]

            async def sending(message: dict) -> None:
                if message["type"] == "http.response.start":
                    code[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                latency.labels(endpoint).observe(time.perf_counter() - start)
                requests.labels(endpoint, str(code[0])).inc()

        return measured
