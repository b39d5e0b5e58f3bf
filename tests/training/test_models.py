"""Checkpoints: the tiny test model, tokenizer export, loading errors, and the SmolLM2 conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from training.checkpoints import CheckpointError
from training.generate import GenerationConfig, generate
from training.models import (
    build_tiny_model,
    convert_smollm2,
    export_tokenizer,
    load_causal_lm,
    load_tokenizer,
    smollm2_gguf_path,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_tiny_model_loads_as_a_causal_lm_and_as_a_reward_model(tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    batch = tokenizer(["a short one", "a somewhat longer text to score"], padding=True, return_tensors="pt")
    assert policy(**batch).logits.shape[-1] == len(tokenizer) == 49152
    assert scorer(**batch).logits.shape == (2, 1)
    assert policy.config.model_type == "llama" and policy.config.tie_word_embeddings


def test_the_tiny_model_is_the_same_for_the_same_seed(tmp_path):
    first = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    again = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")

    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_the_tokenizer_pads_with_a_token_that_is_not_eos(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)

    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_exporting_the_tokenizer_twice_leaves_the_first_export(tokenizer_dir):
    before = (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns

    assert export_tokenizer(tokenizer_dir) == tokenizer_dir
    assert (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == before


def test_a_missing_or_broken_checkpoint_raises_checkpoint_error(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError):
        load_causal_lm(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_causal_lm(broken)
    with pytest.raises(CheckpointError):
        load_tokenizer(tmp_path / "nowhere")


def test_the_converted_smollm2_matches_the_gguf_and_answers_a_question(smollm2_dir):
    """The one test on the real model: conversion against transformers' own GGUF reader."""
    model = load_causal_lm(smollm2_dir, device="cpu")
    tokenizer = load_tokenizer(smollm2_dir)
    gguf = smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    with torch.no_grad():
        logits, expected = model(**inputs).logits, reference.eval()(**inputs).logits
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert model.config.tie_word_embeddings and model.config.rope_parameters["rope_theta"] == 100000.0
    assert model.generation_config.pad_token_id != model.generation_config.eos_token_id

    [[answer]] = generate(smollm2_dir, [CHAT], GenerationConfig(greedy=True, max_new_tokens=12, device="cpu"))
    assert "Paris" in answer.text and answer.finished_with_eos


def test_converting_again_keeps_the_converted_checkpoint(smollm2_dir: Path):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns

    assert convert_smollm2(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
