"""slimformer/families.py is the one home of the facts about model families: every family states
every fact, the modules that act on a fact agree with the registry, and no other module keeps a
list of family names."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from slimformer import architectures, engines
from slimformer.architectures import ModelAdapter
from slimformer.engines import llama_cpp
from slimformer.errors import ExportError, InvalidSpec
from slimformer.families import (
    FAMILIES,
    GGUF_FAMILIES,
    PARTS,
    SUPPORTED_FAMILIES,
    Family,
)
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.pruning import PruningTarget
from slimformer.pruning.layouts.nemotron_nas import NemotronNas
from slimformer.pruning.layouts.uniform import Uniform
from slimformer.spec import JobSpec, default_layout
from testkit.tiny_models import CONFIGS, DECODERS, tiny_model

ROOT = Path(__file__).resolve().parents[1]
STOCK = [f for f in FAMILIES.values() if f.stock]

# Modules that may spell a family name, and why.
NAME_ALLOWED = {
    # copied into every per_layer / nemotron_nas checkpoint and imports only torch and
    # transformers, so it keeps its own copy (test_the_bundled_modelling_code_agrees below)
    "slimformer/modeling/modeling_slimformer.py": None,
    # the stock config class of a nemotron_nas checkpoint (a Llama); Family.layout_of says the same
    "slimformer/loading.py": {"llama"},
    # being written alongside this registry; to move onto a ``streamed`` Family fact
    "slimformer/streaming/model.py": {"llama"},
}


def test_every_family_states_every_fact():
    assert list(FAMILIES) == [f.name for f in FAMILIES.values()]
    assert len({f.display for f in FAMILIES.values()}) == len(FAMILIES)
    for family in FAMILIES.values():
        for field in dataclasses.fields(Family):
            value = getattr(family, field.name)
            if "None" not in str(field.type):
                assert value is not None and value != "", (family.name, field.name)
        # every module path a fact names is a parameter the slices know or the MLP drops
        paths = (*family.head_projections, *family.up_projections)
        paths += (family.attention_output, family.mlp_down)
        for path in paths:
            assert any(key.startswith(path + ".") for key in family.slices), (family.name, path)
        for path in (*family.up_projections, family.mlp_down):
            assert path + "." in family.mlp_prefixes
        assert family.grouped == any(unit == "kv" for _, unit in family.slices.values())
        assert family.fused_qkv == any(unit == "qkv" for _, unit in family.slices.values())
        if family.layout_of is not None:
            assert FAMILIES[family.layout_of].stock
        if family.bias_flags is not None:
            assert set(family.bias_flags) <= set(PARTS)


def test_the_registry_is_what_the_modules_import():
    assert architectures.SUPPORTED_FAMILIES is SUPPORTED_FAMILIES
    for name, family in FAMILIES.items():
        assert architectures.family_of(SimpleNamespace(model_type=name)) is family
    assert llama_cpp.GGUF_FAMILIES is GGUF_FAMILIES
    assert set(SUPPORTED_FAMILIES) == set(CONFIGS)
    assert {f.name for f in STOCK if f.decoder} == set(DECODERS)
    # what the facts came to
    assert set(GGUF_FAMILIES) == {"llama", "mistral", "qwen2", "qwen3", "nemotron-nas"}
    assert {f.name for f in FAMILIES.values() if f.nemotron_nas} == {"llama", "nemotron-nas"}
    assert {f.name for f in FAMILIES.values() if f.uniform_heads} == {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
    }
    assert {f.name for f in FAMILIES.values() if f.bias_flags is not None} == {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
    }


def test_the_bundled_modelling_code_agrees():
    """The checkpoint's own copy of the size attributes and layer paths equals the registry's."""
    assert set(bundled.FAMILIES) == set(FAMILIES)
    for name, names in bundled.FAMILIES.items():
        family = FAMILIES[name]
        assert names.get("kv_heads") == family.kv_heads_attr
        assert (names["heads"], names["ffn"], names["layers"]) == (
            family.heads_attr,
            family.ffn_attr,
            family.layers,
        )
    assert list(bundled._CLASSES) == list(SUPPORTED_FAMILIES)
    assert bundled.SlimformerDeciLMConfig.model_type == "nemotron-nas"
    assert (
        FAMILIES["nemotron-nas"].layout_of == bundled.SlimformerDeciLMConfig.__mro__[1].model_type
    )


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_gguf_export_takes_the_families_with_a_gguf_architecture(tmp_path, family):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": family.name}))
    if family.gguf_architecture:
        engines.check_gguf_convertible(tmp_path)
    else:
        with pytest.raises(ExportError, match="GGUF export covers"):
            engines.check_gguf_convertible(tmp_path)


@pytest.mark.parametrize("family", STOCK, ids=lambda f: f.name)
def test_the_layouts_take_the_families_the_registry_names(family):
    adapter = ModelAdapter(tiny_model(family.name))
    assert adapter.family is family and adapter.grouped == family.grouped
    if family.uniform_heads:
        Uniform().check(adapter, PruningTarget(heads=0.25))
    else:
        with pytest.raises(InvalidSpec, match="cannot express head pruning"):
            Uniform().check(adapter, PruningTarget(heads=0.25))
    try:
        NemotronNas().check(adapter)
        refused = None
    except InvalidSpec as err:
        refused = str(err)
    assert (refused is not None and "is a Llama layout" in refused) == (not family.nemotron_nas)
    spec = {
        "model": {"id": "org/model"},
        "dataset": {"hub_id": "org/text"},
        "prune": {"ffn": 0.3},
        "export": {"targets": ["vllm"]},
    }
    expected = "nemotron_nas" if family.nemotron_nas else "uniform"
    assert default_layout(JobSpec.model_validate(spec), family.name) == expected


@pytest.mark.parametrize(
    "family", [f for f in STOCK if f.bias_flags is not None], ids=lambda f: f.name
)
def test_the_bias_flags_are_the_stock_configs(family):
    """A flag gives every projection of its part a bias; a part without a flag has no output
    bias in the stock model."""
    plain = ModelAdapter(tiny_model(family.name, head="base")).layers[0]
    for part in PARTS:
        flag = family.bias_flags.get(part)
        assert plain.get_submodule(family.output_projection(part)).bias is None
        if flag:
            layer = ModelAdapter(tiny_model(family.name, head="base", **{flag: True})).layers[0]
            assert all(layer.get_submodule(p).bias is not None for p in family.projections(part))


def test_the_readme_lists_the_supported_families():
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"^Supported families: (.+)$", readme, re.MULTILINE)
    assert listed, "README.md lost its 'Supported families:' line"
    assert [name.strip() for name in listed.group(1).split(",")] == [f.display for f in STOCK]


def _family_literals(path: Path) -> list[tuple[int, str]]:
    names = set(FAMILIES)
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


def test_no_module_outside_the_registry_spells_a_family_name():
    """Family names as string literals (comparisons, tuples of names, tables keyed by name) live in
    slimformer/families.py; elsewhere code reads a Family's fields."""
    found = []
    for root in ("slimformer", "workers", "bench", "service"):
        for path in sorted((ROOT / root).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            allowed = NAME_ALLOWED.get(rel, set())
            if rel == "slimformer/families.py" or allowed is None:
                continue
            found += [
                f"{rel}:{line}: {value!r}"
                for line, value in _family_literals(path)
                if value not in allowed
            ]
    assert not found, "family names outside slimformer/families.py:\n" + "\n".join(found)
