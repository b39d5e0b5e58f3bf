"""Reward-model training from stored preferences, on the tiny SmolLM2-shaped model."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from training.preferences import PreferenceOptions, RankedJudgement, build_preference_dataset
from training.reward import train_reward_model
from training.reward_config import RewardConfig, RewardTrainingError
from training.reward_metrics import calibration, pairwise_accuracy
from training.reward_scoring import encode, load_reward_model, score
from training.reward_trainer import build_trainer, pairwise_loss
from training.trl_common import TrainingCancelled

WORDS = (
    "apple river stone cloud tiger paper glass mountain candle forest "
    "violin bridge engine garden rocket silver window ladder orange pencil"
).split()


def marker_judgements(n_prompts: int, labeler: str = "sim", flip: bool = False, weight: float = 1.0, seed: int = 0):
    """A simulated labeler who prefers the one response of three that says "banana" (and ties the others).

    Responses are six random words; flip=True ranks the banana response last instead.
    """
    rng = random.Random(seed)
    judgements = []
    for i in range(n_prompts):
        texts = [" ".join(rng.choices(WORDS, k=6)) for _ in range(3)]
        words = texts[0].split()
        words.insert(rng.randrange(len(words) + 1), "banana")
        texts[0] = " ".join(words)
        ranking = [[f"{i}-0"], [f"{i}-1", f"{i}-2"]]
        judgements.append(RankedJudgement(
            prompt_id=i,
            prompt_messages=[{"role": "user", "content": f"Say a few words ({i})."}],
            responses={f"{i}-{k}": text for k, text in enumerate(texts)},
            ranking=ranking[::-1] if flip else ranking,
            labeler_id=labeler,
            weight=weight,
        ))
    return judgements


def config_for(model_dir, out_dir, **overrides) -> RewardConfig:
    """Seeded LoRA settings that learn the marker preference on the tiny model in about a second."""
    settings = {"learning_rate": 1e-3, "num_train_epochs": 3, "logging_steps": 5, "seed": 0}
    return RewardConfig(base_model=str(model_dir), output_dir=str(out_dir), **{**settings, **overrides})


@pytest.fixture(scope="module")
def marker_dataset():
    """48 prompts -> 72 training pairs and 24 held-out pairs (ties between the non-banana responses give none)."""
    return build_preference_dataset(marker_judgements(48), PreferenceOptions(eval_fraction=0.25, seed=0))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, marker_dataset, tmp_path_factory):
    """One seeded training run on the marker preference, with everything on_log received."""
    logs: list[tuple[int, dict]] = []
    out = tmp_path_factory.mktemp("reward") / "rm"
    result = train_reward_model(
        config_for(tiny_model_dir, out), marker_dataset.train, marker_dataset.eval,
        on_log=lambda step, metrics: logs.append((step, metrics)),
    )
    return result, logs


# ---------------------------------------------------------------- learning


def test_the_reward_model_learns_a_marker_word_preference(trained):
    result, _ = trained
    assert result.metrics["eval/accuracy"] >= 0.9
    assert result.metrics["eval/mean_margin"] > 0.5
    assert (result.train_pairs, result.eval_pairs, result.dropped_train, result.dropped_eval) == (72, 24, 0, 0)


def test_training_streams_loss_accuracy_and_margin(trained):
    _, logs = trained
    steps = [step for step, metrics in logs if "loss" in metrics]
    assert steps == [5, 10, 15, 20, 25]
    training_logs = [metrics for _, metrics in logs if "loss" in metrics]
    assert all({"loss", "accuracy", "margin", "learning_rate"} <= metrics.keys() for metrics in training_logs)
    first, last = training_logs[0], training_logs[-1]
    assert last["loss"] < first["loss"]


def test_calibration_bins_cover_every_held_out_pair(trained):
    result, _ = trained
    assert sum(b["count"] for b in result.calibration) == result.eval_pairs == len(result.chosen_scores)
    assert 0.0 <= result.metrics["eval/ece"] <= 0.5
    assert [b["lower"] for b in result.calibration][:2] == [0.5, 0.55]


def test_the_checkpoint_records_its_config_metrics_and_dataset_hash(trained, marker_dataset):
    result, _ = trained
    saved_config = json.loads((result.output_dir / "reward_config.json").read_text())
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    scores = json.loads((result.output_dir / "eval_scores.json").read_text())
    assert saved_config["learning_rate"] == 1e-3 and saved_config["resolved"]["bf16"] is False
    assert metrics["dataset_hash"] == result.dataset_hash == marker_dataset.content_hash
    assert metrics["metrics"]["eval/accuracy"] == result.metrics["eval/accuracy"]
    assert scores["chosen"] == result.chosen_scores


def test_the_saved_model_scores_as_the_trained_one_did(trained, marker_dataset):
    result, _ = trained
    model, tokenizer = load_reward_model(result.output_dir, device="cpu")
    row = marker_dataset.eval[0]
    responses = [row["chosen"][0]["content"], row["rejected"][0]["content"]]
    chosen, rejected = score(model, tokenizer, row["prompt"], responses)
    assert chosen == pytest.approx(result.chosen_scores[0], abs=1e-4)
    assert rejected == pytest.approx(result.rejected_scores[0], abs=1e-4)


def test_a_new_prompt_scores_the_marker_higher(trained):
    result, _ = trained
    model, tokenizer = load_reward_model(result.output_dir, device="cpu")
    prompt = [{"role": "user", "content": "Name a fruit, please."}]
    with_marker, without = score(model, tokenizer, prompt, ["tiger banana window paper", "tiger forest window paper"])
    assert with_marker > without


def test_calibration_against_numbers_worked_by_hand():
    # p = sigmoid(2) = 0.881 (right), sigmoid(0) = 0.5 (a coin: wrong), sigmoid(-1) = 0.269 (wrong, confidence 0.731)
    ece, bins = calibration([2.0, 0.0, -1.0], [0.0, 0.0, 0.0], n_bins=5)
    assert [b["count"] for b in bins] == [1, 0, 1, 1, 0]
    assert [b["accuracy"] for b in bins] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert ece == pytest.approx((1 - 0.880797) / 3 + 0.5 / 3 + 0.731059 / 3, abs=1e-5)
    assert pairwise_accuracy([2.0, 0.0, -1.0], [0.0, 0.0, 0.0]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- format


def test_training_and_scoring_see_the_same_tokens(tiny_model_dir, marker_dataset, tmp_path):
    trainer = build_trainer(config_for(tiny_model_dir, tmp_path), marker_dataset.train[:8], marker_dataset.eval[:2])
    tokenizer = trainer.processing_class
    for i, row in enumerate(marker_dataset.train[:8]):
        trained_on = trainer.train_dataset[i]
        assert trained_on["chosen_ids"] == encode(tokenizer, row["prompt"], row["chosen"][0]["content"])
        assert trained_on["rejected_ids"] == encode(tokenizer, row["prompt"], row["rejected"][0]["content"])
    # the end of turn is in the sequence, and padding is not EOS
    assert tokenizer.eos_token_id in trained_on["chosen_ids"]
    assert trainer.model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_pairs_longer_than_max_length_are_dropped_and_counted(tiny_model_dir, marker_dataset, tmp_path):
    rows = [dict(r) for r in marker_dataset.train]
    for row in rows[:5]:
        row["rejected"] = [{"role": "assistant", "content": "very long " * 40}]
    config = config_for(tiny_model_dir, tmp_path, max_length=80, num_train_epochs=1)
    result = train_reward_model(config, rows, marker_dataset.eval)
    assert (result.dropped_train, result.train_pairs, result.dropped_eval) == (5, 67, 0)


def test_no_pair_within_max_length_is_an_error(tiny_model_dir, marker_dataset, tmp_path):
    with pytest.raises(RewardTrainingError, match="max_length=10"):
        config = config_for(tiny_model_dir, tmp_path, max_length=10)
        train_reward_model(config, marker_dataset.train, marker_dataset.eval)


# ---------------------------------------------------------------- weights


def test_pairwise_loss_against_numbers_worked_by_hand():
    chosen, rejected = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    log2, softplus_minus1 = math.log(2), math.log(1 + math.exp(-1))  # -log sigmoid(0), -log sigmoid(1)
    assert pairwise_loss(chosen, rejected).item() == pytest.approx((log2 + softplus_minus1) / 2)
    assert pairwise_loss(chosen, rejected, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(log2 / 2)
    assert pairwise_loss(chosen, rejected, margin=torch.tensor([0.0, 1.0])).item() == pytest.approx(log2)


def test_down_weighted_contradictions_do_not_stop_learning(tiny_model_dir, tmp_path):
    # mallory states the opposite of every pair, at 1/20 of the weight: unweighted, the data has no signal
    judgements = marker_judgements(48) + marker_judgements(48, labeler="mallory", flip=True, weight=0.05)
    dataset = build_preference_dataset(judgements, PreferenceOptions(eval_fraction=0.25))
    honest_eval = [row for row in dataset.eval if row["weight"] == 1.0]
    result = train_reward_model(config_for(tiny_model_dir, tmp_path), dataset.train, honest_eval)
    assert result.train_pairs == 144
    assert result.metrics["eval/accuracy"] >= 0.9


# ---------------------------------------------------------------- saving, loading, stopping, failing


def test_an_adapter_only_checkpoint_loads_and_scores_the_same(tiny_model_dir, marker_dataset, tmp_path):
    result = train_reward_model(
        config_for(tiny_model_dir, tmp_path / "rm", merge_lora=False, num_train_epochs=1),
        marker_dataset.train, marker_dataset.eval,
    )
    assert (result.output_dir / "adapter_config.json").is_file()
    model, tokenizer = load_reward_model(result.output_dir, device="cpu")
    row = marker_dataset.eval[0]
    (chosen,) = score(model, tokenizer, row["prompt"], [row["chosen"][0]["content"]])
    assert chosen == pytest.approx(result.chosen_scores[0], abs=1e-4)


def test_full_fine_tuning_trains_and_saves_a_loadable_model(tiny_model_dir, marker_dataset, tmp_path):
    result = train_reward_model(
        config_for(tiny_model_dir, tmp_path / "rm", use_lora=False, num_train_epochs=1),
        marker_dataset.train, marker_dataset.eval,
    )
    model, _ = load_reward_model(result.output_dir, device="cpu")
    assert result.global_step == 9 and model.config.num_labels == 1


def test_should_stop_ends_training_after_the_current_step_and_saves_nothing(tiny_model_dir, marker_dataset, tmp_path):
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) >= 2

    with pytest.raises(TrainingCancelled, match="step 2"):
        config = config_for(tiny_model_dir, tmp_path)
        train_reward_model(config, marker_dataset.train, marker_dataset.eval, should_stop=should_stop)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "metrics.json").exists()


def test_a_base_model_that_does_not_exist_is_a_reward_training_error(marker_dataset, tmp_path):
    with pytest.raises(RewardTrainingError, match="no checkpoint there"):
        config = config_for(tmp_path / "nowhere", tmp_path / "out")
        train_reward_model(config, marker_dataset.train, marker_dataset.eval)


def test_a_broken_base_model_is_a_reward_training_error(marker_dataset, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(RewardTrainingError, match="does not load"):
        train_reward_model(config_for(tmp_path / "base", tmp_path / "out"), marker_dataset.train, marker_dataset.eval)
