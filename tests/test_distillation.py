"""Distillation: students, losses, the training loop, checkpoints and resumption, health."""

import copy
import random

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slimformer.architectures import ModelAdapter
from slimformer.data import TextData
from slimformer.distill import (
    DistillConfig,
    batch_loss,
    check_training_data,
    distill,
    finetune,
    make_layer_dropped_student,
    score_layers,
    soft_target_loss,
    token_distillation_losses,
)
from slimformer.errors import Cancelled, InvalidSpec, SlimformerError
from testkit.tiny_models import CONFIGS, DECODERS, HEADS, VOCAB, tiny_batch, tiny_model

LAYER_KEY = {
    "distilbert": "n_layers",
    "gpt2": "n_layer",
}  # the config's own name for the layer count


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread; on a busy machine its spin-waits cost 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def word_tokenizer(vocab_size: int = VOCAB) -> transformers.PreTrainedTokenizerFast:
    """Whitespace words ``w2`` ... ``w{vocab_size - 1}`` (ids 2 ...); ``[PAD]`` 0, ``[UNK]`` 1."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"
    )


def keyword_task(n: int, seed: int) -> TextData:
    """Seven neutral words and two keywords of the label's group.

    Groups: w2-w11 label 0, w12-w21 label 1, w22-w31 label 2.
    """
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(3)
        words = [f"w{rng.randrange(32, VOCAB)}" for _ in range(7)]
        words += [f"w{2 + 10 * label + rng.randrange(10)}" for _ in range(2)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return TextData(texts, labels=labels, source="keywords")


def random_texts(n: int, seed: int, words: int = 12, vocab: int = VOCAB) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(2, vocab)}" for _ in range(words)) for _ in range(n)]


def model_with_vocab(family: str, head: str, vocab_size: int, **overrides) -> nn.Module:
    """A tiny model like ``tiny_model`` with another vocabulary size (``tiny_config`` fixes it)."""
    name, kwargs = CONFIGS[family]
    config = getattr(transformers, name)(**{**kwargs, "vocab_size": vocab_size, **overrides})
    torch.manual_seed(0)
    return getattr(transformers, HEADS[head]).from_config(config).eval()


TOKENIZER = word_tokenizer()
FAST = dict(max_length=16, batch_size=16, learning_rate=3e-3, warmup_ratio=0.1)


@pytest.fixture(scope="module")
def trained_teacher():
    """A tiny 3-layer BERT fine-tuned on the keyword task (100% on held-out data in ~100 steps)."""
    torch.manual_seed(0)
    teacher = tiny_model("bert", "classification")
    result = finetune(
        teacher,
        TOKENIZER,
        keyword_task(512, 0),
        keyword_task(128, 1),
        DistillConfig(**FAST, epochs=5, eval_every=40),
    )
    assert result.best_metric >= 0.95, result.evaluations()
    return result.student


def same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-5) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.allclose(sa[k], sb[k], atol=atol, rtol=0) for k in sa
    )


class LargestAllocation(TorchDispatchMode):
    """The largest storage any operation creates while active, forward and backward passes alike."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.bytes:
                self.bytes, self.op = t.untyped_storage().nbytes(), str(func)
        return out


# ---------------------------------------------------------------- students


def test_even_strategy_spreads_layers_and_keeps_the_last():
    teacher = tiny_model("bert", "classification", num_hidden_layers=6)
    assert make_layer_dropped_student(teacher, 3)[1] == [1, 3, 5]
    assert make_layer_dropped_student(teacher, 2)[1] == [2, 5]
    assert make_layer_dropped_student(teacher, 4)[1] == [1, 2, 4, 5]
    assert make_layer_dropped_student(teacher, 1)[1] == [5]
    assert make_layer_dropped_student(teacher, 6)[1] == list(range(6))
    with pytest.raises(InvalidSpec, match="between 1 and 6"):
        make_layer_dropped_student(teacher, 7)


