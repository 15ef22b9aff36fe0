"""Stage ``downloading``: the model, the spec with its defaults resolved for that model, the data,
and the batches every later stage reads."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from slimformer.architectures import family_of
from slimformer.data import TextData, make_batches
from slimformer.errors import InvalidSpec
from slimformer.evaluation import predict
from slimformer.hub import HubPolicy
from slimformer.loading import LoadedModel, OpenedModel, open_model
from slimformer.pruning import STOCK_LAYOUT
from slimformer.recipe import downstream
from slimformer.recipe.execution import memory_check, model_task, why_in_memory
from slimformer.recipe.job import Job
from slimformer.recipe.job_data import (
    calibration_sample,
    read_job_data,
    unused_label_column,
)
from slimformer.recipe.results import IN_MEMORY, LAYER_BY_LAYER, Execution, Inputs
from slimformer.spec import JobSpec, default_layout
from slimformer.streaming.model import StreamedModel
from slimformer.text import pack_texts, window_length

logger = logging.getLogger(__name__)

LM_BATCH_WINDOWS = 4  # windows per batch of causal-LM calibration and evaluation
MAX_LENGTH = 128  # tokens per row of classification and embedding batches


def is_local_model(spec: JobSpec, hub_policy: HubPolicy | None) -> bool:
    """``spec.model.id`` names a folder on this machine (the command line), not a Hub id."""
    local_files = hub_policy.allow_local_files if hub_policy is not None else True
    return local_files and Path(spec.model.id).exists()


def check(job: Job) -> None:
    """Refuse, before any work, a base model given for a model that is no local folder."""
    spec = job.spec
    if spec.model.base_model and not is_local_model(spec, job.hub_policy):
        raise InvalidSpec(
            "model.base_model (--base-model) names the Hub origin of a local model "
            f"folder; {spec.model.id} is no local folder, it is its own base",
            details={"field": "model.base_model"},
        )


def _open(job: Job) -> OpenedModel:
    """The model's folder and config, the memory check done before any weight moved."""
    spec = job.spec
    return open_model(
        spec.model.id,
        task=model_task(spec),
        revision=spec.model.revision,
        token=job.token,
        policy=job.hub_policy,
        before_weights=memory_check(job, resolve_spec),
    )


def _check_loaded(job: Job, loaded: LoadedModel) -> None:
    """What only the loaded model tells: a vLLM target needs a causal LM; a head the checkpoint
    lacks is refused unless allowed."""
    spec, task = job.spec, loaded.task
    if "vllm" in spec.export.targets and task != "text-generation":
        raise InvalidSpec(
            f"export target vllm serves causal LMs; {spec.model.id} is a {task} model",
            details={"field": "export.targets"},
        )
    if loaded.new_head:
        architectures = getattr(loaded.model.config, "architectures", None)
        saved_as = ", ".join(architectures or ["a model without a head"])
        head = f"{task} head ({', '.join(loaded.new_head)})"
        if not spec.model.allow_new_head:
            raise InvalidSpec(
                f"{spec.model.id} has no {task} head (its checkpoint is {saved_as}): slimformer "
                "would add a randomly initialised one and every score would be noise. Use a model "
                f"fine-tuned for {task} or another --task, or pass --allow-new-head "
                "(model.allow_new_head) to go ahead with an untrained head",
                details={"field": "model.task", "new_head": loaded.new_head},
            )
        logger.warning(
            "the %s is new and untrained (the checkpoint is %s); the card says so", head, saved_as
        )


def _load(job: Job) -> tuple[LoadedModel, StreamedModel | None]:
    """The model, its weights in memory or (layer by layer) on disk until each layer is used."""
    opened = _open(job)
    downstream.check_task(job.spec, opened.task)
    family = family_of(opened.config).name
    spec = resolve_spec(job.spec, opened.task, family)
    reason = why_in_memory(spec, opened.task, opened.config)
    if job.execution is None:  # no estimate could be made: the path is still decided
        job.execution = Execution(IN_MEMORY if reason else LAYER_BY_LAYER, reason)
    if reason is not None:
        loaded = opened.load()
        _check_loaded(job, loaded)
        return loaded, None
    streamed = StreamedModel(opened.folder, opened.config)
    loaded = LoadedModel(
        model=streamed.model,
        tokenizer=opened.load_tokenizer(),
        task=opened.task,
        source=opened.model_id,
        revision=opened.revision,
        commit=opened.commit,
        path=opened.folder,
    )
    return loaded, streamed


