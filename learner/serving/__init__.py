"""The served model and its way from the learner to servers: ``model`` (the read-only
:class:`~learner.serving.model.ServedModel`), ``wire`` (its records on the model topic),
``publisher`` (the learner's side), ``replica`` (a server's side)."""
