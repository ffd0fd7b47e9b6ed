"""A replay outlives a broker away for longer than the producer's delivery timeout: what timed
out is sent again on a fresh producer, in order (``producers/replay.py``)."""

from __future__ import annotations

import os
import threading
import time

from producers.pacing import Pacer
from producers.replay import replay
from stream.admin import create_topic, end_offsets
from stream.broker import LocalBroker
from tests.integration.helpers import read_topic

EVENTS = 3_000


def test_a_broker_away_past_the_delivery_timeout_loses_no_event(tmp_path, kafka_client):
    events = [{"user_id": i % 50, "video_id": i, "play_ms": 1_000, "duration_ms": 10_000,
               "ts_ms": 1_700_000_000_000 + i} for i in range(EVENTS)]
    broker = LocalBroker.on_free_ports(tmp_path / "kafka")
    bootstrap = broker.start(timeout=90, owner_pid=os.getpid())
    try:
        create_topic(bootstrap, "resend", partitions=2)
        stats = {}
        # a delivery timeout of 4 s; the broker is away for longer (stop, 6 s, start)
        producer = threading.Thread(target=lambda: stats.update(s=replay(
            events, bootstrap=bootstrap, topic="resend", pacer=Pacer(rate=1_000),
            producer_config={"delivery_timeout_ms": 4_000, "request_timeout_ms": 2_000},
            progress=False, client=kafka_client, resend_rounds=6, resend_backoff_s=2.0)))
        producer.start()
        time.sleep(1.0)
        broker.stop()
        time.sleep(6.0)
        broker.start(timeout=90, owner_pid=os.getpid())
        producer.join(timeout=300)
        assert not producer.is_alive()
        sent = stats["s"]
        in_topic = sum(end_offsets(bootstrap, "resend").values())
        records = read_topic(bootstrap, "resend")
    finally:
        broker.stop()
    print(f"{kafka_client}: resent {sent.resent}, {in_topic} records in the topic, "
          f"{sent.seconds:.1f} s")
    assert (sent.rows_read, sent.events_sent, sent.failed) == (EVENTS, EVENTS, 0), sent
    assert sent.resent > 0  # some events did time out while the broker was away
    assert EVENTS <= in_topic <= EVENTS + sent.resent  # resent events: at-least-once
    # every event is there, and each user's events are in their order (a duplicate of a
    # resent event may follow; the first copies keep the order)
    seen: dict[bytes, list[int]] = {}
    for record in records:
        video = int(record.value.split(b'"video_id":')[1].split(b",")[0])
        videos = seen.setdefault(record.key, [])
        if video not in videos:
            videos.append(video)
    expected: dict[bytes, list[int]] = {}
    for e in events:
        expected.setdefault(str(e["user_id"]).encode(), []).append(e["video_id"])
    assert seen == expected
