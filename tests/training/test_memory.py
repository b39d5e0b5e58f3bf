"""The memory estimate, against numbers worked by hand."""

from __future__ import annotations

from training.memory import estimate_training_memory, lora_parameters


def test_lora_parameters_count_r_times_in_plus_out_on_every_linear_layer():
    # hidden 8, intermediate 16, k/v at half width, r 2: q,o 2*(8+8), k,v 2*(8+4), gate/up/down 3*(8+16) = 32+24+72 = 128
    assert lora_parameters(8, 16, num_layers=3, r=2, kv_fraction=0.5) == 2 * 128 * 3


def test_the_estimate_adds_weights_optimiser_state_and_activations():
    estimate = estimate_training_memory(1000, hidden_size=8, num_layers=2, vocab_size=10, batch_size=2, sequence_length=3,
                                        trainable_parameters=100, models=2)
    assert estimate.weights == 1000 * 4 * 2
    assert estimate.trainable_state == 100 * 12 * 2
    tokens = 6
    assert estimate.activations == (tokens * 8 * 34 * 4 // 2) * 2 * 2 + tokens * 10 * 12
    assert estimate.total == estimate.weights + estimate.trainable_state + estimate.activations


def test_checkpointing_and_bf16_shrink_the_activations():
    kwargs = {"hidden_size": 64, "num_layers": 24, "vocab_size": 100, "batch_size": 4, "sequence_length": 128, "trainable_parameters": 0}
    plain = estimate_training_memory(10**6, **kwargs)
    assert estimate_training_memory(10**6, gradient_checkpointing=True, **kwargs).activations < plain.activations / 4
    half = estimate_training_memory(10**6, weight_dtype="bfloat16", **kwargs)
    assert half.weights == plain.weights / 2 and half.activations < plain.activations


def test_a_checkpoints_shape_comes_from_its_config_and_safetensors_headers(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.byo_models import build_model
    from training.memory import checkpoint_shape

    path = build_model(tmp_path / "gpt2", "gpt2")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert checkpoint_shape(path) == {"parameters": sum(p.numel() for p in model.parameters()), "hidden_size": 32, "num_layers": 2,
                                      "intermediate_size": 128, "vocab_size": model.config.vocab_size}
