"""The losses of distillation, one module per kind.

:mod:`~slimformer.distill.losses.kl` holds the soft-target KL on logits (whole, or chunked over the
positions of a causal LM), :mod:`~slimformer.distill.losses.hidden` the hidden-state alignment, and
:mod:`~slimformer.distill.losses.batch` their combination with the gold-label loss into the training
loss of one batch.
"""

from slimformer.distill.losses.batch import batch_loss
from slimformer.distill.losses.hidden import hidden_alignment_loss
from slimformer.distill.losses.kl import soft_target_loss, token_distillation_losses

__all__ = [
    "batch_loss",
    "hidden_alignment_loss",
    "soft_target_loss",
    "token_distillation_losses",
]
