"""``dwell serve`` under load: latency of ``POST /rank`` with 500 candidates, requests/s on one
core.

The server (the serving app on uvicorn, a wide model trained on the shipped KuaiRand log) runs
in a child process pinned to one core; the load generator, in this process on another core
where there is one, keeps ``connections`` HTTP/1.1 keep-alive connections on loopback, each
sending its next request when the answer to the last is in (closed loop, a bounded number of
requests). The requests are built once: the generator spends its time on the sockets.
Measured: one connection (latency alone), then several (throughput, latency under load).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection

import numpy as np
import orjson

from learner.bounds import positive_int

SECTION = "bench:serve"
CANDIDATES = 500


def _server(conn: Connection, core: int | None, limit: int | None) -> None:
    """The child: train, serve on a free port, send the port and the request bodies, wait."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    from prometheus_client import CollectorRegistry

    from learner.serving.app import ServeApp
    from learner.serving.pool import PopularityPool
    from learner.serving.requests import Limits
    from learner.serving.server import HttpServer
    from learner.serving.source import LatestModel
    from learner.serving.trained import train_on_log

    model, batches = train_on_log(limit=limit)
    pool = PopularityPool(size=CANDIDATES, half_life_s=24 * 3600.0, tracked=100_000)
    for batch in batches:
        pool.add(batch.video_id, batch.ts_ms)
    app = ServeApp(LatestModel(model), pool, Limits(1000, 10_000), 1 << 20, CollectorRegistry())
    server = HttpServer(app.asgi()).start()
    rng = np.random.default_rng(0)
    users = list(dict.fromkeys(u for b in batches for u in b.user_id))
    videos = list(dict.fromkeys(v for b in batches for v in b.video_id))
    bodies = [orjson.dumps({"user_id": users[int(rng.integers(len(users)))], "k": 10,
                            "candidates": [videos[int(i)] for i in rng.choice(
                                len(videos), CANDIDATES, replace=False)]})
              for _ in range(64)]
    conn.send((server.port, bodies, orjson.dumps({"user_id": users[0], "k": 10})))
    conn.recv()  # stop
    server.stop()


def _request(body: bytes) -> bytes:
    return (b"POST /rank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _connection(port: int, requests: list[bytes], n: int, times: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(n):
        start = time.perf_counter()
        writer.write(requests[i % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the server answered {head[:40]!r}")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await reader.readexactly(length)
        times.append(time.perf_counter() - start)
    writer.close()
    await writer.wait_closed()


def load(port: int, bodies: list[bytes], connections: int, requests: int) -> dict[str, float]:
    """``requests`` requests over ``connections`` connections: p50, p99 (s) and requests/s."""
    wire = [_request(b) for b in bodies]
    times: list[float] = []

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_connection(port, wire, requests // connections, times)
                               for _ in range(connections)))
        return time.perf_counter() - start

    asyncio.run(_connection(port, wire, min(50, requests), []))  # warm-up
    seconds = asyncio.run(run())
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "rps": len(times) / seconds, "n": len(times)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serve-requests", type=positive_int(10_000_000), default=4000,
                   help="serve suite: requests per measurement (default 4000)")


def run(args: argparse.Namespace, machine: str) -> str:
    quick = args.quick
    cores = sorted(os.sched_getaffinity(0))
    server_core = cores[0] if len(cores) > 1 else None
    if server_core is not None:  # the load generator on the other cores
        os.sched_setaffinity(0, set(cores[1:]))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(child, server_core, 3000 if quick else None))
    proc.start()
    try:
        port, bodies, pool_body = parent.recv()
        n = 200 if quick else args.serve_requests
        rows = [("/rank, 500 named candidates, 1 connection", load(port, bodies, 1, n)),
                ("/rank, 500 named candidates, 4 connections", load(port, bodies, 4, n)),
                ("/rank, the popular pool's 500, 4 connections",
                 load(port, [pool_body], 4, n))]
    finally:
        parent.send("stop")
        proc.join(60)
        os.sched_setaffinity(0, set(cores))
    lines = ["## Serving", "",
             f"`dwell bench --suites serve` on {machine}: the serving app on uvicorn "
             f"{'pinned to one core' if server_core is not None else '(one core not pinned)'}"
             ", a wide model trained on the shipped KuaiRand log, a closed-loop load generator "
             "on loopback (keep-alive HTTP/1.1, another core); top 10 of each request's "
             f"candidates, {rows[0][1]['n']:,} requests a row. Target: p99 under 20 ms.", "",
             "| load | p50 ms | p99 ms | requests/s |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['p50'] * 1e3:.2f} | {r['p99'] * 1e3:.2f} | {r['rps']:,.0f} |"
              for name, r in rows]
    return "\n".join(lines) + "\n"
