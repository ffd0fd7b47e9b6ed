"""``dwell eval``: replay data sets through the learner offline and report what helps.

The learner runs exactly as in the daemon (:meth:`~learner.core.trainer.OnlineLearner.learn_many`
on micro-batches), only the batches come from files instead of Kafka.

- :mod:`.datasets`: the MovieLens-1M splits of the paper's code and the KuaiRand stream.
- :mod:`.protocol`: one run of one method on one setting; the methods.
- :mod:`.report`: seeds aggregated, the markdown table and the PNG curves.
"""