def test_layer_dropped_bert_is_a_stock_config_that_reloads_without_remote_code(tmp_path):
    teacher = tiny_model("bert", "classification")
    student, kept = make_layer_dropped_student(teacher, 2)
    assert kept == [1, 2]
    assert type(student.config) is transformers.BertConfig and student.config.num_hidden_layers == 2
    assert len(teacher.bert.encoder.layer) == 3  # the teacher is untouched
    for i, t in enumerate(kept):
        assert same_weights(student.bert.encoder.layer[i], teacher.bert.encoder.layer[t], atol=0)
    student.save_pretrained(tmp_path)
    assert "auto_map" not in (tmp_path / "config.json").read_text()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "BertForSequenceClassification"
    batch = tiny_batch("bert", labels=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, student(**batch).logits)


@pytest.mark.parametrize(
    ("family", "head"),
    [(f, h) for f in CONFIGS for h in ("classification", "base")]
    + [(f, "causal-lm") for f in DECODERS],
)
def test_layer_dropped_student_of_every_family_reloads_with_stock_classes(family, head, tmp_path):
    teacher = tiny_model(family, head, **{LAYER_KEY.get(family, "num_hidden_layers"): 3})
    student, kept = make_layer_dropped_student(
        teacher, 2, "importance", [tiny_batch(family, head=head)]
    )
    assert len(kept) == 2 and student.config.num_hidden_layers == 2
    assert ModelAdapter(student).num_layers == 2
    slots = [
        m.layer_idx for m in student.modules() if isinstance(getattr(m, "layer_idx", None), int)
    ]
    assert sorted(set(slots)) == ([0, 1] if slots else [])  # cache slots renumbered with the layers
    student.save_pretrained(tmp_path)
    reloaded = getattr(transformers, HEADS[head]).from_pretrained(tmp_path).eval()
    batch = tiny_batch(family, labels=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch)[0], student(**batch)[0])


def test_llama_layer_dropped_student_generates_with_its_cache():
    teacher = tiny_model("llama", "causal-lm", num_hidden_layers=4)
    student, kept = make_layer_dropped_student(teacher, 2)
    assert kept == [1, 3]
    prompt = torch.tensor([[5, 17, 42, 9]])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = student.generate(prompt, use_cache=True, **kwargs)
        uncached = student.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 10)
    assert torch.equal(
        cached, uncached
    )  # a wrong layer_idx would read another layer's keys and values


def test_layer_types_follow_the_kept_layers(tmp_path):
    teacher = tiny_model(
        "qwen2",
        "causal-lm",
        num_hidden_layers=4,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=2,
    )
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student, kept = make_layer_dropped_student(teacher, 2)
    assert kept == [1, 3]
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    student.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention"]
    ids = torch.randint(3, VOCAB, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)


def test_importance_strategy_drops_a_layer_that_changes_nothing():
    teacher = tiny_model("llama", "causal-lm", num_hidden_layers=3)
    with (
        torch.no_grad()
    ):  # pre-norm residual layer: with zero output projections it is the identity
        teacher.model.layers[1].self_attn.o_proj.weight.zero_()
        teacher.model.layers[1].mlp.down_proj.weight.zero_()
    batches = [tiny_batch("llama", head="causal-lm", seed=s) for s in (1, 2)]
    before = teacher(**batches[0]).logits.detach()
    scores = score_layers(teacher, batches)
    assert scores[1] == 0 and scores[0] > 0 and scores[2] > 0
    torch.testing.assert_close(
        teacher(**batches[0]).logits.detach(), before
    )  # hooks gone, model unchanged
    assert all(p.requires_grad for p in teacher.parameters())
    _, kept = make_layer_dropped_student(teacher, 2, "importance", batches)
    assert kept == [0, 2]


