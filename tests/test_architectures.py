import pytest
import torch
import transformers

from slimformer.architectures import SUPPORTED_FAMILIES, ModelAdapter, family_of
from slimformer.errors import UnsupportedArchitecture
from testkit.tiny_models import CONFIGS, tiny_model


def test_every_tiny_family_is_supported():
    assert set(CONFIGS) == set(SUPPORTED_FAMILIES)


def test_unsupported_architecture_names_the_supported_families():
    config = transformers.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=37, vocab_size=64)
    with pytest.raises(UnsupportedArchitecture) as err:
        family_of(config)
    message = str(err.value)
    assert "'t5' is not supported" in message
    for family in ("bert", "llama", "gpt2", "qwen3"):
        assert family in message


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_adapter_reads_sizes_from_modules(family):
    adapter = ModelAdapter(tiny_model(family))
    sizes = adapter.all_sizes()
    assert all(s.heads == 4 and s.intermediate == 37 and not s.mlp_removed for s in sizes)
    assert adapter.head_dim == 8
    expected_kv = 2 if family in ("llama", "mistral", "qwen2", "qwen3") else 4
    assert all(s.kv_heads == expected_kv for s in sizes)


def test_removing_every_head_of_a_layer_is_refused():
    adapter = ModelAdapter(tiny_model("bert"))
    with pytest.raises(ValueError, match="every attention head"):
        adapter.prune_layer(0, remove_heads=[0, 1, 2, 3])


def test_unequal_query_heads_per_kv_group_are_refused():
    adapter = ModelAdapter(tiny_model("llama"))
    # group 0 = heads 0,1; group 1 = heads 2,3: removing head 0 only leaves 1 and 2 query heads
    with pytest.raises(ValueError, match="num_key_value_groups must stay an integer"):
        adapter.prune_layer(0, remove_heads=[0])


def test_grouped_query_pruning_keeps_the_group_ratio():
    model = tiny_model("llama", head="causal-lm")
    adapter = ModelAdapter(model)
    adapter.prune_layer(0, remove_heads=[0, 2])  # one query head from each group
    attn = adapter.layers[0].self_attn
    assert adapter.sizes(0).heads == 2 and adapter.sizes(0).kv_heads == 2
    assert attn.num_key_value_groups == 1
    adapter.prune_layer(1, remove_heads=[2, 3])  # the whole second group
    assert adapter.sizes(1).heads == 2 and adapter.sizes(1).kv_heads == 1
    assert adapter.layers[1].self_attn.num_key_value_groups == 2
    ids = torch.randint(3, 100, (2, 9))
    assert model(input_ids=ids).logits.shape == (2, 9, 128)
