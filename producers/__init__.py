"""Replay of historical dwell-time logs into Kafka.

Readers turn a log file into plain event dicts (``producers.readers``), ``order_by_time``
puts them in event-time order, a ``Pacer`` spaces the sends (``producers.pacing``) and
``replay`` publishes them with delivery acknowledgements (``producers.replay``).

Example::

    from producers.readers import read_log, order_by_time
    result = read_log("data/kuairand27k_like_hate/processed_standard_kcore_15.tsv")
    events = order_by_time(result.events)
"""