def test_layer_drop_keeps_the_per_layer_sizes_of_a_pruned_model(tmp_path):
    from slimformer.artifacts import save_model_folder
    from slimformer.importance import score_importance
    from slimformer.pruning import PruningTarget, plan_pruning, prune_model

    model = tiny_model("bert", "classification")
    prune_model(
        model,
        plan_pruning(model, score_importance(model, [tiny_batch("bert")]), PruningTarget(0.5, 0.5)),
    )
    heads = [ModelAdapter(model).sizes(i).heads for i in range(3)]
    student, kept = make_layer_dropped_student(model, 2)
    assert [ModelAdapter(student).sizes(i).heads for i in range(2)] == [heads[k] for k in kept]
    save_model_folder(student, None, tmp_path)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, trust_remote_code=True
    )
    batch = tiny_batch("bert", labels=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**batch).logits, student(**batch).logits)


# ---------------------------------------------------------------- compatibility


def _swapped_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    vocab["w5"], vocab["w6"] = 6, 5
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"
    )


@pytest.mark.parametrize(
    ("make_student", "student_tokenizer", "match"),
    [
        (lambda: model_with_vocab("bert", "classification", 64, num_labels=3), None, "vocabulary"),
        (
            lambda: tiny_model("bert", "classification"),
            _swapped_tokenizer(),
            "tokenizer maps tokens",
        ),
        (
            lambda: model_with_vocab("bert", "classification", VOCAB, num_labels=2),
            None,
            "2 labels and the teacher 3",
        ),
        (
            lambda: tiny_model("bert", "classification", id2label={0: "a", 1: "b", 2: "c"}),
            None,
            "labels",
        ),
        (lambda: tiny_model("llama", "causal-lm"), None, "text-generation model"),
    ],
    ids=["vocab-size", "tokenizer-vocab", "num-labels", "label-names", "head"],
)
def test_an_incompatible_student_is_refused_before_training(make_student, student_tokenizer, match):
    teacher = tiny_model("bert", "classification", id2label={0: "neg", 1: "neu", 2: "pos"})
    student = make_student()
    before = copy.deepcopy(student.state_dict())
    progress = []
    with pytest.raises(InvalidSpec, match=match):
        distill(
            teacher,
            student,
            TOKENIZER,
            keyword_task(32, 0),
            config=DistillConfig(**FAST, max_steps=2),
            student_tokenizer=student_tokenizer,
            on_progress=lambda *a: progress.append(a),
        )
    assert not progress
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_student_with_generic_labels_takes_the_teachers_names():
    teacher = tiny_model("bert", "classification", id2label={0: "neg", 1: "neu", 2: "pos"})
    student = tiny_model("bert", "classification", num_hidden_layers=1)
    distill(
        teacher, student, TOKENIZER, keyword_task(32, 0), config=DistillConfig(**FAST, max_steps=1)
    )
    assert student.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


# ---------------------------------------------------------------- losses


