"""Optimised checkpoints: each method's result loads through load_causal_lm and generates; pruning hits the
asked sparsity on the weights; int8 reloads exactly; LoRA merges exactly; the GPU methods fail clearly on a CPU;
compare() measures the source and its versions the same way."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.checkpoints import QUANTIZED_MARKER, CheckpointError
from training.generate import GenerationConfig, generate
from training.models import load_causal_lm
from training.optimize import (
    MeasureConfig,
    OptimizationError,
    OptimizeConfig,
    check_hardware,
    compare,
    int8_targets,
    mlp_parameters,
    optimize,
    weight_sparsity,
)
from training.quantized import INT8_WEIGHTS, quantize_dynamic_int8

PROMPTS = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(4)]
IDS = torch.tensor([[1, 17, 260, 4000, 9, 31, 77]])


def generates(path: Path) -> list[str]:
    config = GenerationConfig(max_new_tokens=6, seed=0, device="cpu")
    return [c.text for batch in generate(path, PROMPTS[:2], config) for c in batch]


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model"
    optimize(tiny_model_dir, out, OptimizeConfig("int8"))
    return out


def test_an_int8_checkpoint_loads_quantised_and_gives_the_outputs_of_the_model_that_was_saved(tiny_model_dir, int8_dir):
    model = load_causal_lm(int8_dir, device="cpu")
    layer = model.model.layers[0]
    assert "quantized" in type(layer.self_attn.q_proj).__module__ and "quantized" in type(layer.mlp.up_proj).__module__
    assert isinstance(layer.mlp.down_proj, torch.nn.Linear) and isinstance(model.lm_head, torch.nn.Linear)  # kept in fp32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied

    in_memory = load_causal_lm(tiny_model_dir, device="cpu")
    quantize_dynamic_int8(in_memory, int8_targets(in_memory))
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, in_memory(IDS).logits)
        source = load_causal_lm(tiny_model_dir, device="cpu")(IDS).logits
        assert 0 < (model(IDS).logits - source).abs().max() < 0.1  # int8 rounding: close, not equal

    stored = load_file(int8_dir / INT8_WEIGHTS)
    assert stored["model.layers.0.self_attn.q_proj.weight_int8"].dtype == torch.int8
    assert "model.layers.0.self_attn.q_proj.weight" not in stored
    assert json.loads((int8_dir / QUANTIZED_MARKER).read_text())["method"] == "int8"
    assert len(generates(int8_dir)) == 2


def test_a_broken_int8_checkpoint_is_a_checkpoint_error(int8_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(int8_dir, broken)
    weights = load_file(broken / INT8_WEIGHTS)
    del weights["model.layers.1.mlp.up_proj.weight_int8"]
    save_file(weights, broken / INT8_WEIGHTS)
    with pytest.raises(CheckpointError, match="int8"):
        load_causal_lm(broken, device="cpu")


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_unstructured_pruning_zeroes_the_asked_share_of_the_weights(tiny_model_dir, tmp_path, sparsity):
    details = optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=sparsity))
    model = load_causal_lm(tmp_path / "pruned", device="cpu")  # an ordinary checkpoint
    assert weight_sparsity(model) == pytest.approx(sparsity, abs=1e-3) == details["sparsity"]
    for layer in model.model.layers:
        q = layer.self_attn.q_proj.weight
        assert float((q == 0).float().mean()) == pytest.approx(sparsity, abs=1e-3)  # each layer, not just overall
    source = load_causal_lm(tiny_model_dir, device="cpu")
    assert torch.equal(model.model.embed_tokens.weight, source.model.embed_tokens.weight)  # embeddings untouched
    kept = model.model.layers[0].mlp.up_proj.weight
    smallest_kept = kept[kept != 0].abs().min()
    dropped = source.model.layers[0].mlp.up_proj.weight[kept == 0].abs().max()
    assert smallest_kept >= dropped  # by magnitude
    assert len(generates(tmp_path / "pruned")) == 2


def test_structured_pruning_cuts_whole_mlp_channels_into_a_smaller_model(tiny_model_dir, tmp_path):
    source = load_causal_lm(tiny_model_dir, device="cpu")
    details = optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=0.5, structured=True))
    model = load_causal_lm(tmp_path / "pruned", device="cpu")
    assert model.config.intermediate_size == details["mlp_channels"] == round(source.config.intermediate_size * 0.5)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (64, details["mlp_channels"])
    assert 1 - mlp_parameters(model) / mlp_parameters(source) == pytest.approx(0.5, abs=0.01) == pytest.approx(details["sparsity"])
    assert (tmp_path / "pruned" / "model.safetensors").stat().st_size < (tiny_model_dir / "model.safetensors").stat().st_size
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()
    assert len(generates(tmp_path / "pruned")) == 2


def test_structured_pruning_keeps_the_strongest_channels(tiny_model_dir, tmp_path):
    source = load_causal_lm(tiny_model_dir, device="cpu")
    optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=0.25, structured=True))
    pruned = load_causal_lm(tmp_path / "pruned", device="cpu")
    mlp, kept = source.model.layers[1].mlp, pruned.model.layers[1].mlp
    norms = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T], dim=1).norm(dim=1)
    chosen = norms.topk(kept.up_proj.weight.shape[0]).indices.sort().values
    assert torch.equal(kept.up_proj.weight, mlp.up_proj.weight[chosen])
    assert torch.equal(kept.down_proj.weight, mlp.down_proj.weight[:, chosen])


def test_merging_a_lora_adapter_gives_the_adapted_model_as_one_checkpoint(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer

    base = load_causal_lm(tiny_model_dir, device="cpu")
    adapted = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # B starts at zero: make the adapter change something
    adapted.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")

    optimize(tiny_model_dir, tmp_path / "merged", OptimizeConfig("merge", adapter_dir=str(tmp_path / "adapter")))
    merged = load_causal_lm(tmp_path / "merged", device="cpu")
    expected = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir, device="cpu"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(merged(IDS).logits, expected(IDS).logits, atol=1e-4)
        assert not torch.allclose(merged(IDS).logits, load_causal_lm(tiny_model_dir, device="cpu")(IDS).logits, atol=1e-3)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert len(generates(tmp_path / "merged")) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("method", ["bnb4", "bnb8"])
def test_bitsandbytes_methods_fail_clearly_on_a_cpu_only_machine(tiny_model_dir, tmp_path, method):
    with pytest.raises(OptimizationError, match="needs a CUDA GPU"):
        check_hardware(method)
    with pytest.raises(OptimizationError, match="CUDA"):
        optimize(tiny_model_dir, tmp_path / method, OptimizeConfig(method))
    assert not (tmp_path / method).exists()


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.1])
def test_a_sparsity_outside_0_1_is_refused(tiny_model_dir, tmp_path, sparsity):
    with pytest.raises(OptimizationError, match="sparsity"):
        optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=sparsity))
    assert not (tmp_path / "pruned").exists()


def test_pruning_away_every_channel_fails_and_leaves_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(OptimizationError, match="every MLP channel"):
        optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=0.999, structured=True))
    assert not (tmp_path / "pruned").exists()


def test_compare_measures_the_source_and_each_version_on_the_same_samples(tiny_model_dir, int8_dir, tmp_path):
    optimize(tiny_model_dir, tmp_path / "pruned", OptimizeConfig("prune", sparsity=0.9))
    pairs = [(PROMPTS[0], "Zero is the first number.", "I like trains."), (PROMPTS[1], "One.", "It is odd and small.")]
    figures = compare(tiny_model_dir, {"int8": int8_dir, "pruned": tmp_path / "pruned"}, PROMPTS, pairs,
                      MeasureConfig(max_new_tokens=6, batch_size=2), reward_model=tiny_model_dir)
    assert list(figures) == ["source", "int8", "pruned"]
    for name, f in figures.items():
        assert f["size_mb"] > 1 and f["load_s"] > 0 and f["tokens_per_s"] > 0 and f["tokens"] > 0, name
        assert math.isfinite(f["perplexity"]) and f["perplexity"] > 1, name
        assert isinstance(f["reward"], float), name
        assert 0 <= f["agreement"] <= 1, name
    assert figures["source"]["agreement"] == 1.0
    assert figures["int8"]["size_mb"] < figures["source"]["size_mb"]
    # the source's own samples are likelier under the source than under a 90%-pruned copy
    assert figures["source"]["perplexity"] < figures["pruned"]["perplexity"]