def resolve_spec(spec: JobSpec, task: str, family: str) -> JobSpec:
    """The spec with the layout and the prune settings a null leaves to the model decided."""
    layout = default_layout(spec, family)  # the serving targets' layout when none is given
    if spec.prune.layers and not spec.prune.removes_width():
        layout = STOCK_LAYOUT  # depth only: every layer keeps its shape, a stock config
    prune = spec.prune.model_copy(update={"layout": layout}).resolved(task)
    return spec.model_copy(update={"prune": prune})


def _embedding_inputs(inputs: Inputs) -> None:
    """An embedding model embeds each sentence on its own: pairs become two texts, and the
    evaluation pairs with gold scores (STS) become the similarity check."""
    data, tokenizer = inputs.data, inputs.tokenizer
    evaluation = data.evaluation
    if evaluation.pairs is not None and evaluation.labels is not None:
        inputs.pair_kwargs = {
            "pair_batches": make_batches(
                tokenizer, TextData(evaluation.pairs), **inputs.batch_kwargs
            ),
            "pair_scores": [float(v) for v in evaluation.labels],
        }
    data.train = TextData(
        data.train.texts + (data.train.pairs or []),
        source=data.train.source,
        text_column=data.train.text_column,
    )
    data.evaluation = TextData(
        evaluation.texts, source=evaluation.source, text_column=evaluation.text_column
    )


def _lm_windows(inputs: Inputs) -> list[dict]:
    """Causal LMs read text packed into windows (slimformer.text): evaluation and calibration."""
    spec, data, tokenizer = inputs.spec, inputs.data, inputs.tokenizer
    window = window_length(inputs.model.config)
    eval_text = pack_texts(
        tokenizer,
        data.evaluation.texts,
        seq_len=window,
        max_windows=spec.evaluation.rows("text-generation"),
        source=data.description["eval_source"],
    )
    cal_text = pack_texts(
        tokenizer,
        data.train.texts,
        seq_len=window,
        max_windows=spec.prune.calibration_samples,
        source=data.description["source"],
    )
    inputs.cal_batches = cal_text.batches(LM_BATCH_WINDOWS)
    inputs.protocol = eval_text.protocol()
    if eval_text.stride == eval_text.seq_len:  # every token predicted: engines score the same
        inputs.lm_windows = eval_text.input_ids.tolist()
    data.description |= {
        "calibration_rows": len(cal_text),
        "eval_rows": len(eval_text),
        "calibration_protocol": cal_text.protocol(),
    }
    return eval_text.batches(LM_BATCH_WINDOWS)


def run(job: Job) -> Inputs:
    t0 = time.perf_counter()
    job.stage("downloading", 0.0, f"loading {job.spec.model.id}")
    loaded, streamed = _load(job)
    task, family = loaded.task, family_of(loaded.model.config).name
    # classifiers learn from labels; embedding models compare pair similarities with gold
    # scores (STS)
    use_labels = task in ("text-classification", "feature-extraction")
    job.stage("downloading", 0.6, "loading data")
    spec = resolve_spec(job.spec, task, family)
    packed = task == "text-generation"
    data = read_job_data(
        spec, use_labels, job.resolve_upload, job.token, policy=job.hub_policy, packed=packed
    )
    unused = unused_label_column(spec, task, data)
    if unused:
        logger.warning("%s", unused)
        data.description["unused_label_column"] = spec.dataset.label_column
    batch_kwargs = dict(task=task, config=loaded.model.config, batch_size=32, max_length=MAX_LENGTH)
    inputs = Inputs(loaded, spec, task, family, data, None, [], batch_kwargs, streamed=streamed)
    if task == "feature-extraction":
        _embedding_inputs(inputs)
    if packed:
        inputs.eval_batches = _lm_windows(inputs)
    else:
        inputs.eval_batches = make_batches(loaded.tokenizer, data.evaluation, **batch_kwargs)
        inputs.calibration = calibration_sample(data.train, spec.prune.calibration_samples)
        data.description["calibration_rows"] = len(inputs.calibration)
    data.description["calibration_source"] = data.description["source"]
    if streamed is None:  # layer by layer, the original's layers are read again from disk
        inputs.original = copy.deepcopy(loaded.model).eval()
    job.timed("downloading", t0)
    if task != "text-generation":
        inputs.reference = predict(inputs.original, inputs.eval_batches)
    job.inputs = inputs
    return inputs