def peak_live_bytes(fn) -> int:
    """Peak bytes of tensors alive at once while ``fn`` runs, tensors saved for backward included.

    Read from the profiler's memory timeline (``_memory_profile``: private, but torch is pinned).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


@pytest.mark.slow
def test_token_losses_keep_memory_bounded_by_the_chunk_not_the_sequence():
    vocab, width, chunk = 50_000, 8, 32
    torch.manual_seed(0)
    head, teacher_head = nn.Linear(width, vocab, bias=False), nn.Linear(width, vocab, bias=False)
    hidden, teacher_hidden = torch.randn(192, width), torch.randn(192, width)
    targets = torch.randint(vocab, (192,))
    targets[:7] = -100
    out = {}

    def run(positions, chunk_size):
        h = hidden[:positions].clone().requires_grad_()
        head.zero_grad()
        kd, ce = token_distillation_losses(
            h,
            head,
            teacher_hidden=teacher_hidden[:positions],
            teacher_head=teacher_head,
            targets=targets[:positions],
            temperature=2.0,
            chunk_size=chunk_size,
        )
        (kd + ce).backward()
        out[(positions, chunk_size)] = (kd.detach(), ce.detach(), h.grad, head.weight.grad.clone())

    unit = chunk * vocab * 4  # float32 bytes of one chunk of logits
    long = peak_live_bytes(lambda: run(192, chunk))
    short = peak_live_bytes(lambda: run(96, chunk))
    assert long <= 8 * unit, (
        long / unit
    )  # a few chunk-sized buffers at a time, forward and backward
    assert long <= 1.1 * short  # twice the positions, the same peak
    unchunked = peak_live_bytes(lambda: run(192, 192))
    assert unchunked >= 4 * long  # the probe sees full logits when they exist: this test can fail

    kd, ce, grad_hidden, grad_head = out[(192, chunk)]
    logits = head(hidden.clone())  # the textbook computation
    torch.testing.assert_close(
        kd, soft_target_loss(logits, teacher_head(teacher_hidden), 2.0).detach()
    )
    torch.testing.assert_close(
        ce, nn.functional.cross_entropy(logits, targets, ignore_index=-100).detach()
    )
    _, _, grad_hidden_full, grad_head_full = out[(192, 192)]
    torch.testing.assert_close(grad_hidden, grad_hidden_full)
    torch.testing.assert_close(grad_head, grad_head_full)


def test_causal_lm_distillation_with_a_50k_vocabulary_stays_within_its_memory_bound():
    vocab = 50_000
    tokenizer = word_tokenizer(vocab)
    teacher = model_with_vocab("llama", "causal-lm", vocab)
    data = TextData(random_texts(8, 0, words=24, vocab=vocab))

    def largest(chunk):
        student, _ = make_layer_dropped_student(teacher, 1)
        with LargestAllocation() as peak:
            distill(
                teacher,
                student,
                tokenizer,
                data,
                config=DistillConfig(batch_size=4, max_length=32, max_steps=2, kl_chunk_size=chunk),
            )
        return peak.bytes, max(p.numel() * 4 for p in student.parameters())

    chunk = 16
    peak, largest_param = largest(chunk)
    assert peak <= max(largest_param, chunk * vocab * 4)
    full_logits = 4 * 23 * vocab * 4  # one batch's logits over every position
    assert full_logits > max(largest_param, chunk * vocab * 4)
    unchunked, _ = largest(
        10_000
    )  # the same run without chunking breaks the bound: the test can fail
    assert unchunked >= full_logits


def test_prompt_and_padding_positions_do_not_count():
    torch.manual_seed(0)
    teacher = tiny_model("llama", "causal-lm", num_hidden_layers=2)
    student = tiny_model("llama", "causal-lm", num_hidden_layers=1, seed=1)
    batch = tiny_batch("llama", head="causal-lm")  # row 0 is padded at the end
    prompt = torch.zeros_like(batch["input_ids"])
    prompt[:, :5] = 1
    batch = {
        **batch,
        "prompt_mask": prompt,
        "labels": batch["labels"].masked_fill(prompt == 1, -100),
    }
    config = DistillConfig(temperature=2.0, alpha=0.3, kl_chunk_size=5)
    loss, parts = batch_loss(student, teacher, batch, task="text-generation", config=config)

    mask = batch["attention_mask"].bool()
    counted = mask[:, :-1] & mask[:, 1:] & (prompt[:, 1:] == 0)
    with torch.no_grad():
        s, t = (
            student(**tiny_batch("llama", head="causal-lm", labels=False)).logits,
            teacher(**tiny_batch("llama", head="causal-lm", labels=False)).logits,
        )
    s, t = s[:, :-1][counted], t[:, :-1][counted]
    expected_kd = soft_target_loss(s, t, 2.0)
    expected_ce = nn.functional.cross_entropy(s, batch["input_ids"][:, 1:][counted])
    assert parts["kd"] == pytest.approx(float(expected_kd), rel=1e-4)
    assert parts["ce"] == pytest.approx(float(expected_ce), rel=1e-4)
    assert loss.item() == pytest.approx(
        0.3 * float(expected_ce) + 0.7 * float(expected_kd), rel=1e-4
    )


def test_causal_lm_prompt_completion_pairs_distil_on_completion_tokens_only():
    from slimformer.distill import _prompt_completion_batch

    batch = _prompt_completion_batch(
        TOKENIZER, ["w5 w6 w7", "w8"], ["w9 w10", "w11 w12 w13"], max_length=16
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 9, 10], [-100, 11, 12, 13, -100]]

    teacher = tiny_model("llama", "causal-lm", num_hidden_layers=2)
    student, kept = make_layer_dropped_student(teacher, 1)
    prompts, completions = random_texts(16, 6, words=6), random_texts(16, 7, words=4)
    # evaluated on rows it trains on (random text has nothing else to learn), so perplexity falls
    result = distill(
        teacher,
        student,
        TOKENIZER,
        TextData(prompts, pairs=completions),
        TextData(prompts[:4], pairs=completions[:4]),
        DistillConfig(**FAST, alpha=0.5, max_steps=8, epochs=10, hidden_loss="mse"),
        layer_map=kept,
    )
    assert result.steps == 8 and result.metric_name == "perplexity" and not result.higher_is_better
    assert result.best_metric < result.evaluations()[0]["metric"]
    assert all(h["loss"] > 0 for h in result.history[1:])


# ---------------------------------------------------------------- training


def test_student_loss_falls(trained_teacher):
    student = tiny_model(
        "bert", "classification", num_hidden_layers=1, hidden_size=16, num_attention_heads=2
    )
    result = distill(
        trained_teacher,
        student,
        TOKENIZER,
        keyword_task(256, 2),
        config=DistillConfig(**FAST, max_steps=96, epochs=10, hidden_loss="mse"),
    )
    losses = [h["loss"] for h in result.history if h["loss"] is not None]
    assert len(losses) == 96 and result.stopped_because == "max_steps"
    assert sum(losses[-8:]) / 8 < 0.5 * sum(losses[:8]) / 8


@pytest.mark.slow
def test_student_agreement_with_the_teacher_rises_above_90_percent(trained_teacher):
    student = tiny_model(
        "bert", "classification", num_hidden_layers=1, seed=3
    )  # a smaller model of its own
    unlabelled_train = TextData(keyword_task(512, 3).texts)  # the teacher is the only labeller
    unlabelled_eval = TextData(keyword_task(256, 4).texts)
    result = distill(
        trained_teacher,
        student,
        TOKENIZER,
        unlabelled_train,
        unlabelled_eval,
        DistillConfig(**FAST, max_steps=100, epochs=10, eval_every=25),
    )
    assert result.metric_name == "agreement"
    first, *_ = result.evaluations()
    assert first["step"] == 0 and first["metric"] < 0.6
    assert result.best_metric > 0.9, result.evaluations()


def test_embedding_student_moves_towards_the_teachers_embeddings():
    teacher = tiny_model("bert", "base")
    student, kept = make_layer_dropped_student(teacher, 1)
    texts = random_texts(96, 5)
    result = distill(
        teacher,
        student,
        TOKENIZER,
        TextData(texts[:64]),
        TextData(texts[64:]),
        DistillConfig(**FAST, max_steps=30, eval_every=30, hidden_loss="cosine"),
        layer_map=kept,
    )
    assert result.metric_name == "cosine_to_original"
    first, last = result.evaluations()[0], result.evaluations()[-1]
    assert last["metric"] > first["metric"] + 0.05
    assert any(
        f["check"] == "unused_parameters" and "pooler" in f["message"] for f in result.health
    )


def test_finetune_learns_gold_labels_without_a_teacher():
    student = tiny_model("bert", "classification", num_hidden_layers=1)
    result = finetune(
        student,
        TOKENIZER,
        keyword_task(256, 0),
        keyword_task(128, 1),
        DistillConfig(**FAST, max_steps=40, eval_every=20),
    )
    assert result.metric_name == "accuracy" and result.teacher_metric is None
    assert result.best_metric > result.evaluations()[0]["metric"] + 0.2
    with pytest.raises(InvalidSpec, match="gold labels"):
        finetune(
            student, TOKENIZER, TextData(keyword_task(8, 0).texts), config=DistillConfig(**FAST)
        )


# ------------------------------------------------------ checkpoints, resumption, cancellation


RESUME = DistillConfig(
    max_length=16,
    batch_size=8,
    grad_accum=2,
    learning_rate=3e-3,
    max_steps=12,
    epochs=4,
    eval_every=4,
    checkpoint_every=3,
    hidden_loss="cosine",
    alpha=0.5,
)


def _resume_setup():
    teacher = tiny_model(
        "bert", "classification"
    )  # dropout 0.1: resumption must restore the RNG too
    student, kept = make_layer_dropped_student(teacher, 2)
    return teacher, student, kept, keyword_task(48, 0), keyword_task(16, 1)


def test_resuming_after_cancellation_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    teacher, student, kept, train, dev = _resume_setup()
    reference = distill(
        teacher, copy.deepcopy(student), TOKENIZER, train, dev, RESUME, layer_map=kept
    )
    assert reference.steps == 12

    steps = []
    with pytest.raises(Cancelled):
        distill(
            teacher,
            copy.deepcopy(student),
            TOKENIZER,
            train,
            dev,
            RESUME,
            layer_map=kept,
            checkpoint_dir=tmp_path,
            on_progress=lambda stage, f, msg: steps.append(msg),
            should_cancel=lambda: sum(m.startswith("step ") for m in steps) == 7,
        )
    resumed = distill(
        teacher,
        copy.deepcopy(student),
        TOKENIZER,
        train,
        dev,
        RESUME,
        layer_map=kept,
        checkpoint_dir=tmp_path,
    )
    assert resumed.resumed_from_step == 7 and resumed.steps == 12
    assert same_weights(resumed.student, reference.student)
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in reference.history], abs=1e-6
    )
    assert (resumed.best_step, resumed.best_metric) == (reference.best_step, reference.best_metric)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files

    again = distill(
        teacher,
        copy.deepcopy(student),
        TOKENIZER,
        train,
        dev,
        RESUME,
        layer_map=kept,
        checkpoint_dir=tmp_path,
        on_progress=lambda *a: pytest.fail("a finished run trained again"),
    )
    assert again.steps == 12 and same_weights(again.student, reference.student)


def test_resuming_after_a_worker_died_replays_from_the_last_checkpoint(tmp_path):
    teacher, student, kept, train, dev = _resume_setup()
    reference = distill(
        teacher, copy.deepcopy(student), TOKENIZER, train, dev, RESUME, layer_map=kept
    )

    def die_at_step_8(stage, fraction, message):
        if message.startswith("step 8/"):
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        distill(
            teacher,
            copy.deepcopy(student),
            TOKENIZER,
            train,
            dev,
            RESUME,
            layer_map=kept,
            checkpoint_dir=tmp_path,
            on_progress=die_at_step_8,
        )
    resumed = distill(
        teacher,
        copy.deepcopy(student),
        TOKENIZER,
        train,
        dev,
        RESUME,
        layer_map=kept,
        checkpoint_dir=tmp_path,
    )
    assert (
        resumed.resumed_from_step == 6
    )  # checkpoints every 3 steps: steps 7 and 8 are computed again
    assert same_weights(resumed.student, reference.student)
    # the weights returned are the best evaluated ones, so compare every step's loss as well
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in reference.history], abs=1e-6
    )


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    teacher, student, kept, train, dev = _resume_setup()
    short = DistillConfig(**{**RESUME.__dict__, "max_steps": 3})
    distill(teacher, copy.deepcopy(student), TOKENIZER, train, None, short, checkpoint_dir=tmp_path)
    other = DistillConfig(**{**short.__dict__, "learning_rate": 1e-4})
    with pytest.raises(InvalidSpec, match="config.learning_rate"):
        distill(
            teacher, copy.deepcopy(student), TOKENIZER, train, None, other, checkpoint_dir=tmp_path
        )


def test_cancellation_raises_before_the_next_step():
    teacher = tiny_model("bert", "classification")
    student = tiny_model("bert", "classification", num_hidden_layers=1)
    progress = []

    def steps_done():
        return [
            (fraction, message) for _, fraction, message in progress if message.startswith("step ")
        ]

    with pytest.raises(Cancelled, match="cancelled at step 3"):
        distill(
            teacher,
            student,
            TOKENIZER,
            keyword_task(64, 0),
            config=DistillConfig(**FAST, max_steps=20, epochs=10),
            on_progress=lambda *a: progress.append(a),
            should_cancel=lambda: len(steps_done()) >= 3,
        )
    assert len(steps_done()) == 3 and {stage for stage, _, _ in progress} == {"distilling"}
    assert [fraction for fraction, _ in steps_done()] == pytest.approx([0.05, 0.1, 0.15])
    assert "step 3/20 loss" in steps_done()[-1][1] and "ETA" in steps_done()[-1][1]


# ---------------------------------------------------------------- training health


def _checks(findings, level=None):
    return {f["check"] for f in findings if level is None or f["level"] == level}


def test_data_health_flags_empty_duplicate_long_and_sorted_data():
    texts = [f"w{10 + i} w{20 + i % 50} w{30 + i % 7}" for i in range(60)]
    texts[3] = "   "
    texts[4] = texts[5]  # duplicate, with another label below
    for i in range(6, 11):
        texts[i] = " ".join([f"w{i}"] * 40)  # longer than max_length
    labels = sorted(
        i % 3 for i in range(60)
    )  # sorted by label: unshuffled batches hold one label each
    labels[4] = (labels[5] + 1) % 3
    data = TextData(texts, labels=labels, source="bad.csv")
    config = DistillConfig(batch_size=8, max_length=16, shuffle=False)
    model_config = tiny_model("bert", "classification").config
    findings = check_training_data(
        data,
        TOKENIZER,
        config,
        task="text-classification",
        model_config=model_config,
        eval_data=TextData(texts[:10]),
    )
    assert {
        "empty_texts",
        "duplicate_texts",
        "truncation",
        "single_label_batches",
        "eval_overlap",
    } <= _checks(findings, "warning")
    assert "different labels" in next(
        f["message"] for f in findings if f["check"] == "duplicate_texts"
    )
    assert "label_distribution" in _checks(findings, "info")

    shuffled = check_training_data(
        data,
        TOKENIZER,
        DistillConfig(batch_size=8, max_length=16),
        task="text-classification",
        model_config=model_config,
    )
    assert "single_label_batches" not in _checks(shuffled)  # the seeded shuffle mixes the labels
    imbalanced = TextData(texts[:40], labels=[0] * 36 + [1] * 2 + [2] * 2)
    assert "label_imbalance" in _checks(
        check_training_data(
            imbalanced, TOKENIZER, config, task="text-classification", model_config=model_config
        ),
        "warning",
    )


def test_initial_loss_is_compared_with_chance_and_the_teacher(trained_teacher):
    student = tiny_model("bert", "classification", num_hidden_layers=1)
    data = keyword_task(32, 0)
    result = distill(
        trained_teacher, student, TOKENIZER, data, config=DistillConfig(**FAST, max_steps=1)
    )
    message = next(f["message"] for f in result.health if f["check"] == "initial_loss")
    assert "chance level ln(3) = 1.0986" in message and "teacher" in message
    assert "teacher_loss" not in _checks(result.health)
    flipped = TextData(
        data.texts, labels=[(label + 1) % 3 for label in data.labels]
    )  # labels mapped wrongly
    result = distill(
        trained_teacher,
        tiny_model("bert", "classification", num_hidden_layers=1),
        TOKENIZER,
        flipped,
        config=DistillConfig(**FAST, max_steps=1),
    )
    assert "teacher_loss" in _checks(result.health, "warning")


class NaNAfter:
    """A forward hook that turns a layer's output into NaN on the given training forward passes."""

    def __init__(self, calls):
        self.calls, self.count = set(calls), 0

    def __call__(self, module, args, output):
        if not module.training:
            return None
        self.count += 1
        return (
            output * float("nan")
            if self.count in self.calls or -1 in self.calls and self.count > 4
            else None
        )


