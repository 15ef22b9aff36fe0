"""The nemotron_nas layout: plans constrained to what Nemotron-NAS block configs state, a folder
that transformers reloads with the same logits, and clear refusals of what the format cannot say.

(That vLLM and llama.cpp load the folder is in tests/test_engines.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from slimformer.architectures import ModelAdapter
from slimformer.artifacts import save_model_folder
from slimformer.errors import InvalidSpec
from slimformer.importance import score_importance
from slimformer.importance.depth import attention_influence
from slimformer.pruning import PruningTarget, one_shot_prune, plan_pruning
from slimformer.spec import JobSpec
from testkit.tiny_models import VOCAB, llama_style_tokenizer, tiny_model


def nemotron_llama(layers: int = 6, seed: int = 0):
    """A tiny Llama Nemotron-NAS can state: FFN 768 (3 chunks of 256), heads of 32 (vLLM's CPU
    attention has kernels from 32)."""
    return tiny_model(
        "llama",
        "causal-lm",
        seed=seed,
        num_hidden_layers=layers,
        head_dim=32,
        intermediate_size=768,
        bos_token_id=1,
        eos_token_id=2,
    ).eval()


def windows(n: int = 4, length: int = 24) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [[1, *torch.randint(4, VOCAB, (length - 1,), generator=gen).tolist()] for _ in range(n)]


def batches_of(ws: list[list[int]]) -> list[dict]:
    return [{"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w))} for w in ws]


def nemotron_pruned(heads=0.34, ffn=0.3, layers=6):
    model = nemotron_llama(layers)
    batches = batches_of(windows())
    scores = score_importance(model, batches, method="obs")
    influence = attention_influence(model, batches)
    target = PruningTarget(
        heads=heads, ffn=ffn, ranking="adaptive", keep_first_layers=1, keep_last_layers=1
    )
    plan = plan_pruning(model, scores, target, layout="nemotron_nas", attention_scores=influence)
    return model, plan, influence, scores


def test_the_plan_removes_whole_attention_blocks_and_ffn_chunks_of_256():
    model, plan, influence, _ = nemotron_pruned(heads=0.34, ffn=0.3)
    # 34% of 6 x 4 heads = 8.2 heads = 2 whole blocks, never layer 0 or the protected last layer
    assert len(plan.attention) == 2 and not {0, 5} & set(plan.attention)
    eligible = sorted(range(1, 5), key=lambda i: float(influence[i]))
    assert plan.attention == sorted(eligible[:2])  # the least influential attention goes
    assert plan.heads == {}
    # 30% of 6 x 768 neurons = 5.4 chunks of 256 -> 5 chunks, none from protected layers
    assert all(len(n) % 256 == 0 for n in plan.neurons.values())
    assert sum(len(n) for n in plan.neurons.values()) == 5 * 256
    assert not {0, 5} & set(plan.neurons)
    assert all(len(n) <= 512 for n in plan.neurons.values())  # every layer keeps a chunk


def test_the_folder_is_a_nemotron_nas_config_that_transformers_reloads_with_the_same_logits(
    tmp_path,
):
    model, plan, _, scores = nemotron_pruned()
    result = one_shot_prune(model, scores, plan, layout="nemotron_nas")
    pruned = result.model
    save_model_folder(pruned, llama_style_tokenizer(), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"]
    assert config["model_type"] == "nemotron-nas"
    blocks = config["block_configs"]
    assert [i for i, b in enumerate(blocks) if b["attention"]["no_op"]] == plan.attention
    widths = [int(2 * b["ffn"]["ffn_mult"] * config["hidden_size"] / 3) for b in blocks]
    assert [-(-w // 256) * 256 for w in widths] == [s.intermediate for s in result_sizes(pruned)]
    kept = [b["attention"]["n_heads_in_group"] for b in blocks if not b["attention"]["no_op"]]
    assert set(kept) == {2}  # 4 query heads over 2 KV heads, as the original
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as handle:
        names = list(handle.keys())
    for layer in plan.attention:  # a removed attention has no tensors, not even its norm
        assert not [n for n in names if n.startswith(f"model.layers.{layer}.self_attn")]
        assert f"model.layers.{layer}.input_layernorm.weight" not in names
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", trust_remote_code=True
    ).eval()
    ids = torch.tensor([windows(1, 20)[0]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)
        generated = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
        expected = pruned.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, expected)  # the KV cache works with attention-less layers
    assert result.record.to_dict()["removed_attention"] == plan.attention
    heads = [0 if i in plan.attention else 4 for i in range(6)]
    assert result.record.to_dict()["heads_per_layer"] == heads


def result_sizes(model):
    return ModelAdapter(model).all_sizes()


def test_what_the_format_cannot_state_is_refused_with_the_reason():
    batches = batches_of(windows(2))
    bert = tiny_model("bert")
    with pytest.raises(InvalidSpec, match="Llama layout"):
        plan_pruning(
            bert,
            score_importance(bert, [tiny_batch_for(bert)], method="magnitude"),
            PruningTarget(ffn=0.5),
            layout="nemotron_nas",
        )
    odd = tiny_model("llama", "causal-lm")  # FFN of 37 neurons
    with pytest.raises(InvalidSpec, match="37 neurons, not a multiple of 256"):
        plan_pruning(
            odd,
            score_importance(odd, batches, method="magnitude"),
            PruningTarget(ffn=0.5),
            layout="nemotron_nas",
        )
    model = nemotron_llama(4)
    scores = score_importance(model, batches, method="magnitude")
    with pytest.raises(InvalidSpec, match="does not remove whole MLPs"):
        plan_pruning(model, scores, PruningTarget(whole_mlps=1), layout="nemotron_nas")
    with pytest.raises(InvalidSpec, match="no output biases"):
        plan_pruning(
            model, scores, PruningTarget(ffn=0.3, bias_compensation=True), layout="nemotron_nas"
        )
    with pytest.raises(InvalidSpec, match="attention of 3 layers whole, but only 2 may lose it"):
        plan_pruning(
            model, scores, PruningTarget(heads=0.7, keep_last_layers=1), layout="nemotron_nas"
        )


def tiny_batch_for(model):
    from testkit.tiny_models import tiny_batch

    return tiny_batch(model.config)


def test_attention_influence_puts_an_attention_that_adds_nothing_first():
    model = nemotron_llama(4)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
    influence = attention_influence(model, batches_of(windows(2)))
    assert float(influence[2]) == pytest.approx(0.0, abs=1e-6)
    assert all(float(influence[i]) > 1e-4 for i in (0, 1, 3))


def _spec(**export):
    return {
        "model": {"id": "org/llama"},
        "dataset": {"hub_id": "org/text"},
        "prune": {"heads": 0.25, "ffn": 0.25},
        "export": export,
    }


def test_the_serving_targets_choose_the_layout_and_the_files():
    from slimformer.spec import default_layout

    plain = JobSpec.model_validate(_spec())
    assert plain.prune.layout is None and plain.export.targets == ["transformers"]
    assert default_layout(plain, "llama") == "per_layer"
    served = JobSpec.model_validate(_spec(targets=["transformers", "vllm", "llama.cpp"]))
    # llama.cpp gets a GGUF file to load; the spec keeps what was said, the view derives the rest
    assert served.export.gguf == [] and served.gguf_types() == ("q8_0",)
    # heads and FFN: uniform (x1.87 against nemotron_nas's x2.16 on SmolLM2 at 30/30)
    assert default_layout(served, "llama") == "uniform"
    ffn_only = _spec(targets=["vllm"])
    ffn_only["prune"] = {"ffn": 0.3}
    ffn_only = JobSpec.model_validate(ffn_only)
    # FFN only: per-layer widths in chunks of 256 (x1.31 against uniform's x1.45), Llamas only
    assert default_layout(ffn_only, "llama") == "nemotron_nas"
    assert default_layout(ffn_only, "qwen2") == "uniform"
    gguf_only = JobSpec.model_validate(_spec(gguf=["f16"]))
    assert gguf_only.export.targets == ["transformers"]
    assert gguf_only.served_targets() == ["transformers", "llama.cpp"]
    assert default_layout(gguf_only, "llama") == "uniform"
    onnx = JobSpec.model_validate(_spec(targets=["onnx"]))
    assert not onnx.evaluation.onnx and onnx.writes_onnx() and onnx.gguf_types() == ()
    assert default_layout(onnx, "llama") == "per_layer"
    int8 = JobSpec.model_validate(_spec() | {"evaluation": {"onnx_int8": True}})
    assert int8.export.targets == ["transformers"] and int8.served_targets()[-1] == "onnx"
    assert JobSpec.model_validate(int8.model_dump()) == int8  # the spec round-trips as given
    chosen = _spec(targets=["vllm"])
    chosen["prune"]["layout"] = "nemotron_nas"
    assert default_layout(JobSpec.model_validate(chosen), "llama") == "nemotron_nas"
    explicit = _spec(targets=["vllm"])
    explicit["prune"]["layout"] = "per_layer"
    with pytest.raises(ValueError, match="cannot read the per_layer layout"):
        JobSpec.model_validate(explicit)
    with pytest.raises(ValueError, match="targets"):
        JobSpec.model_validate(_spec(targets=["tensorrt"]))


def test_a_nemotron_nas_result_is_the_input_of_another_job_without_remote_code(tmp_path):
    from slimformer.errors import UnsupportedArchitecture
    from slimformer.pipeline import run
    from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4, intermediate_size=768)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)

    def job(model: str, prune: dict, name: str):
        spec = {
            "model": {"id": model},
            "dataset": {"path": str(data), "eval_path": str(data)},
            "prune": prune,
            "evaluation": {"latency": False, "max_samples": 2},
        }
        return run(JobSpec.model_validate(spec, context={"local_files": True}), tmp_path / name)

    first = job(folder, {"ffn": 0.25, "layout": "nemotron_nas"}, "first")
    widths = first.report["pruning"]["neurons_per_layer"]
    # 25% of 4 x 768 neurons: 3 chunks of 256, the first and last layer kept (causal-LM default)
    assert sum(widths) == 3072 - 768 and widths[0] == widths[3] == 768
    # the two unprotected layers keep 256 and 512 neurons: one more chunk can go (10%: 0.9 chunks)
    second = job(str(first.folder), {"ffn": 0.1, "heads": 0.25, "layout": "nemotron_nas"}, "two")
    assert second.report["base_model"]["own_code"]  # slimformer's installed code, not the copy
    assert sum(second.report["pruning"]["neurons_per_layer"]) == 2304 - 256
    with pytest.raises(InvalidSpec, match="in chunks of 256 would empty an MLP"):
        job(str(first.folder), {"ffn": 0.2, "layout": "nemotron_nas"}, "too-much")
    assert len(second.report["pruning"]["removed_attention"]) == 1
    with pytest.raises(UnsupportedArchitecture, match="per_layer layout has no bundled class"):
        job(str(first.folder), {"ffn": 0.2, "layout": "per_layer"}, "three")


def test_a_nemotron_nas_job_exports_onnx_that_onnxruntime_runs(tmp_path):
    from slimformer.pipeline import run
    from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4, intermediate_size=512)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    spec = {
        "model": {"id": folder},
        "dataset": {"path": str(data), "eval_path": str(data)},
        "prune": {"heads": 0.25, "ffn": 0.25, "layout": "nemotron_nas"},
        "evaluation": {"latency": False, "max_samples": 2},
        "export": {"targets": ["transformers", "onnx"]},
    }
    result = run(JobSpec.model_validate(spec, context={"local_files": True}), tmp_path / "work")
    assert result.report["pruning"]["removed_attention"]  # a layer without attention, exported
    onnx = result.report["artifacts"]["onnx"]
    assert (result.folder / onnx["path"]).is_file() and onnx["max_abs_diff"] < 1e-4
