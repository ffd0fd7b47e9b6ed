"""``dwell demo``: a local broker, a replay of the shipped data, the learner, the totals.

Starts Apache Kafka in a temporary folder (or uses ``--external`` ``--bootstrap``), creates
the topic, runs the learner daemon in a thread with ``/metrics`` served, replays the log
through the producer, waits until the learner has processed every offset, prints the totals
and the final AUCs, then serves the learned model over HTTP in-process (the serving app, its
popular pool tailing the topic: :mod:`learner.serving.showcase`) and prints a few
recommendations for one user from ``POST /rank``, and stops the broker. ``--keep-serving``
keeps everything up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from learner.service.config import config_from_args
from learner.service.daemon import Daemon
from learner.service.monitoring import serve_metrics
from learner.service.totals import format_totals, totals_add_up
from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import create_topic, end_offsets
from stream.broker import LocalBroker

logger = logging.getLogger(__name__)


def _raise_interrupt(*_args) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every count adds up (:func:`learner.cli.totals_add_up`)."""
    cfg = config_from_args(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="dwell-demo-") as tmp:
        broker = None
        if args.external:
            suffix = time.strftime("%Y%m%d%H%M%S")
            cfg = dataclasses.replace(
                cfg, topic=f"{cfg.topic}.demo-{suffix}", group=f"{cfg.group}.demo-{suffix}"
            )
        else:
            broker = LocalBroker.on_free_ports(Path(tmp) / "kafka")
            cfg = dataclasses.replace(cfg, bootstrap=broker.start(owner_pid=os.getpid()))
        try:
            return _run(cfg, args)
        except KeyboardInterrupt:
            logger.info("interrupted")
            return 130
        finally:
            if broker is not None:
                broker.stop()


def _run(cfg, args: argparse.Namespace) -> int:
    result = read_log(args.file)
    result.events = order_by_time(result.events)
    create_topic(cfg.bootstrap, cfg.topic, partitions=cfg.partitions,
                 options=cfg.client_options())
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry)
    server = None
    if cfg.metrics_port >= 0:
        server = serve_metrics(registry, cfg.metrics_addr, cfg.metrics_port)
        logger.info("metrics on http://%s:%d/metrics", cfg.metrics_addr, server.server_port)
    outcome: dict = {}

    def learn() -> None:
        try:
            outcome["totals"] = daemon.run()
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=learn, name="dwell-learner", daemon=True)
    thread.start()
    try:
        stats = replay(result, bootstrap=cfg.bootstrap, topic=cfg.topic,
                       producer_config=cfg.client_options(), client=cfg.client)
        logger.info("replay done: %d events sent at %.0f events/s; learner catching up",
                    stats.events_sent, stats.events_per_s)
        if args.keep_serving:
            logger.info("keep serving: broker %s, Ctrl-C to stop", cfg.bootstrap)
            while thread.is_alive():
                thread.join(1.0)
        else:
            daemon.finish_at(end_offsets(cfg.bootstrap, cfg.topic, options=cfg.client_options()))
            thread.join()
    finally:
        daemon.stop()
        thread.join()
        if server is not None:
            server.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    totals = outcome["totals"]
    print(f"rows read     {stats.rows_read:,}  (not an event: {sum(stats.rejected.values()):,})")
    print(format_totals(totals, daemon.learner.evaluator.values(), sent=stats.events_sent,
                        baseline=daemon.learner.baseline_evaluator.values()))
    if not args.keep_serving:  # the model served over HTTP, as dwell serve does
        from learner.serving.showcase import recommend

        print(recommend(cfg, daemon.learner, result.events))
    return 0 if totals_add_up(totals, sent=stats.events_sent) else 1