def test_a_nan_loss_rolls_back_once_with_half_the_learning_rate():
    teacher = tiny_model("bert", "classification")
    student, _ = make_layer_dropped_student(teacher, 2)
    config = DistillConfig(**{**FAST, "warmup_ratio": 0.0}, max_steps=10, checkpoint_every=4)
    clean = distill(teacher, copy.deepcopy(student), TOKENIZER, keyword_task(64, 0), config=config)
    student.bert.encoder.layer[0].register_forward_hook(NaNAfter({6}))  # step 6
    result = distill(teacher, student, TOKENIZER, keyword_task(64, 0), config=config)
    assert result.steps == 10
    finding = next(f for f in result.health if f["check"] == "non_finite")
    assert finding["level"] == "warning" and "step 6; rolled back to step 4" in finding["message"]
    assert result.history[-1]["lr"] == pytest.approx(clean.history[-1]["lr"] / 2)
    assert all(torch.isfinite(p).all() for p in result.student.parameters())


def test_nan_again_after_the_roll_back_stops_with_a_clear_error(tmp_path):
    teacher = tiny_model("bert", "classification")
    student, _ = make_layer_dropped_student(teacher, 2)
    student.bert.encoder.layer[0].register_forward_hook(NaNAfter({-1}))  # every pass after the 4th
    with pytest.raises(SlimformerError, match="NaN or infinite again") as err:
        distill(
            teacher,
            student,
            TOKENIZER,
            keyword_task(64, 0),
            config=DistillConfig(**FAST, max_steps=10),
            checkpoint_dir=tmp_path,
        )
    assert type(err.value) is SlimformerError


