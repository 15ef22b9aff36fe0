"""The set-up of a training run, and the data its steps read.

:class:`_RunSetup` is what every part of :class:`~slimformer.distill.trainer._Run` shares: the
inputs checked, the models on their device, the trained parameters with their optimizer and
learning-rate schedule, the evaluation prepared, and the micro-batches in each epoch's seeded order.
:class:`~slimformer.distill.trainer._Run` calls the set-up steps in order; the RNG is seeded once,
right before the projection is initialised, as it always was.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData
from slimformer.distill.batches import _epoch_order, _make_batch
from slimformer.distill.checkpoint import _fingerprint
from slimformer.distill.config import DistillConfig, EvalFn
from slimformer.distill.metric import _prepare_evaluation
from slimformer.distill.schedule import _make_optimizer
from slimformer.distill.students import _check_run_fit, _hidden_width
from slimformer.errors import DatasetError, InvalidSpec
from slimformer.models import Task, autocast_for, model_task, pick_device, set_seed


def _resolve_task(task: str | None, model: nn.Module) -> Task:
    task = task or model_task(model)
    if task == "sentence-similarity":
        task = "feature-extraction"
    if task not in ("text-classification", "text-generation", "feature-extraction"):
        raise InvalidSpec(
            f"unknown task {task!r}; distillation covers text-classification, text-generation "
            "and feature-extraction"
        )
    if task != model_task(model):
        raise InvalidSpec(f"task {task!r} does not match the model's head ({type(model).__name__})")
    return task


class _RunSetup:
    """The models, data, optimizer and evaluation of one run; the base of every part of
    :class:`~slimformer.distill.trainer._Run`.
    """

    # -------------------------------------------------------- set-up, in the order _Run calls it

    def _take_inputs(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        tokenizer: PreTrainedTokenizerBase,
        train: TextData,
        eval_data: TextData | None,
        config: DistillConfig,
        *,
        task: Task | None,
        layer_map: Sequence[int] | None,
        eval_fn: EvalFn | None,
        stage: str,
    ) -> None:
        """Check the settings, the task and the data; decide whether gold labels are used."""
        config.validate()
        self.task = task = _resolve_task(task, student)
        if len(train) == 0:
            raise DatasetError(f"{train.source or 'the training data'} has no rows")
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.train, self.config, self.eval_fn, self.stage = train, config, eval_fn, stage
        self.label_config = (teacher or student).config
        labelled = task == "text-classification" and train.labels is not None
        self.use_labels = task == "text-generation" or labelled
        if teacher is not None and config.alpha == 0:
            self.use_labels = False
        if teacher is None and not self.use_labels:
            raise InvalidSpec("fine-tuning without a teacher needs training data with gold labels")
        self.layer_map = _check_run_fit(student, teacher, config, layer_map)
        self.eval_data = eval_data if eval_data is not None and len(eval_data) else None

    def _place_models(self, checkpoint_dir: str | Path | None) -> None:
        """Move the models to the run's device (the teacher in eval mode); make the checkpoint
        folder.
        """
        self.device = pick_device(self.config.device)
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        self.ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.ckdir is not None:
            self.ckdir.mkdir(parents=True, exist_ok=True)

    def _make_trainables(self) -> None:
        """Seed the RNG, add a projection when hidden states of different widths are aligned, and
        build the optimizer and schedule over everything trained; fingerprint the run.

        The schedule reads the plan, so the plan must be set first.
        """
        student, teacher, config = self.student, self.teacher, self.config
        set_seed(config.seed)  # before the projection is initialised
        self.projection = None
        if teacher is not None and config.hidden_loss is not None and config.hidden_weight > 0:
            if _hidden_width(student) != _hidden_width(teacher):
                widths = (_hidden_width(student), _hidden_width(teacher))
                self.projection = nn.Linear(*widths, bias=False)
                self.projection.to(self.device)
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        if self.projection is not None:
            named += [(f"projection.{n}", p) for n, p in self.projection.named_parameters()]
        self.trained = [p for _, p in named]
        self.optimizer, self.scheduler = _make_optimizer(
            named, config, lambda: (self.state.plan_warmup, self.state.plan_total)
        )
        self.fingerprint = _fingerprint(student, teacher, self.train, config, self.task)

    def _prepare_eval(self) -> None:
        """The evaluation batches and reference (built-in metric), the metric's name and
        direction, and the teacher's own score.
        """
        task, eval_fn = self.task, self.eval_fn
        self.eval_batches = self.reference = None
        self.metric_name = "custom" if eval_fn is not None else None
        # a causal LM's built-in metric is its perplexity; a custom eval_fn is higher-is-better
        self.higher_is_better = not (task == "text-generation" and eval_fn is None)
        self.teacher_metric = None
        if self.eval_data is not None and eval_fn is None:
            prepared = _prepare_evaluation(
                self.eval_data,
                self.tokenizer,
                self.teacher,
                task=task,
                label_config=self.label_config,
                config=self.config,
            )
            self.eval_batches, self.reference, self.metric_name, self.teacher_metric = prepared
        self.has_evaluation = eval_fn is not None or self.eval_batches is not None
        self.step_estimate = 0.0  # seconds per step guessed before the first step is timed

    def _start_bookkeeping(self) -> None:
        """The last checkpoint in memory, the best weights kept, and where the run starts."""
        # the last checkpoint, when there is no checkpoint folder
        self.memory_checkpoint: dict | None = None
        # step -> CPU weights of an evaluated best; pruned at every checkpoint to the best that
        # checkpoint names, so a roll-back or a resumption finds the best weights of the state it
        # returns to
        self.best_store: dict[int, dict] = {}
        self.resumed_from: int | None = None
        self.seconds_before = 0.0
        self.steps_at_start = 0

    # -------------------------------------------------------- data

    def batch_at(self, micro: int) -> dict:
        """Micro-batch number ``micro`` of the run: epoch ``micro // per_epoch``, in that epoch's
        seeded order.
        """
        epoch, position = divmod(micro, self.per_epoch)
        size = self.config.batch_size
        order = _epoch_order(len(self.train), self.config.seed, epoch, self.config.shuffle)
        rows = self.train.subset(list(order[position * size : (position + 1) * size]))
        batch = _make_batch(
            self.tokenizer,
            rows,
            task=self.task,
            label_config=self.label_config,
            max_length=self.config.max_length,
            with_labels=self.use_labels,
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self) -> AbstractContextManager:
        return autocast_for(self.device)

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started
