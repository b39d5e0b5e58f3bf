"""Supervised fine-tuning with TRL's SFTTrainer, on the tiny SmolLM2-shaped model."""

from __future__ import annotations

import json
import random

import pytest

from training.models import load_causal_lm, load_tokenizer
from training.policy_io import PolicyTrainingError, response_logprobs
from training.sft import SFTConfig, chosen_to_sft_rows, train_sft
from training.trl_common import TrainingCancelled

COLOURS = "red blue green yellow purple".split()


def colour_rows(n: int, seed: int = 0) -> list[dict]:
    """Chats whose answer is three colour words: a pattern the random tiny model can pick up in a few steps."""
    rng = random.Random(seed)
    return [
        {"messages": [{"role": "user", "content": f"Name some colours ({i})."},
                      {"role": "assistant", "content": " ".join(rng.choices(COLOURS, k=3))}]}
        for i in range(n)
    ]


def config_for(model_dir, out_dir, **overrides) -> SFTConfig:
    settings = {"learning_rate": 1e-2, "max_steps": 8, "per_device_train_batch_size": 8, "logging_steps": 2, "seed": 0}
    return SFTConfig(base_model=str(model_dir), output_dir=str(out_dir), **{**settings, **overrides})


def mean_logprob(model_dir, rows) -> float:
    """Mean over rows of log p(answer | prompt), the answer's end of turn included."""
    model, tokenizer = load_causal_lm(model_dir, "cpu"), load_tokenizer(model_dir)
    scores = [float(response_logprobs(model, tokenizer, r["messages"][:-1], r["messages"][-1]["content"]).sum()) for r in rows]
    return sum(scores) / len(scores)


@pytest.fixture(scope="module")
def rows():
    return colour_rows(16)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, rows, tmp_path_factory):
    """SFT with LoRA (the default), 8 steps, with everything on_log received."""
    logs: list[tuple[int, dict]] = []
    out = tmp_path_factory.mktemp("sft") / "lora"
    result = train_sft(config_for(tiny_model_dir, out), rows, on_log=lambda step, m: logs.append((step, m)))
    return result, logs


# ---------------------------------------------------------------- learning


def test_sft_lowers_the_loss_and_makes_the_trained_answers_more_likely(tiny_model_dir, rows, lora_run):
    result, logs = lora_run
    losses = [m["loss"] for _, m in logs if "loss" in m]
    assert [step for step, m in logs if "loss" in m] == [2, 4, 6, 8]
    assert losses[-1] < losses[0] - 0.2
    before, after = mean_logprob(tiny_model_dir, rows), mean_logprob(result.merged_dir, rows)
    # LoRA cannot touch the (tied) embeddings, so on a random model each token gains at most ~1 nat
    assert after > before + 1.0, (before, after)


def test_full_fine_tuning_learns_faster_and_saves_no_adapter(tiny_model_dir, rows, tmp_path):
    result = train_sft(config_for(tiny_model_dir, tmp_path / "full", use_lora=False, learning_rate=3e-2), rows)
    assert result.adapter_dir is None and not (tmp_path / "full" / "adapter").exists()
    before, after = mean_logprob(tiny_model_dir, rows), mean_logprob(result.merged_dir, rows)
    assert after > before + 20.0, (before, after)  # ~4 answer tokens, from ~-10.8 nats each


# ---------------------------------------------------------------- artifacts


def test_the_run_saves_an_adapter_and_a_merged_policy_that_generates(tiny_model_dir, lora_run):
    result, _ = lora_run
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert (result.adapter_dir / "tokenizer_config.json").is_file()

    tokenizer = load_tokenizer(result.merged_dir)  # raises if pad == EOS
    model = load_causal_lm(result.merged_dir, "cpu")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template([[{"role": "user", "content": "Name some colours."}]],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_the_run_records_its_config_and_metrics(lora_run):
    result, _ = lora_run
    saved = json.loads((result.output_dir / "sft_config.json").read_text())
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert saved["use_lora"] is True and saved["resolved"]["bf16"] is False
    assert metrics["global_step"] == result.global_step == 8
    assert metrics["metrics"]["data/rows"] == 16 and metrics["metrics"]["data/dropped"] == 0
    assert [entry["step"] for entry in metrics["log_history"] if "loss" in entry] == [2, 4, 6, 8]
    assert {"train/loss", "train/runtime_s", "mean_token_accuracy"} <= result.metrics.keys()


# ---------------------------------------------------------------- data and control


def test_chosen_responses_become_sft_rows_winners_only_by_default():
    prompt = [{"role": "user", "content": "Pick one."}]
    a, b, c = ([{"role": "assistant", "content": t}] for t in ("best", "middle", "worst"))
    pairs = [{"prompt": prompt, "chosen": a, "rejected": b}, {"prompt": prompt, "chosen": a, "rejected": c},
             {"prompt": prompt, "chosen": b, "rejected": c}]
    assert chosen_to_sft_rows(pairs) == [{"messages": prompt + a}]
    assert chosen_to_sft_rows(pairs, best_only=False) == [{"messages": prompt + a}, {"messages": prompt + b}]


def test_rows_must_end_with_an_assistant_message(tiny_model_dir, tmp_path):
    bad = [{"messages": [{"role": "user", "content": "Hi"}]}]
    with pytest.raises(PolicyTrainingError, match="assistant"):
        train_sft(config_for(tiny_model_dir, tmp_path / "bad"), bad)


def test_should_stop_cancels_cleanly_and_saves_nothing(tiny_model_dir, rows, tmp_path):
    asked = []
    with pytest.raises(TrainingCancelled, match="step 1"):
        train_sft(config_for(tiny_model_dir, tmp_path / "cancelled"), rows,
                  should_stop=lambda: asked.append(1) or True)
    assert len(asked) == 1
    assert not (tmp_path / "cancelled" / "merged").exists()
