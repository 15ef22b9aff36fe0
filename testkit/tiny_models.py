"""Tiny random models of every supported family, built from configs in code (no downloads)."""

from __future__ import annotations

import torch
import transformers

VOCAB = 128

# family -> (config class, config kwargs); every model: 2 or 3 layers, 4 heads of 8 dims, FFN 37.
# the Llama-like decoders: grouped-query attention, 4 query heads over 2 key/value heads of 8
_GQA_DECODER = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    num_hidden_layers=2,
    intermediate_size=37,
    max_position_embeddings=64,
    pad_token_id=0,
)

CONFIGS: dict[str, tuple[str, dict]] = {
    "bert": (
        "BertConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=3,
            intermediate_size=37,
            max_position_embeddings=64,
        ),
    ),
    "roberta": (
        "RobertaConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=37,
            max_position_embeddings=66,
            pad_token_id=1,
        ),
    ),
    "xlm-roberta": (
        "XLMRobertaConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=37,
            max_position_embeddings=66,
            pad_token_id=1,
        ),
    ),
    "distilbert": (
        "DistilBertConfig",
        dict(dim=32, n_heads=4, n_layers=2, hidden_dim=37, max_position_embeddings=64),
    ),
    "gpt2": (
        "GPT2Config",
        dict(n_embd=32, n_head=4, n_layer=2, n_inner=37, n_positions=64, pad_token_id=0),
    ),
    "llama": ("LlamaConfig", _GQA_DECODER),
    "mistral": ("MistralConfig", _GQA_DECODER),
    "qwen2": ("Qwen2Config", {k: v for k, v in _GQA_DECODER.items() if k != "head_dim"}),
    "qwen3": ("Qwen3Config", _GQA_DECODER),
}
DECODERS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
HEADS = {
    "base": "AutoModel",
    "classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
}


def tiny_config(family: str, **overrides):
    name, kwargs = CONFIGS[family]
    return getattr(transformers, name)(vocab_size=VOCAB, **{**kwargs, **overrides})


def tiny_model(family: str, head: str = "classification", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    extra = {"num_labels": 3} if head == "classification" else {}
    config = tiny_config(family, **extra, **overrides)
    model = getattr(transformers, HEADS[head]).from_config(config)
    # random init is tiny for some families: scale weights so units differ clearly in importance
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.2)
    return model.eval()


def tiny_batch(
    family: str,
    batch_size: int = 4,
    seq_len: int = 12,
    labels: bool = True,
    seed: int = 1,
    head: str = "classification",
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, seq_len - 3 :] = 0  # one padded row keeps masking honest
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels and head == "classification":
        batch["labels"] = torch.randint(0, 3, (batch_size,), generator=gen)
    if labels and head == "causal-lm":
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def save_tiny_classifier(folder, tokenizer_path, num_layers: int = 2) -> str:
    """A tiny random BERT classifier (labels negative/positive) saved with a real tokenizer: seconds
    per job."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=num_layers,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)
    return str(folder)


def write_reviews_csv(path, repeats: int = 24):
    """A labelled CSV: ``great movie number i`` is positive, ``awful movie number i`` negative."""
    rows = ["sentence,label"] + [
        f"{word} movie number {i},{label}"
        for i in range(repeats)
        for word, label in (("great", "positive"), ("awful", "negative"))
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def char_tokenizer():
    """A character-level fast tokenizer over printable ASCII (ids below VOCAB): <pad> 0, <unk> 1,
    </s> 2 (EOS). Saves and reloads with AutoTokenizer, so a pipeline can run a tiny causal LM."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [c for c in string.printable if c not in "\x0b\x0c"][: VOCAB - 3]
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def llama_style_tokenizer():
    """A Llama-2-style character tokenizer (BPE without merges, ``▁`` for spaces, byte fallback)
    with exactly VOCAB ids: <unk> 0, <s> 1, </s> 2, ``▁``, printable ASCII, then byte tokens.
    llama.cpp's converter reads it as a Llama vocabulary (no pre-tokenizer hash to match)."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers

    chars = ["▁"] + [c for c in string.printable if c not in " \t\n\r\x0b\x0c"]
    pieces = ["<unk>", "<s>", "</s>", "<0x0A>"] + chars
    pieces += [f"<0x{b:02X}>" for b in range(0x80, 0x100)][: VOCAB - len(pieces)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    bpe = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    backend = Tokenizer(bpe)
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )


def save_tiny_causal_lm(folder, family: str = "llama", **overrides) -> str:
    """A tiny random causal LM of ``family`` saved with :func:`char_tokenizer`: seconds per job."""
    model = tiny_model(family, "causal-lm", **{"pad_token_id": 0, "eos_token_id": 2, **overrides})
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return str(folder)


def write_story_txt(path, stories: int = 40):
    """A plain-text file: one short story per blank-line-separated block, some over two lines."""
    blocks = [
        f"Story {i}: the cat sat on mat {i % 7}.\nIt was {'happy' if i % 2 else 'sad'} today."
        for i in range(stories)
    ]
    path.write_text("\n\n".join(blocks) + "\n")
    return path
