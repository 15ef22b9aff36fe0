"""Knowledge distillation: train a smaller student to imitate a teacher.

Students come from three places (:mod:`~slimformer.distill.students`):

* a layer-dropped copy of the teacher (:func:`make_layer_dropped_student`): ``k`` layers kept,
  evenly spaced or ranked by a layer importance score. The score uses the gradient trick of Michel
  et al. that :mod:`slimformer.importance` uses for heads: a gate ``g`` on each layer's residual
  update (output = input + g * (layer(input) - input)), scored by E |dL/dg| over calibration
  batches. The copy keeps the teacher's stock config class with fewer layers, so it reloads with
  transformers alone;
* a pruned teacher (any model slimformer pruned: it is just the student passed in);
* a smaller model the user names, checked by :func:`check_student_compatible` (same tokenizer, same
  label set) before any training.

Losses (:mod:`~slimformer.distill.losses`; Hinton et al. 2015; hidden-state alignment as in
TinyBERT / DistilBERT's cosine loss):

* classification: ``alpha * CE(student, gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``;
  without gold labels the teacher is the only labeller (KD alone);
* causal LMs: the same per token, over the vocabulary, computed in chunks of positions under
  activation checkpointing so that at most ``kl_chunk_size x vocab`` logits exist at once, forward
  or backward; padding and prompt positions do not count;
* embedding models (no head): 1 - cosine (or MSE) between mean-pooled student and teacher
  embeddings;
* optionally, cosine or MSE between the hidden states of mapped layers (student layer i -> teacher
  layer ``layer_map[i]``), through a learned projection when the widths differ.

The loop (:func:`distill`, and :func:`finetune` for the no-teacher baseline;
:mod:`~slimformer.distill.trainer`) runs AdamW with linear warm-up and decay, gradient accumulation,
a budget in epochs, steps or minutes, bf16 autocast on CUDA, evaluation with the best weights kept,
early stopping, and checkpoints (:mod:`~slimformer.distill.checkpoint`) that make a resumed run end
with the same weights as an uninterrupted one: the data order of each epoch is a seeded permutation,
and a checkpoint holds the position in it along with every RNG state. Training-health findings
(:mod:`~slimformer.distill.health`: data problems, chance-level comparisons, non-finite values,
unused parameters, plateaus) come back as ``{"level", "check", "message"}`` dicts and are logged.

``max_minutes`` is a wall-clock budget of the whole call, evaluations included; the learning-rate
schedule is re-planned to the steps that fit (:mod:`~slimformer.distill.schedule`). A causal LM is
evaluated on a bounded held-out slice (perplexity, computed in chunks), and a run that trained no
step, or an LM that never beat its start or is still worse than a uniform guess, raises
:class:`~slimformer.errors.DistillationFailed`. Settings a caller leaves unset come from the recipe
of the student's kind (:mod:`~slimformer.distill.recipes`: layer-dropped, pruned, named).
"""

from slimformer.architectures import keep_layers
from slimformer.distill.api import distill, finetune
from slimformer.distill.batches import _prompt_completion_batch as _prompt_completion_batch
from slimformer.distill.checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT
from slimformer.distill.config import (
    CancelFn,
    DistillConfig,
    DistillResult,
    EvalFn,
    ProgressFn,
)
from slimformer.distill.health import check_training_data
from slimformer.distill.losses import (
    batch_loss,
    hidden_alignment_loss,
    soft_target_loss,
    token_distillation_losses,
)
from slimformer.distill.recipes import RECIPES, Recipe, ResolvedRecipe, StudentKind, resolve_recipe
from slimformer.distill.students import (
    LayerStrategy,
    check_student_compatible,
    make_layer_dropped_student,
    score_layers,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "CancelFn",
    "DistillConfig",
    "DistillResult",
    "EvalFn",
    "LayerStrategy",
    "ProgressFn",
    "RECIPES",
    "Recipe",
    "ResolvedRecipe",
    "StudentKind",
    "batch_loss",
    "check_student_compatible",
    "check_training_data",
    "distill",
    "finetune",
    "hidden_alignment_loss",
    "keep_layers",
    "make_layer_dropped_student",
    "resolve_recipe",
    "score_layers",
    "soft_target_loss",
    "token_distillation_losses",
]