def test_nan_gradients_are_caught_too():
    teacher = tiny_model("bert", "classification")
    student, _ = make_layer_dropped_student(teacher, 2)
    calls = []

    def poison(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    student.classifier.weight.register_hook(poison)
    result = distill(
        teacher, student, TOKENIZER, keyword_task(64, 0), config=DistillConfig(**FAST, max_steps=5)
    )
    finding = next(f for f in result.health if f["check"] == "non_finite")
    assert "gradients became NaN or infinite at step 3" in finding["message"]


def test_unused_and_frozen_parameters_are_reported():
    teacher = tiny_model("bert", "classification")
    student, _ = make_layer_dropped_student(teacher, 2)
    student.bert.extra = nn.Linear(4, 4)  # registered, never called
    student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    result = distill(
        teacher, student, TOKENIZER, keyword_task(32, 0), config=DistillConfig(**FAST, max_steps=1)
    )
    unused = next(f for f in result.health if f["check"] == "unused_parameters")
    frozen = next(f for f in result.health if f["check"] == "frozen_parameters")
    assert unused["level"] == "warning" and "bert.extra.weight" in unused["message"]
    assert frozen["level"] == "info" and "word_embeddings" in frozen["message"]


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_distillation_on_cuda_runs_in_bf16_autocast():
    teacher = tiny_model("bert", "classification")
    student, kept = make_layer_dropped_student(teacher, 2)
    dtypes = set()
    student.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda m, a, out: dtypes.add(out.dtype) if m.training else None
    )
    result = distill(
        teacher,
        student,
        TOKENIZER,
        keyword_task(64, 0),
        keyword_task(32, 1),
        DistillConfig(**FAST, max_steps=6, eval_every=3, hidden_loss="cosine"),
        layer_map=kept,
    )
    assert dtypes == {torch.bfloat16}
    assert next(result.student.parameters()).device.type == "cuda"
    assert (
        next(result.student.parameters()).dtype == torch.float32
    )  # weights stay float32 under autocast
    assert all(h["loss"] is None or h["loss"] == h["loss"] for h in result.history)
