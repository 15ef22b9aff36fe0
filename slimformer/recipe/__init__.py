"""The recipe's stages, one module each; ``slimformer.pipeline.run`` runs them in the order of the
stage table (``slimformer.spec.STAGE_TABLE``).

- ``inputs`` (stage ``downloading``): the model, the spec's defaults resolved for it, the data, the
  batches (rows: ``job_data``).
- ``scoring``: whole layers, then heads, neurons and MLPs.
- ``pruning``: plan, refit, remove.
- ``distilling``: the student and its training.
- ``evaluating``: the original and the result side by side.
- ``writing`` (stage ``writing_card``): the folder, the served files (``serving``), the report and
  the card.
- ``publishing``: the upload to the Hub.
"""
