"""Kept for older imports: the kafka-python consumer, now in :mod:`stream.clients.kafka_python`.

New code makes its consumer with :func:`stream.clients.make_consumer`, which also offers the
confluent-kafka client.
"""

from stream.clients.kafka_python import KafkaPythonConsumer as BatchConsumer

__all__ = ["BatchConsumer"]
