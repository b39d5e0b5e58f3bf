"""RLOO (REINFORCE leave-one-out) on the policy: a thin wrapper around TRL's RLOOTrainer.

Data in: prompts (chat message lists) and a reward function. Each step samples num_generations
completions per prompt, scores them, subtracts beta * (sequence KL to the reference) and uses the
mean reward of the other completions of the same prompt as the baseline (Ahmadian et al. 2024).
The reference is the base checkpoint: the same model with adapters disabled under LoRA.

Reward functions. A plain callable `reward_fn(prompts, completions, **kwargs) -> list[float]`:
`prompts[i]` is the chat (list of messages), `completions[i]` the response as plain text (decoded
with special tokens skipped, so without its end of turn), `kwargs["completion_ids"][i]` its tokens.
`reward_fn_from_reward_model(path)` builds one from a reward model saved by `training.reward`,
scoring prompt + response exactly as it was trained (`training.reward_scoring.score`: the chat template
re-adds the end of turn). Because that hides whether the policy actually stopped, a completion that
ends without EOS (cut at max_completion_length) gets `missing_eos_penalty` subtracted here:
TRL's RLOO has no such penalty, and without it the policy drifts into run-on text (RLHF-NOTES).

Artifact out: see `training.policy_io` (adapter/, merged/, rloo_config.json, metrics.json).

Command line, one process or several (the batch size is per process; only rank 0 writes):
`accelerate launch --multi_gpu --num_processes 8 -m training.rloo --config run.json`, the run file
holding the config's fields and the data's paths (`training.launch.write_run_file`; see `main`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BatchEncoding, PreTrainedTokenizerBase, TrainerCallback
from trl import RLOOConfig as TRLRLOOConfig
from trl import RLOOTrainer
from trl.trainer.utils import get_callable_name

from training.launch import print_log, print_result, read_run_file
from training.lora import lora_config
from training.policy_io import (
    PolicyConfig,
    PolicyResult,
    PolicyTrainingError,
    StreamAndStop,
    load_policy,
    run_trainer,
    save_policy,
    trl_common_args,
)
from training.preferences import read_jsonl
from training.reward_scoring import load_reward_model, score

__all__ = ["RLOOConfig", "RewardFn", "build_trainer", "reward_fn_from_reward_model", "train_rloo"]

Messages = list[dict]
RewardFn = Callable[..., Sequence[float | None]]  # None: unscorable, TRL leaves it out


@dataclass
class RLOOConfig(PolicyConfig):
    """One RLOO run (the shared fields are documented on PolicyConfig)."""

    learning_rate: float = 3e-5
    """Peak AdamW learning rate (LoRA; about 3e-6 for full fine-tuning)."""
    per_device_train_batch_size: int = 8
    """Completions (not prompts) per device per step; a multiple of num_generations."""
    num_generations: int = 4
    """Completions sampled per prompt (k in RLOO; at least 2)."""
    max_completion_length: int = 128
    """New tokens per completion; a completion cut here has no EOS and is penalised."""
    max_prompt_length: int | None = 1024
    """Prompts longer than this many tokens are dropped before training (TRL's RLOO would not cut them)."""
    temperature: float = 1.0
    """Sampling temperature (top_k=0, top_p=1: plain sampling); log-probs use the same temperature."""
    beta: float = 0.05
    """KL coefficient: beta * sum over tokens of (log pi - log ref) is subtracted from each reward."""
    num_iterations: int = 1
    """Updates per sampled batch (>1 reuses it with the clipped ratio)."""
    epsilon: float = 0.2
    """Clip range of the probability ratio when num_iterations > 1."""
    normalize_advantages: bool = False
    """Whiten the advantages per generation batch."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the reward of a completion that does not end with EOS; None: no penalty."""
    disable_dropout: bool = True
    """Dropout off in the policy, so sampling-time and training-time log-probs agree."""


# ---------------------------------------------------------------- rewards


def reward_fn_from_reward_model(
    path: str | Path, device: str | torch.device | None = None, batch_size: int = 16
) -> RewardFn:
    """A reward function scoring with the reward model saved at `path` (merged or adapter), in its training format.

    Completions are plain text; each is rendered as prompt + assistant message with the chat template,
    as `training.reward_scoring.encode` does, so the end of turn is there as in training.
    """
    model, tokenizer = load_reward_model(path, device)

    def reward_model(prompts: Sequence[Messages], completions: Sequence[str], **kwargs) -> list[float | None]:
        scores: list[float | None] = [None] * len(completions)
        for prompt, indices in _group_by_prompt(prompts).items():  # RLOO's k completions share a prompt
            values = score(model, tokenizer, json.loads(prompt), [completions[i] for i in indices], batch_size)
            for i, value in zip(indices, values):
                scores[i] = value
        return scores

    return reward_model


def _group_by_prompt(prompts: Sequence[Messages]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(json.dumps(prompt, sort_keys=True), []).append(i)
    return groups


def eos_ids(model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends a completion: the tokenizer's EOS and the generation config's (as TRL stops on)."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return {tokenizer.eos_token_id, *ids}


def with_eos_penalty(reward_fn: RewardFn, stop_ids: set[int], penalty: float | None) -> Callable[..., list[float | None]]:
    """TRL's reward-function interface around reward_fn: plain-text completions, minus penalty when no EOS."""

    def reward(prompts, completions, completion_ids, **kwargs) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rewards = [None if r is None else float(r)  # None: unscorable, TRL leaves it out
                   for r in reward_fn(prompts, texts, completion_ids=completion_ids, **kwargs)]
        if penalty:
            # the completion's own last token: the prompt's template tokens must not count (RLHF-NOTES)
            rewards = [r - penalty if r is not None and (not ids or ids[-1] not in stop_ids) else r
                       for r, ids in zip(rewards, completion_ids, strict=True)]
        return rewards

    reward.__name__ = get_callable_name(reward_fn)  # TRL names the figures after it: rewards/<name>/mean
    return reward


# ---------------------------------------------------------------- training


def prompts_to_dataset(
    prompts: Sequence[Messages], tokenizer: PreTrainedTokenizerBase, max_prompt_length: int | None
) -> tuple[Dataset, int]:
    """The prompt column RLOOTrainer reads, over-long prompts dropped; returns (dataset, dropped)."""
    for i, prompt in enumerate(prompts):
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise PolicyTrainingError(f"prompt {i} must be a non-empty list of chat messages")
    kept = [list(p) for p in prompts if max_prompt_length is None or _prompt_length(tokenizer, p) <= max_prompt_length]
    return Dataset.from_dict({"prompt": kept}), len(prompts) - len(kept)


def _prompt_length(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> int:
    encoded = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns
    return len(encoded["input_ids"])


def build_trainer(
    config: RLOOConfig,
    prompts: Sequence[Messages],
    reward_fn: RewardFn,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[RLOOTrainer, int]:
    """TRL's RLOOTrainer on the base policy with reward_fn (EOS penalty added); returns (trainer, dropped prompts)."""
    model, tokenizer = load_policy(config.base_model, config.quantize, config.gradient_checkpointing)
    dataset, dropped = prompts_to_dataset(prompts, tokenizer, config.max_prompt_length)
    if len(dataset) == 0:
        raise PolicyTrainingError(f"no prompts to train on ({dropped} longer than {config.max_prompt_length} tokens)")
    args = TRLRLOOConfig(
        **trl_common_args(config),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_k=0,
        top_p=1.0,
        beta=config.beta,
        num_iterations=config.num_iterations,
        epsilon=config.epsilon,
        normalize_advantages=config.normalize_advantages,
        disable_dropout=config.disable_dropout,
    )
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=with_eos_penalty(reward_fn, eos_ids(model, tokenizer), config.missing_eos_penalty),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM") if config.use_lora else None,
        callbacks=list(callbacks),
    )
    return trainer, dropped


def train_rloo(
    config: RLOOConfig,
    prompts: Sequence[Messages],
    reward_fn: RewardFn,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PolicyResult:
    """Optimise the base policy with RLOO against reward_fn on the prompts and save it to config.output_dir.

    on_log(step, metrics) receives TRL's logs (reward, reward_std, rewards/<fn>/mean, kl, entropy,
    completions/mean_length, completions/clipped_ratio, learning_rate, grad_norm ...) every
    config.logging_steps steps, on rank 0. The logged rewards include the missing-EOS penalty, not the KL.
    should_stop() is asked after every step; if it returns True training stops, nothing is saved and
    TrainingCancelled is raised. Raises PolicyTrainingError on bad prompts, an unloadable base, or a
    non-finite loss.
    """
    stream = StreamAndStop(on_log, should_stop)
    trainer, dropped = build_trainer(config, prompts, reward_fn, callbacks=[stream])
    output = run_trainer(trainer, stream, "RLOO")
    return save_policy(trainer, config, "rloo", output, stream, data={"prompts": len(prompts), "dropped": dropped})


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.rloo --config run.json`; data: "reward_model" (its directory), and "prompts" ({"messages": chat}
    per JSONL line) or "pairs" (preference pairs, e.g. a pairs snapshot: their distinct prompts).

    Every rank loads the reward model on its own device and scores its own completions.
    """
    from accelerate import PartialState

    run = read_run_file(argv, "python -m training.rloo", __doc__.split("\n")[0])
    config = RLOOConfig(**run.config)
    device = "cpu" if config.use_cpu else PartialState().device
    reward_fn = reward_fn_from_reward_model(run.data["reward_model"], device)
    if "prompts" in run.data:
        prompts = [row["messages"] for row in read_jsonl(run.data["prompts"])]
    else:
        distinct = {json.dumps(row["prompt"], sort_keys=True): row["prompt"] for row in read_jsonl(run.data["pairs"])}
        prompts = list(distinct.values())
    print_result(train_rloo(config, prompts, reward_fn, on_log=print_log))


if __name__ == "__main__":
    main()
