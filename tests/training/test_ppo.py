"""PPO on a tiny chat model with a rule-based reward: it learns, repeats itself, resumes, keeps its reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.toy_policy import build_toy_policy
from tests.toy_policy import yes_fraction as share_of_yes
from training import reward_scoring
from training.models import load_tokenizer
from training.ppo import PPOConfig, PPOResult, reward_fn_from_checkpoint, train_ppo

PROMPTS = [[{"role": "user", "content": q}] for q in ("Say something.", "Any words?", "Talk to me.", "What now?")]
TIMING_KEYS = {"tokens_per_s"}


@pytest.fixture(scope="module")
def toy_policy_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model taught to answer with 1-5 words of WORDS, then EOS (see tests/toy_policy.py)."""
    return build_toy_policy(tiny_model_dir, tmp_path_factory.mktemp("toy") / "policy", PROMPTS, steps=80)


def yes_fraction(prompts, completions, completion_ids) -> torch.Tensor:
    """The rule: the share of the reply's words that are "yes"."""
    return torch.tensor([share_of_yes(c) for c in completions])


def config_for(policy_dir: Path, output_dir: Path, **overrides) -> PPOConfig:
    settings = {
        "policy_path": str(policy_dir),
        "output_dir": str(output_dir),
        "lora_r": 8,
        "lora_alpha": 16,
        "learning_rate": 3e-3,  # a 64-wide model with LoRA takes a far larger step than a real one
        "total_iterations": 3,
        "rollout_batch_size": 16,
        "minibatch_size": 8,
        "temperature": 0.7,
        "max_new_tokens": 8,
        "save_every": 100,
    }
    return PPOConfig(**{**settings, **overrides})


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in metrics.items() if k not in TIMING_KEYS} for metrics in history]


def last_logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer.apply_chat_template(PROMPTS, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True)
    positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(**batch, position_ids=positions).logits[:, -1]


# ---------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def learning_run(toy_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PPOResult:
    config = config_for(toy_policy_dir, tmp_path_factory.mktemp("learn") / "run", total_iterations=30)
    return train_ppo(config, PROMPTS, yes_fraction)


def test_ppo_raises_the_score_of_a_rule_based_reward(learning_run: PPOResult):
    scores = [m["objective/scores"] for m in learning_run.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-10:]) / 10
    assert len(scores) == 30 and not learning_run.stopped
    assert last > first + 0.1, f"mean score {first:.3f} over the first 5 iterations, {last:.3f} over the last 10"


def test_the_first_minibatch_ratio_is_one_every_iteration(learning_run: PPOResult):
    # old log-probs come from the logits the rollout sampled from (cached decoding): the update's forward pass
    # gives the same numbers up to fp32 rounding
    for metrics in learning_run.history:
        assert metrics["val/ratio_first_minibatch"] == pytest.approx(1.0, abs=1e-4)


def test_bf16_autocast_learns_too_and_keeps_the_weights_in_fp32(toy_policy_dir: Path, tmp_path: Path, monkeypatch):
    # on by default on a bf16 GPU; forced here on the CPU, which runs the same autocast path
    seen = set()
    linear = torch.nn.functional.linear

    def spy(input, weight, bias=None):
        out = linear(input, weight, bias)
        seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    result = train_ppo(config_for(toy_policy_dir, tmp_path / "run", total_iterations=30, bf16=True), PROMPTS, yes_fraction)
    monkeypatch.undo()
    assert torch.bfloat16 in seen  # the forward passes ran in bf16
    scores = [m["objective/scores"] for m in result.history]
    assert sum(scores[-10:]) / 10 > sum(scores[:5]) / 5 + 0.1, scores  # as test_ppo_raises_the_score_of_a_rule_based_reward
    for metrics in result.history:  # the old log-probs came from the same bf16 passes as the update
        assert metrics["val/ratio_first_minibatch"] == pytest.approx(1.0, abs=1e-3)
    trained = AutoModelForCausalLM.from_pretrained(result.policy_dir)
    assert all(p.dtype == torch.float32 for p in trained.parameters())


