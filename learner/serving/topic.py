"""The model topic on the learner's side: created compacted, read at start, published to.

:func:`open_publisher` is what the daemon calls once it restored its checkpoint: it creates
the model topic if need be (one partition, so that a version's completion record follows
its rows; ``cleanup.policy=compact``, so that the topic holds the latest value of each key:
the model), reads what it holds (:func:`~learner.serving.replica.read_model_topic`) and
returns a :class:`~learner.serving.publisher.Publisher` numbering on from it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from learner.core.trainer import OnlineLearner
from learner.serving.publisher import Publisher
from learner.serving.replica import read_model_topic, topic_state
from stream.admin import create_topic
from stream.clients import KafkaConnection, make_producer

logger = logging.getLogger(__name__)

#: The model topic's settings (besides any the cluster adds): compacted, one partition.
TOPIC_CONFIG = {"cleanup.policy": "compact"}
#: Producer settings of the publisher (a user's --kafka-options override them).
PRODUCER_CONFIG = {"acks": "all", "retries": 10, "linger_ms": 5, "batch_size": 1 << 20,
                   "max_request_size": 4 << 20, "client_id": "dwell-model"}


def create_model_topic(connection: KafkaConnection, topic: str,
                       config: Mapping[str, Any] | None = None) -> bool:
    """Create the model topic (compacted, one partition) unless it exists; True if made."""
    return create_topic(connection.bootstrap, topic, partitions=1,
                        config={**TOPIC_CONFIG, **(config or {})},
                        options=connection.options)


def open_publisher(connection: KafkaConnection, topic: str, learner: OnlineLearner,
                   interval_s: float, track: bool = True, process: bool = False,
                   ) -> Publisher:
    """A publisher of ``learner`` to the model topic ``topic`` (created if need be), its
    versions numbered on from what the topic holds."""
    create_model_topic(connection, topic)
    found = read_model_topic(connection, topic)
    state = topic_state(found)
    logger.info("model topic %s: version %d, %d keys; publishing every %g s", topic,
                state.version, len(state.keys), interval_s)
    producer = make_producer(connection.client, {
        **PRODUCER_CONFIG, **connection.options,
        "bootstrap_servers": connection.bootstrap.split(",")}, process=process)
    return Publisher(learner, producer, topic, interval_s, state, track=track)
