"""DPO with TRL's DPOTrainer straight from preference pairs, on the tiny SmolLM2-shaped model."""

from __future__ import annotations

import json
import random

import pytest

from training.dpo import DPOConfig, train_dpo
from training.models import load_causal_lm, load_tokenizer
from training.policy_io import PolicyTrainingError, response_logprobs
from training.preferences import PreferenceOptions, RankedJudgement, build_preference_dataset
from training.trl_common import TrainingCancelled

WORDS = (
    "apple river stone cloud tiger paper glass mountain candle forest "
    "violin bridge engine garden rocket silver window ladder orange pencil"
).split()
BETA = 0.1


def banana_judgements(n_prompts: int, seed: int = 0) -> list[RankedJudgement]:
    """A simulated labeler who, of two responses of four random words, prefers the one that also says "banana"."""
    rng = random.Random(seed)
    judgements = []
    for i in range(n_prompts):
        texts = [" ".join(rng.choices(WORDS, k=4)) for _ in range(2)]
        words = texts[0].split()
        words.insert(rng.randrange(len(words) + 1), "banana")
        texts[0] = " ".join(words)
        judgements.append(RankedJudgement(
            prompt_id=i,
            prompt_messages=[{"role": "user", "content": f"Say a few words ({i})."}],
            responses={f"{i}-{k}": text for k, text in enumerate(texts)},
            ranking=[[f"{i}-0"], [f"{i}-1"]],
            labeler_id="sim",
        ))
    return judgements


def config_for(model_dir, out_dir, **overrides) -> DPOConfig:
    settings = {"learning_rate": 1e-2, "max_steps": 6, "per_device_train_batch_size": 8, "logging_steps": 3, "seed": 0}
    return DPOConfig(base_model=str(model_dir), output_dir=str(out_dir), beta=BETA, **{**settings, **overrides})


def implicit_rewards(policy_dir, reference_dir, rows) -> tuple[list[float], list[float]]:
    """DPO's implicit reward beta * log(pi / ref) of each pair's chosen and rejected response."""
    tokenizer = load_tokenizer(reference_dir)
    policy, reference = load_causal_lm(policy_dir, "cpu"), load_causal_lm(reference_dir, "cpu")
    prompts = [row["prompt"] for row in rows]
    sides = []
    for side in ("chosen", "rejected"):
        responses = [row[side][0]["content"] for row in rows]
        pi = [float(response_logprobs(policy, tokenizer, p, r).sum()) for p, r in zip(prompts, responses)]
        ref = [float(response_logprobs(reference, tokenizer, p, r).sum()) for p, r in zip(prompts, responses)]
        sides.append([BETA * (p - r) for p, r in zip(pi, ref)])
    return sides[0], sides[1]


@pytest.fixture(scope="module")
def dataset():
    """32 prompts -> 24 training pairs and 8 held-out pairs."""
    return build_preference_dataset(banana_judgements(32), PreferenceOptions(eval_fraction=0.25, seed=0))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, dataset, tmp_path_factory):
    """One seeded LoRA DPO run, with everything on_log received."""
    logs: list[tuple[int, dict]] = []
    out = tmp_path_factory.mktemp("dpo") / "policy"
    result = train_dpo(config_for(tiny_model_dir, out), dataset.train, dataset.eval,
                       on_log=lambda step, metrics: logs.append((step, metrics)))
    return result, logs


# ---------------------------------------------------------------- learning


def test_dpo_raises_the_chosen_over_rejected_margin_on_its_pairs(tiny_model_dir, dataset, trained):
    result, _ = trained
    chosen, rejected = implicit_rewards(result.merged_dir, tiny_model_dir, dataset.train)
    margins = [c - r for c, r in zip(chosen, rejected)]
    accuracy = sum(m > 0 for m in margins) / len(margins)
    # before training the policy is the reference: every implicit reward, and margin, is 0
    assert (len(margins), accuracy) == (24, 1.0), margins
    assert sum(margins) / len(margins) > 0.1
    assert sum(chosen) > 0 > sum(rejected)  # chosen pushed up, rejected pushed down


def test_training_streams_trl_preference_figures_and_the_final_evaluation(trained):
    result, logs = trained
    train_logs = [m for _, m in logs if "loss" in m]
    assert [step for step, m in logs if "loss" in m] == [3, 6]
    assert all({"rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= m.keys()
               for m in train_logs)
    assert train_logs[-1]["loss"] < train_logs[0]["loss"] < 0.6932  # ln 2: the loss at the reference
    assert train_logs[-1]["rewards/margins"] > train_logs[0]["rewards/margins"]
    # held-out pairs: the policy generalises "banana is good" a little
    assert result.metrics["eval_rewards/margins"] > 0
    assert result.metrics["data/eval_pairs"] == 8


# ---------------------------------------------------------------- artifacts


def test_the_saved_policy_loads_and_generates(tiny_model_dir, trained):
    result, _ = trained
    assert (result.adapter_dir / "adapter_config.json").is_file()
    tokenizer, model = load_tokenizer(result.merged_dir), load_causal_lm(result.merged_dir, "cpu")
    prompt = tokenizer.apply_chat_template([[{"role": "user", "content": "Say a few words."}]],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    saved = json.loads((result.output_dir / "dpo_config.json").read_text())
    assert (saved["beta"], saved["loss_type"], saved["use_lora"]) == (BETA, "sigmoid", True)
    assert json.loads((result.output_dir / "metrics.json").read_text())["global_step"] == 6


# ---------------------------------------------------------------- data and control


def test_rows_without_a_rejected_side_are_refused(tiny_model_dir, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hey"}]}]
    with pytest.raises(PolicyTrainingError, match="rejected"):
        train_dpo(config_for(tiny_model_dir, tmp_path / "bad"), rows)


def test_should_stop_cancels_cleanly_and_saves_nothing(tiny_model_dir, dataset, tmp_path):
    with pytest.raises(TrainingCancelled, match="DPO training stopped at step 1"):
        train_dpo(config_for(tiny_model_dir, tmp_path / "cancelled"), dataset.train, should_stop=lambda: True)
    assert not (tmp_path / "cancelled" / "merged").exists()
    assert not (tmp_path / "cancelled" / "adapter").exists()
