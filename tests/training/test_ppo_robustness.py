"""PPO's guards: alarms that stop an unstable run, the reference offset's sample count, left truncation of
long prompts, separate gradient clips, and a checkpoint swap that a crash cannot leave half done."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.toy_policy import build_toy_policy
from tests.training.test_ppo import PROMPTS, config_for, yes_fraction
from training.models import load_tokenizer
from training.ppo import _encode_prompts, train_ppo
from training.ppo_checkpoints import resumable_checkpoint


@pytest.fixture(scope="module")
def toy_policy_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_policy(tiny_model_dir, tmp_path_factory.mktemp("toy") / "policy", PROMPTS, steps=80)


def test_alarms_stop_a_run_with_a_huge_learning_rate_and_say_why(toy_policy_dir: Path, tmp_path: Path):
    # a step this large throws the policy far off its reference in one iteration (KL 0 → over 6 nats here)
    # and it stays off; the KL threshold is set for the toy's scale
    config = config_for(toy_policy_dir, tmp_path / "run", total_iterations=6, learning_rate=1.0, ppo_epochs=8, rollout_batch_size=8,
                        minibatch_size=4, alarm_patience=2, alarm_kl=4.0, reference_samples=8)
    result = train_ppo(config, PROMPTS, yes_fraction)
    assert result.alarm is not None and "2 iterations in a row" in result.alarm
    assert result.iterations < 6 and result.policy_dir is None  # stopped, and no policy to register
    assert any(metrics[key] == 1.0 for metrics in result.history for key in metrics if key.startswith("alarm/"))


def test_a_calm_run_raises_no_alarm_and_clips_policy_and_critic_separately(toy_policy_dir: Path, tmp_path: Path):
    calls: list[int] = []

    def counted(prompts, completions, completion_ids):
        calls.append(len(completions))
        return yes_fraction(prompts, completions, completion_ids)

    config = config_for(toy_policy_dir, tmp_path / "run", total_iterations=1, rollout_batch_size=8, minibatch_size=4, reference_samples=20)
    result = train_ppo(config, PROMPTS, counted)
    assert result.alarm is None and result.policy_dir is not None
    metrics = result.history[0]
    assert metrics["objective/score_offset_samples"] == 24  # three rollout batches: at least 20 samples
    assert calls == [8, 8, 8, 8]  # three for the offset, one for the iteration
    assert {"grad_norm", "grad_norm_critic"} <= metrics.keys() and not any(metrics[f"alarm/{k}"] for k in ("approxkl", "clipfrac", "ratio", "kl", "entropy"))


def test_long_prompts_lose_their_left_end_and_keep_the_assistant_header(toy_policy_dir: Path):
    tokenizer = load_tokenizer(toy_policy_dir)
    prompts = [[{"role": "user", "content": "word " * 200 + "the question?"}], PROMPTS[0]]
    full = _encode_prompts(tokenizer, prompts, torch.device("cpu"))
    cut = _encode_prompts(tokenizer, prompts, torch.device("cpu"), max_tokens=32)
    assert cut["input_ids"].shape[1] == 32 < full["input_ids"].shape[1]
    assert cut["input_ids"][0].tolist() == full["input_ids"][0, -32:].tolist()  # the end of the chat stays
    short = int(cut["attention_mask"][1].sum())
    assert cut["input_ids"][1, -short:].tolist() == full["input_ids"][1, -short:].tolist()  # short prompts untouched


def test_a_crash_in_the_middle_of_a_checkpoint_swap_leaves_one_to_resume(tmp_path: Path):
    checkpoint = tmp_path / "checkpoint"
    assert resumable_checkpoint(checkpoint) is None
    old = tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "trainer_state.pt").write_bytes(b"x")  # the moment after the old one moved aside, before the new one moved in
    assert resumable_checkpoint(checkpoint) == old
    checkpoint.mkdir()
    (checkpoint / "trainer_state.pt").write_bytes(b"y")
    assert resumable_checkpoint(checkpoint) == checkpoint