def test_training_leaves_the_reference_untouched(learning_run: PPOResult, toy_policy_dir: Path):
    tokenizer = load_tokenizer(toy_policy_dir)
    original = last_logits(AutoModelForCausalLM.from_pretrained(toy_policy_dir).eval(), tokenizer)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_policy_dir), learning_run.adapter_dir).eval()
    with policy.disable_adapter():
        torch.testing.assert_close(last_logits(policy, tokenizer), original, rtol=0, atol=0)
    trained = last_logits(policy, tokenizer)
    assert not torch.allclose(trained, original, atol=1e-3)
    # the merged model is base + adapter: had training touched the base weights, it would not match
    merged = AutoModelForCausalLM.from_pretrained(learning_run.policy_dir).eval()
    torch.testing.assert_close(last_logits(merged, load_tokenizer(learning_run.policy_dir)), trained, rtol=1e-4, atol=1e-4)


def test_a_finished_run_leaves_its_artifacts_in_the_output_dir(learning_run: PPOResult):
    out = learning_run.output_dir
    assert learning_run.adapter_dir == out / "adapter" and learning_run.policy_dir == out / "policy"
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "checkpoint/trainer_state.pt", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 30


# ---------------------------------------------------------------- determinism and resuming


@pytest.fixture(scope="module")
def three_iterations(toy_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PPOResult:
    return train_ppo(config_for(toy_policy_dir, tmp_path_factory.mktemp("three") / "run"), PROMPTS, yes_fraction)


def test_the_same_seed_gives_the_same_metrics(three_iterations: PPOResult, toy_policy_dir: Path, tmp_path: Path):
    again = train_ppo(config_for(toy_policy_dir, tmp_path / "again"), PROMPTS, yes_fraction)
    assert without_timing(again.history) == without_timing(three_iterations.history)


def test_a_stopped_run_resumes_where_it_stopped_and_ends_where_an_unbroken_one_does(
    three_iterations: PPOResult, toy_policy_dir: Path, tmp_path: Path
):
    config = config_for(toy_policy_dir, tmp_path / "run")
    logged: list[int] = []
    stopped = train_ppo(config, PROMPTS, yes_fraction, on_log=lambda i, m: logged.append(i), should_stop=lambda: len(logged) >= 1)
    assert stopped.stopped and stopped.iterations == 1 and stopped.policy_dir is None
    resumed = train_ppo(config, PROMPTS, yes_fraction, on_log=lambda i, m: logged.append(i))
    assert logged == [0, 1, 2]
    assert not resumed.stopped and resumed.iterations == 3
    assert without_timing(resumed.history) == without_timing(three_iterations.history)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_reusing_the_rollouts_logits_and_scoring_in_one_batch_keep_the_maths(
    three_iterations: PPOResult, toy_policy_dir: Path, tmp_path: Path, monkeypatch
):
    # the way it was: old log-probs from a second forward pass over the rollout, scored minibatch by minibatch
    import training.ppo

    monkeypatch.setattr(training.ppo, "_sampled_logprobs", lambda *args: None)
    recomputed = train_ppo(config_for(toy_policy_dir, tmp_path / "run", forward_batch_size=8), PROMPTS, yes_fraction)
    assert len(recomputed.history) == len(three_iterations.history) == 3
    for before, after in zip(without_timing(recomputed.history), without_timing(three_iterations.history)):
        assert after.keys() == before.keys()
        for key, value in before.items():
            # a clip fraction counts tokens past a boundary: a rounding-sized change moves one token across it
            tolerance = {"abs": 0.03} if "clipfrac" in key else {"rel": 1e-4, "abs": 1e-5}
            assert after[key] == pytest.approx(value, **tolerance), key


# ---------------------------------------------------------------- rewards


def zero_reward(prompts, completions, completion_ids) -> torch.Tensor:
    return torch.zeros(len(completions))


def test_a_completion_without_eos_is_penalised(toy_policy_dir: Path, tmp_path: Path):
    # one new token: only a policy that stops at once ends its completion; every other one is cut.
    # The chat-formatted prompt holds EOS too: checking the whole sequence would penalise none.
    config = config_for(
        toy_policy_dir, tmp_path / "run", total_iterations=1, max_new_tokens=1, missing_eos_penalty=2.0, normalize_scores=False
    )
    metrics = train_ppo(config, PROMPTS, zero_reward).history[0]
    cut = 1 - metrics["val/eos_rate"]
    assert cut > 0.5
    assert metrics["objective/missing_eos_penalty"] == pytest.approx(2.0 * cut)
    # the first rollout comes from the reference itself (zero up to rounding: the old log-probs are the decoding's)
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["objective/rlhf_reward"] == pytest.approx(-2.0 * cut)


def test_completions_that_end_are_not_penalised(toy_policy_dir: Path, tmp_path: Path):
    config = config_for(toy_policy_dir, tmp_path / "run", total_iterations=1, missing_eos_penalty=2.0, normalize_scores=False)
    metrics = train_ppo(config, PROMPTS, zero_reward).history[0]
    assert metrics["val/eos_rate"] > 0.5
    assert metrics["objective/missing_eos_penalty"] == pytest.approx(2.0 * (1 - metrics["val/eos_rate"]))


@pytest.fixture(scope="module")
def reward_model_dir(toy_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("reward") / "model"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(toy_policy_dir, num_labels=1)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(out_dir)
    load_tokenizer(toy_policy_dir).save_pretrained(out_dir)
    return out_dir


def test_a_reward_checkpoint_scores_the_chat_formatted_conversation(reward_model_dir: Path):
    reward_fn = reward_fn_from_checkpoint(reward_model_dir, device="cpu")
    prompts = [PROMPTS[0], PROMPTS[1]]
    completions = [" yes", " cat dog red blue one"]
    scores = reward_fn(prompts, completions, [[], []])
    tokenizer = load_tokenizer(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1).eval()
    for prompt, completion, score in zip(prompts, completions, scores):
        # what TRL's RewardTrainer trains on: the chat template over prompt + reply, unpadded
        ids = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], return_tensors="pt", return_dict=True)
        with torch.no_grad():
            assert score.item() == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
    assert scores.shape == (2,) and scores[0] != scores[1]


