"""RLOO with TRL's RLOOTrainer against a rule and against a reward model, on the tiny SmolLM2-shaped model.

A random tiny model samples uniformly from 49k tokens, so no rule has headroom on it. The module
first teaches it, with a short full SFT run, to answer "Name some colours" with a colour word; RLOO
then has to make it say "blue" (about 1 answer in 9 at the start).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from training.models import load_causal_lm, load_tokenizer
from training.reward_scoring import encode, load_reward_model, score
from training.rloo import RLOOConfig, reward_fn_from_reward_model, train_rloo, with_eos_penalty
from training.sft import SFTConfig, train_sft
from training.trl_common import TrainingCancelled

COLOURS = "red blue green yellow purple".split()
MAX_NEW_TOKENS = 4


def colour_prompts(ids) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Name some colours ({i})."}] for i in ids]


def says_blue(prompts, completions, **kwargs) -> list[float]:
    """The rule: 1 if the answer says "blue"."""
    return [float("blue" in completion) for completion in completions]


@torch.no_grad()
def blue_rate(model_dir) -> float:
    """Share of 128 sampled answers (32 unseen prompts x 4, temperature 1, seeded) that say "blue"."""
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir, "cpu")
    prompts = tokenizer.apply_chat_template(colour_prompts(range(200, 232)), add_generation_prompt=True,
                                            padding=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(1)
    out = model.generate(**prompts, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, top_p=1.0,
                         num_return_sequences=4)
    answers = tokenizer.batch_decode(out[:, prompts["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(says_blue(None, answers)) / len(answers)


@pytest.fixture(scope="module")
def colour_policy(tiny_model_dir, tmp_path_factory):
    """The tiny model after 8 full-SFT steps on one-colour answers: it now answers with colour words."""
    rng = random.Random(0)
    rows = [{"messages": [*prompt, {"role": "assistant", "content": rng.choice(COLOURS)}]}
            for prompt in colour_prompts(range(16))]
    out = tmp_path_factory.mktemp("rloo") / "sft"
    config = SFTConfig(base_model=str(tiny_model_dir), output_dir=str(out), use_lora=False, learning_rate=3e-2,
                       max_steps=8, logging_steps=8, seed=0)
    return train_sft(config, rows).merged_dir


def config_for(model_dir, out_dir, **overrides) -> RLOOConfig:
    """8 completions a step (2 prompts x 4), 4 new tokens each."""
    settings = {"learning_rate": 3e-3, "max_steps": 15, "per_device_train_batch_size": 8, "num_generations": 4,
                    "max_completion_length": MAX_NEW_TOKENS, "logging_steps": 5, "seed": 0}
    return RLOOConfig(base_model=str(model_dir), output_dir=str(out_dir), **{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(colour_policy, tmp_path_factory):
    """15 RLOO steps (full fine-tuning) on the rule, with everything on_log received."""
    logs: list[tuple[int, dict]] = []
    out = tmp_path_factory.mktemp("rloo") / "policy"
    result = train_rloo(config_for(colour_policy, out, use_lora=False), colour_prompts(range(100, 164)), says_blue,
                        on_log=lambda step, metrics: logs.append((step, metrics)))
    return result, logs


# ---------------------------------------------------------------- learning


def test_rloo_makes_the_rewarded_word_more_frequent(colour_policy, trained):
    result, _ = trained
    before, after = blue_rate(colour_policy), blue_rate(result.merged_dir)
    assert before < 0.2, before
    assert after > before + 0.15, (before, after)


def test_training_streams_reward_kl_and_completion_figures(trained):
    result, logs = trained
    assert [step for step, m in logs if "reward" in m] == [5, 10, 15]
    figures = {"reward", "kl", "entropy", "rewards/says_blue/mean", "completions/mean_length",
               "completions/clipped_ratio"}
    assert all(figures <= m.keys() for _, m in logs if "reward" in m)
    assert all(0 <= m["completions/mean_length"] <= MAX_NEW_TOKENS for _, m in logs if "reward" in m)
    assert result.metrics["data/prompts"] == 64 and result.metrics["data/dropped"] == 0


def test_the_saved_policy_loads_and_generates(trained):
    result, _ = trained
    assert result.adapter_dir is None  # full fine-tuning
    tokenizer, model = load_tokenizer(result.merged_dir), load_causal_lm(result.merged_dir, "cpu")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(colour_prompts([7]), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    saved = json.loads((result.output_dir / "rloo_config.json").read_text())
    assert (saved["beta"], saved["num_generations"], saved["missing_eos_penalty"]) == (0.05, 4, 1.0)


# ---------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    """A reward-model checkpoint as training.reward saves one: the tiny model with a seeded one-output score head."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    out = tmp_path_factory.mktemp("rloo") / "reward"
    model.save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


def test_the_reward_model_sees_the_generated_tokens_in_its_training_format(reward_model_dir):
    """RLOO hands the reward a completion decoded without special tokens; scoring it with training.reward_scoring.encode
    re-renders the chat template, which gives back exactly the tokens the policy generated, EOS included."""
    model, tokenizer = load_reward_model(reward_model_dir, "cpu")
    prompt = colour_prompts([3])[0]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    generated = [*tokenizer("blue green", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    text = tokenizer.decode(generated, skip_special_tokens=True)  # what RLOO passes on
    scored = encode(tokenizer, prompt, text)
    assert scored == [*prompt_ids, *generated, *tokenizer("\n", add_special_tokens=False)["input_ids"]]

    reward = with_eos_penalty(reward_fn_from_reward_model(reward_model_dir, "cpu"), {tokenizer.eos_token_id}, 1.0)
    cut_off = generated[:-1]  # the same text, but cut at the length limit: no EOS
    got = reward([prompt, prompt], [[{"role": "assistant", "content": text}]] * 2, completion_ids=[generated, cut_off])
    expected = score(model, tokenizer, prompt, [text])[0]
    assert got == pytest.approx([expected, expected - 1.0], abs=1e-5)


def test_a_rule_reward_gets_plain_text_and_the_missing_eos_penalty():
    seen = []

    def rule(prompts, completions, **kwargs):
        seen.append(completions)
        return [1.0, 1.0, None]

    reward = with_eos_penalty(rule, {2}, 0.5)
    prompts = colour_prompts([1, 2, 3])
    completions = [[{"role": "assistant", "content": t}] for t in ("blue", "blue blue", "x")]
    assert reward(prompts, completions, completion_ids=[[16591, 2], [16591, 16591], [87]]) == [1.0, 0.5, None]
    assert seen == [["blue", "blue blue", "x"]]
    assert reward.__name__ == "rule"  # TRL logs rewards/rule/mean


def test_lora_rloo_on_a_reward_model_stops_cleanly_when_asked(colour_policy, reward_model_dir, tmp_path):
    calls = []
    reward_model = reward_fn_from_reward_model(reward_model_dir, "cpu")

    def recorded(prompts, completions, **kwargs):
        calls.append(completions)
        return reward_model(prompts, completions)

    with pytest.raises(TrainingCancelled, match="RLOO training stopped at step 1"):
        train_rloo(config_for(colour_policy, tmp_path / "cancelled"), colour_prompts(range(8)), recorded,
                   should_stop=lambda: True)
    assert len(calls) == 1 and len(calls[0]) == 8 and all(isinstance(c, str) for c in calls[0])
    assert not (tmp_path / "cancelled" / "merged").exists()