def test_ppo_scores_as_the_reward_model_scores_everywhere_else(reward_model_dir: Path):
    # one loader and one input format for PPO, RLOO, best-of-n and compare()
    model, tokenizer = reward_scoring.load_reward_model(reward_model_dir, "cpu")
    completions = [" yes", " cat dog red blue one", ""]
    prompts = [PROMPTS[2]] * len(completions)
    from_ppo = reward_fn_from_checkpoint(reward_model_dir, device="cpu", batch_size=2)(prompts, completions, [[]] * 3)
    # 1e-5: batches of 2 against one of 3 pad differently, which moves float32 sums in the last digits;
    # another input format would move the scores by far more
    assert from_ppo.tolist() == pytest.approx(reward_scoring.score(model, tokenizer, PROMPTS[2], completions), rel=1e-5, abs=1e-5)


def test_ppo_runs_with_a_reward_model_and_a_critic_initialised_from_it(reward_model_dir: Path, toy_policy_dir: Path, tmp_path: Path):
    config = config_for(toy_policy_dir, tmp_path / "run", total_iterations=1, reward_model_path=str(reward_model_dir))
    result = train_ppo(config, PROMPTS, reward_fn_from_checkpoint(reward_model_dir, device="cpu"))
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())
    assert (result.policy_dir / "config.json").is_file()
