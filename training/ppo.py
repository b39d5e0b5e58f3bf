"""PPO for a chat policy with LoRA adapters, on torch, transformers and peft.

`python -m training.ppo --config run.json` runs it (the run file of `training.launch`), on one process or,
data-parallel, on several through `accelerate launch`: each rank generates and scores its own share of
every iteration's prompts (`config.rollout_batch_size` each), gradients and logged figures are averaged over
the ranks (`training.distributed`), and rank 0 writes the logs, checkpoints and the final policy.

One file you can read top to bottom, like CleanRL: the config, the reward interface,
model setup, then the training loop in `# ROLLOUT`, `# REWARDS`, `# ADVANTAGES`,
`# POLICY AND VALUE UPDATE`, `# LOGGING` sections (checkpoints: `training.ppo_checkpoints`).
It follows the checklist in shared/RLHF-NOTES.md and Huang et al. 2024,
"The N+ Implementation Details of RLHF with PPO".

The reference policy is the policy with its adapters disabled (no second copy). The critic
is a separate sequence-classification model (initialised from the reward checkpoint when
given, else from the policy) with its own LoRA adapter and a trainable linear head.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from peft import PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BatchEncoding,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training import distributed
from training.lora import lora_config
from training.losses import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_rewards,
    masked_mean,
    masked_whiten,
    truncate_after_eos,
)
from training.models import default_device, load_tokenizer
from training.ppo_alarms import Alarms
from training.ppo_checkpoints import (
    TrainerState,
    append_jsonl,
    load_checkpoint,
    resumable_checkpoint,
    sample_row,
    save_checkpoint,
    save_final_policy,
    truncate_jsonl,
)
from training.reward_scoring import encode, forward_scores, load_reward_model

Messages = list[dict]
M = TypeVar("M", bound=nn.Module)


@dataclass
class PPOConfig:
    policy_path: str
    """Checkpoint directory of the starting policy (a causal LM with its chat tokenizer)."""
    output_dir: str
    """Where the config, checkpoints, metrics, final adapter and merged policy are written."""
    reward_model_path: str | None = None
    """Sequence-classification checkpoint to initialise the critic from; None: the policy backbone."""
    lora_r: int = 16
    """LoRA rank, for the policy and the critic."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_target_modules: str | list[str] = "all-linear"
    """Linear layers that get LoRA adapters: 'all-linear' (every linear but the output head, any architecture) or names."""
    learning_rate: float = 3e-5
    """AdamW learning rate (eps 1e-5), decayed linearly to 0 over total_iterations."""
    total_iterations: int = 100
    """Rollout-then-update iterations."""
    rollout_batch_size: int = 16
    """Prompts (one completion each) per iteration."""
    minibatch_size: int = 4
    """Sequences per gradient step."""
    forward_batch_size: int = 16
    """Sequences per no-grad forward pass when a rollout is scored (reference log-probs, values): no activations
    are kept for a backward pass, so it can be larger than the minibatch; it bounds the vocabulary-sized logits."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, a fresh permutation each."""
    clip_eps: float = 0.2
    """Policy ratio clip ε."""
    value_clip: float = 0.2
    """Values may move at most this far from the rollout's values before the loss is clipped."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount over response tokens."""
    lam: float = 0.95
    """GAE λ."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty against the reference (the starting value when adaptive)."""
    target_kl: float | None = None
    """If set, β adapts so that the summed per-sequence KL approaches this (Ziegler et al. 2019)."""
    kl_horizon: int = 10_000
    """Adaptive KL horizon, in episodes."""
    temperature: float = 0.7
    """Sampling temperature; the logits are divided by it in every log-prob computation."""
    max_new_tokens: int = 53
    """Longest completion; one cut here has no EOS and gets the missing-EOS penalty."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of a completion without EOS; None: no penalty."""
    normalize_scores: bool = True
    """Subtract the mean score of the starting policy's completions (measured once), so it scores ≈0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of the policy's parameters."""
    critic_max_grad_norm: float = 1.0
    """Gradient-norm clip of the critic's parameters (its own: a large value-loss gradient does not shrink the policy's step)."""
    reference_samples: int = 64
    """Completions of the starting policy whose mean score is the offset (normalize_scores); at least one rollout batch."""
    max_prompt_tokens: int | None = None
    """Longest chat-formatted prompt; longer ones lose tokens from the left (the question at the end stays). None: no limit."""
    alarm_approxkl: float = 1.0
    """Alarm when the mean approximate KL between old and new policy in an update exceeds this."""
    alarm_clipfrac: float = 0.6
    """Alarm when more than this share of tokens had their ratio clipped."""
    alarm_ratio: float = 2.0
    """Alarm when the mean ratio leaves [1/alarm_ratio, alarm_ratio]."""
    alarm_kl: float = 20.0
    """Alarm when the mean summed KL to the reference per completion exceeds this (nats): the policy has run away."""
    alarm_entropy: float = 0.001
    """Alarm when the policy's mean per-token entropy (nats) falls below this (collapse)."""
    alarm_patience: int = 3
    """Iterations in a row over a threshold before the run stops (each one logs a warning)."""
    seed: int = 0
    """Seeds sampling, LoRA initialisation and minibatch order."""
    save_every: int = 10
    """Checkpoint every this many iterations (and always at the end or when stopped)."""
    device: str | None = None
    """'cuda' or 'cpu'; None: CUDA when available."""
    bf16: bool | None = None
    """bf16 autocast for the forward passes (weights, optimiser and losses stay fp32); None: on a GPU
    that supports it, off on the CPU (where bf16 matmuls are slow)."""


@dataclass
class PPOResult:
    output_dir: Path
    """The run's directory."""
    policy_dir: Path | None
    """Merged full checkpoint (AutoModelForCausalLM + tokenizer); None if the run was stopped early."""
    adapter_dir: Path | None
    """The policy's LoRA adapter (peft) and tokenizer; None if the run was stopped early."""
    iterations: int
    """Iterations completed, counting those before a resume."""
    stopped: bool
    """True when should_stop() ended the run before total_iterations."""
    history: list[dict[str, float]]
    """Metrics of every completed iteration, in order."""
    alarm: str | None = None
    """Why the alarms stopped the run (None: they did not); no final policy is saved then."""


class RewardFn(Protocol):
    def __call__(
        self, prompts: Sequence[Messages], completions: Sequence[str], completion_ids: Sequence[list[int]]
    ) -> Tensor:
        """One score per completion, shape (B,). completion_ids end with EOS when the completion has one."""
        ...


def reward_fn_from_checkpoint(path: str | Path, device: str | None = None, batch_size: int = 16) -> RewardFn:
    """A RewardFn scoring prompt + response with the reward model saved at `path` (merged, or an adapter over its base).

    Inputs are built exactly as TRL's RewardTrainer tokenises conversational pairs (`training.reward_scoring.encode`):
    the chat template over prompt + assistant message. Eval mode, no grad.
    """
    model, tokenizer = load_reward_model(path, device or default_device())

    def score(prompts: Sequence[Messages], completions: Sequence[str], completion_ids: Sequence[list[int]]) -> Tensor:
        sequences = [encode(tokenizer, prompt, completion) for prompt, completion in zip(prompts, completions)]
        return torch.tensor(forward_scores(model, sequences, batch_size))

    return score


# ---------------------------------------------------------------- models


def _without_dropout(model: M) -> M:
    """Dropout off for good: config probabilities, Dropout modules and eval mode."""
    config = getattr(model, "config", None)
    for name, value in vars(config).items() if config is not None else []:
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.eval()


def _load_policy(config: PPOConfig, device: torch.device) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(config.policy_path, dtype=torch.float32)
    return _without_dropout(get_peft_model(base, lora_config(config, "CAUSAL_LM"))).to(device)


def _critic_source(config: PPOConfig, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The reward checkpoint when it reads the policy's tokens; None (start from the policy) when its tokenizer differs."""
    if config.reward_model_path is None:
        return None
    from training.model_check import same_tokenizer

    return config.reward_model_path if same_tokenizer(tokenizer, load_tokenizer(config.reward_model_path)) else None


def _load_critic(config: PPOConfig, source: str | None, pad_token_id: int, device: torch.device) -> PeftModel:
    """A sequence classifier over the policy's tokens: from the reward model (source) or the policy with a zero head."""
    base = AutoModelForSequenceClassification.from_pretrained(source or config.policy_path, num_labels=1, dtype=torch.float32)
    base.config.pad_token_id = pad_token_id
    if source is None:
        nn.init.zeros_(base.score.weight)  # a fresh head: start the values at 0, not at noise
    # SEQ_CLS puts the score head in modules_to_save: it trains alongside the critic's own adapter
    return _without_dropout(get_peft_model(base, lora_config(config, "SEQ_CLS"))).to(device)


def _response_hidden(model: PreTrainedModel, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> Tensor:
    """The backbone's last hidden states at the positions that predict each response token. Shapes: (B, P+T) -> (B, T, H).

    Positions are counted from each row's first real token (left padding).
    """
    backbone = getattr(model, model.base_model_prefix)
    return backbone(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0),
        use_cache=False,
    ).last_hidden_state[:, context_length - 1 : -1]


def _response_logits(
    policy: PeftModel, query_responses: Tensor, attention_mask: Tensor, context_length: int, temperature: float
) -> Tensor:
    """Logits / temperature that predict each response token. Shapes: (B, P+T) -> (B, T, V).

    Only the response positions go through the output projection, and (for an output layer
    without bias or logit soft-capping, as in Llama/SmolLM2) the temperature divides the hidden
    states before it rather than the logits after it: the same values, hidden/V times fewer
    divisions, forward and backward. The vocabulary-sized tensors are the cost of PPO on a
    small model.
    """
    causal_lm = policy.get_base_model()  # its LoRA layers active unless disable_adapter() is on
    assert isinstance(causal_lm, PreTrainedModel)
    hidden = _response_hidden(causal_lm, query_responses, attention_mask, context_length)
    lm_head = causal_lm.get_output_embeddings()
    assert isinstance(lm_head, nn.Module)
    if getattr(lm_head, "bias", None) is None and getattr(causal_lm.config, "final_logit_softcapping", None) is None:
        return lm_head(hidden / temperature)
    return lm_head(hidden) / temperature


def _logprobs_and_logp(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(log-probs of the chosen tokens (B, T), the full log-softmax (B, T, V)) of already tempered logits."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1), logp


def _response_values(critic: PeftModel, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> Tensor:
    """V(state before each response token), from the critic's head on every position. Shapes: (B, P+T) -> (B, T)."""
    inner = critic.get_base_model()  # the sequence classifier, its LoRA layers active
    assert isinstance(inner, PreTrainedModel)
    return inner.get_submodule("score")(_response_hidden(inner, query_responses, attention_mask, context_length)).squeeze(-1).float()


# ---------------------------------------------------------------- training


def train_ppo(
    config: PPOConfig,
    prompts: list[Messages],
    reward_fn: RewardFn,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    reference_prompts: list[Messages] | None = None,
) -> PPOResult:
    """Optimise the policy at config.policy_path against reward_fn on `prompts` (chat messages).

    The score offset is measured on `reference_prompts` (held-out prompts; default: the training
    prompts) with at least config.reference_samples completions. Alarms (`training.ppo_alarms`)
    that stay over their thresholds for config.alarm_patience iterations stop the run:
    result.alarm says why, and no final policy is saved.

    Calls on_log(iteration, metrics) after each iteration and checks should_stop() before each;
    a stopped run saves a checkpoint that resume=True continues from. Same seed, same machine:
    same metrics (apart from the timing ones).
    """
    if not prompts:
        raise ValueError("train_ppo needs at least one prompt")
    if config.rollout_batch_size % config.minibatch_size:
        raise ValueError("rollout_batch_size must be a multiple of minibatch_size")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    _seed_everything(config.seed)
    device = torch.device(config.device) if config.device else default_device()

    tokenizer = load_tokenizer(config.policy_path)  # left padding, pad != EOS
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    policy = _load_policy(config, device)
    critic = _load_critic(config, _critic_source(config, tokenizer), pad_id, device)
    if distributed.world_size() > 1:  # the same weights everywhere, different samples on each rank
        distributed.broadcast_parameters(policy)
        distributed.broadcast_parameters(critic)
        _seed_everything(config.seed + distributed.rank())
    autocast = _autocast(config, device)
    # The old log-probs come from the logits the rollout sampled from: no second forward pass over it. Not
    # under bf16 autocast, where the cached decoding's logits drift from a full forward's (ratio std ≈0.05).
    reuse_logits = not _autocast_enabled(config, device)
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    critic_params = [p for p in critic.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(policy_params + critic_params, lr=config.learning_rate, eps=1e-5)
    generation_config = GenerationConfig(
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,  # the KV cache: each decoding step runs on one new token, not the whole sequence
        output_logits=reuse_logits,
        return_dict_in_generate=True,
    )
    B, temperature = config.rollout_batch_size, config.temperature

    state: TrainerState = {"iteration": 0, "kl_coef": config.kl_coef, "score_offset": 0.0, "score_offset_samples": 0, "history": []}
    checkpoint_dir = output_dir / "checkpoint"
    if resume and (saved := resumable_checkpoint(checkpoint_dir)) is not None:
        state = load_checkpoint(saved, policy, critic, optimizer)
        if distributed.world_size() > 1:  # the checkpoint holds rank 0's random state: each rank its own samples again
            _seed_everything(config.seed + distributed.rank() + 1_000_003 * state["iteration"])
    elif config.normalize_scores:
        with autocast():
            state["score_offset"], state["score_offset_samples"] = _reference_score(
                policy, tokenizer, reference_prompts or prompts, reward_fn, generation_config, config
            )
    alarms = Alarms(config)
    for log_name in ("metrics.jsonl", "samples.jsonl"):  # drop rows of iterations the checkpoint does not hold
        if distributed.is_main():
            truncate_jsonl(output_dir / log_name, state["iteration"])

    stopped = False
    for iteration in range(state["iteration"], config.total_iterations):
        if distributed.any_rank(should_stop is not None and should_stop()):
            stopped = True
            break
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * (1 - iteration / config.total_iterations)
        kl_coef = state["kl_coef"]

        # ROLLOUT
        batch_prompts = [prompts[i] for i in _rank_share(_prompt_indices(len(prompts), B * distributed.world_size(), iteration, config.seed))]
        query = _encode_prompts(tokenizer, batch_prompts, device, config.max_prompt_tokens)
        context_length = query["input_ids"].shape[1]
        start = time.perf_counter()
        with torch.no_grad(), autocast():
            generated = policy.generate(**query, generation_config=generation_config)
        generation_s = time.perf_counter() - start
        b_responses, b_mask = truncate_after_eos(generated.sequences[:, context_length:], eos_id, pad_id)
        b_query_responses = torch.cat([query["input_ids"], b_responses], dim=1)
        b_attention_mask = torch.cat([query["attention_mask"], b_mask.long()], dim=1)
        with autocast():
            b_logprobs = _sampled_logprobs(generated.logits, b_responses, temperature) if reuse_logits else None
            b_logprobs, b_ref_logprobs, b_values = _score_rollout(
                policy, critic, b_query_responses, b_attention_mask, b_responses, context_length, config, b_logprobs
            )
        del generated  # the logits of every decoding step

        # REWARDS
        completion_ids = [r[m.bool()].tolist() for r, m in zip(b_responses.cpu(), b_mask.cpu())]
        completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        b_raw_scores = reward_fn(batch_prompts, completions, completion_ids).detach().float().to(device)
        b_has_eos = (b_responses == eos_id).any(dim=1)  # completion tokens only: the chat prompt has EOS too
        b_penalty = torch.zeros_like(b_raw_scores)
        if config.missing_eos_penalty is not None:
            b_penalty = (~b_has_eos).float() * config.missing_eos_penalty
        b_scores = b_raw_scores - state["score_offset"] - b_penalty
        b_rewards, b_kl = kl_rewards(b_logprobs, b_ref_logprobs, b_scores, b_mask, kl_coef)

        # ADVANTAGES
        b_advantages, b_returns = gae(b_rewards, b_values, b_mask, config.gamma, config.lam)
        b_advantages = masked_whiten(b_advantages, b_mask)

        # POLICY AND VALUE UPDATE
        minibatch_stats: list[dict[str, float]] = []
        for _epoch in range(config.ppo_epochs):
            permutation = torch.randperm(B)
            for mb_start in range(0, B, config.minibatch_size):
                mb = permutation[mb_start : mb_start + config.minibatch_size].to(device)
                mb_query_responses, mb_attention_mask, mb_mask = b_query_responses[mb], b_attention_mask[mb], b_mask[mb]
                with autocast():  # the log-softmax and the values come out in fp32
                    mb_logits = _response_logits(policy, mb_query_responses, mb_attention_mask, context_length, temperature)
                    mb_logprobs, mb_logp = _logprobs_and_logp(mb_logits, b_responses[mb])
                    mb_values = _response_values(critic, mb_query_responses, mb_attention_mask, context_length)
                pg_loss, pg_stats = clipped_policy_loss(mb_logprobs, b_logprobs[mb], b_advantages[mb], mb_mask, config.clip_eps)
                vf_loss, vf_clipfrac = clipped_value_loss(mb_values, b_values[mb], b_returns[mb], mb_mask, config.value_clip)
                loss = pg_loss + config.vf_coef * vf_loss
                optimizer.zero_grad()
                loss.backward()
                distributed.average_gradients(policy_params + critic_params)  # the ranks' steps stay identical
                grad_norm = nn.utils.clip_grad_norm_(policy_params, config.max_grad_norm)
                critic_grad_norm = nn.utils.clip_grad_norm_(critic_params, config.critic_max_grad_norm)
                optimizer.step()
                with torch.no_grad():  # from the log-softmax the log-probs came from: no second one
                    entropy = masked_mean(-(mb_logp.exp() * mb_logp).sum(dim=-1), mb_mask)
                minibatch_stats.append({
                    "loss/policy": pg_loss.item(),
                    "loss/value": vf_loss.item(),
                    "policy/entropy": entropy.item(),
                    "policy/clipfrac": pg_stats["clipfrac"].item(),
                    "policy/approxkl": pg_stats["approxkl"].item(),
                    "value/clipfrac": vf_clipfrac.item(),
                    "val/ratio": pg_stats["ratio"].item(),
                    "grad_norm": grad_norm.item(),
                    "grad_norm_critic": critic_grad_norm.item(),
                })
        b_kl_sum = b_kl.sum(dim=1)
        if config.target_kl is not None:
            state["kl_coef"] = adaptive_kl_coef(kl_coef, distributed.mean(b_kl_sum.mean().item()), config.target_kl, config.kl_horizon,
                                                B * distributed.world_size())

        # LOGGING
        n_tokens = b_mask.sum().item()
        ratios = [stats["val/ratio"] for stats in minibatch_stats]
        metrics = {
            "objective/kl": b_kl_sum.mean().item(),
            "objective/kl_coef": kl_coef,
            "objective/scores": b_raw_scores.mean().item(),
            "objective/score_offset": state["score_offset"],
            "objective/score_offset_samples": state.get("score_offset_samples", 0),
            "objective/missing_eos_penalty": b_penalty.mean().item(),
            "objective/non_score_reward": (-kl_coef * b_kl_sum).mean().item(),
            "objective/rlhf_reward": (b_scores - kl_coef * b_kl_sum).mean().item(),
            **{key: float(np.mean([stats[key] for stats in minibatch_stats])) for key in minibatch_stats[0]},
            "val/ratio_var": float(np.var(ratios)),
            # old log-probs come from the same forward pass as the update: this must be ≈1
            "val/ratio_first_minibatch": ratios[0],
            "val/eos_rate": b_has_eos.float().mean().item(),
            "value/explained_variance": explained_variance(b_values, b_returns, b_mask).item(),
            "response_length": n_tokens / B,
            "lr": optimizer.param_groups[0]["lr"],
            "tokens_per_s": n_tokens / generation_s,
        }
        metrics = distributed.mean_figures(metrics)  # every rank the same figures, so the same alarms
        alarm = alarms.check(metrics)  # adds alarm/* flags to the metrics
        state["history"].append(metrics)
        state["iteration"] = iteration + 1
        samples = distributed.gather(list(zip(batch_prompts, completions, b_raw_scores.tolist()))[:4])  # 4 of each rank's
        if distributed.is_main():
            append_jsonl(output_dir / "metrics.jsonl", {"iteration": iteration, **metrics})
            append_jsonl(output_dir / "samples.jsonl", _sample_row(iteration, samples))
            if on_log is not None:
                on_log(iteration, metrics)
        if alarm is not None:
            break
        if state["iteration"] % config.save_every == 0 and distributed.is_main():
            save_checkpoint(checkpoint_dir, policy, critic, optimizer, state)

    result = PPOResult(output_dir, None, None, state["iteration"], stopped, state["history"], alarm=alarms.reason)
    if distributed.is_main():
        save_checkpoint(checkpoint_dir, policy, critic, optimizer, state)
        if not stopped and alarms.reason is None:
            result.adapter_dir, result.policy_dir = save_final_policy(policy, tokenizer, output_dir)
    distributed.barrier()  # all ranks finish together, with the files written
    return result


def _sample_row(iteration: int, samples: list[tuple[Messages, str, float]]) -> dict:
    prompts, completions, scores = zip(*samples)
    return sample_row(iteration, list(prompts), list(completions), torch.tensor(scores), n=len(samples))


def _rank_share(indices: list[int]) -> list[int]:
    """This rank's consecutive slice of indices (all of them on one process)."""
    size = len(indices) // distributed.world_size()
    return indices[distributed.rank() * size : (distributed.rank() + 1) * size]


def _autocast_enabled(config: PPOConfig, device: torch.device) -> bool:
    """bf16 autocast where config.bf16 (or, by default, a bf16-capable GPU) asks for it."""
    return config.bf16 if config.bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()


def _autocast(config: PPOConfig, device: torch.device) -> Callable[[], torch.autocast]:
    """A context-manager factory for the forward passes: autocast to bf16 or a no-op (_autocast_enabled)."""
    enabled = _autocast_enabled(config, device)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prompt_indices(n_prompts: int, batch_size: int, iteration: int, seed: int) -> list[int]:
    """The prompts of one iteration: consecutive slices of a seeded shuffle, reshuffled on each pass.

    A pure function of the iteration, so a resumed run sees the same prompts.
    """
    indices = []
    for k in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, position = divmod(k, n_prompts)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        indices.append(int(torch.randperm(n_prompts, generator=generator)[position]))
    return indices


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns
    return encoded["input_ids"]


def _encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[Messages], device: torch.device, max_tokens: int | None = None
) -> dict[str, Tensor]:
    """Chat-formatted, left-padded prompts ending with the assistant header; those over max_tokens lose their
    leftmost tokens (the end of the chat and the assistant header stay). Shapes: (B, P)."""
    rows = [_prompt_ids(tokenizer, p) for p in prompts]
    if max_tokens is not None:
        rows = [ids[-max_tokens:] for ids in rows]
    encoded = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")  # the tokenizer pads on the left
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


def _token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probs of the chosen tokens of already tempered logits, without keeping a vocabulary-sized log-softmax.
    Shapes: (..., V), (...) -> (...)."""
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def _sampled_logprobs(step_logits: Sequence[Tensor], responses: Tensor, temperature: float) -> Tensor:
    """The policy's log-probs of the tokens it sampled, from generate's raw logits of each decoding step. Shapes:
    T × (B, V), (B, T) -> (B, T); positions after the EOS get numbers too, which the response mask drops."""
    return torch.stack([_token_logprobs(logits / temperature, responses[:, t]) for t, logits in enumerate(step_logits)], dim=1)


@torch.no_grad()
def _score_rollout(
    policy: PeftModel,
    critic: PeftModel,
    query_responses: Tensor,
    attention_mask: Tensor,
    responses: Tensor,
    context_length: int,
    config: PPOConfig,
    logprobs: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Old log-probs (unless given: _sampled_logprobs), reference log-probs and values, in chunks of
    config.forward_batch_size sequences (no gradients kept). Shapes: (B, P+T) -> three (B, T)."""
    old, reference, values = [], [], []
    for start in range(0, query_responses.shape[0], config.forward_batch_size):
        chunk = slice(start, start + config.forward_batch_size)
        qr, am = query_responses[chunk], attention_mask[chunk]
        if logprobs is None:
            old.append(_token_logprobs(_response_logits(policy, qr, am, context_length, config.temperature), responses[chunk]))
        with policy.disable_adapter():  # the reference: same weights, adapters off
            reference.append(_token_logprobs(_response_logits(policy, qr, am, context_length, config.temperature), responses[chunk]))
        values.append(_response_values(critic, qr, am, context_length))
    return logprobs if logprobs is not None else torch.cat(old), torch.cat(reference), torch.cat(values)


@torch.no_grad()
def _reference_score(
    policy: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    reward_fn: RewardFn,
    generation_config: GenerationConfig,
    config: PPOConfig,
) -> tuple[float, int]:
    """(mean score, samples) of at least config.reference_samples of the starting policy's completions, in
    rollout-sized batches cycling through `prompts`: the offset that centres scores at 0. Under several processes
    each rank scores its share of every batch and the mean is over all of them."""
    scores: list[float] = []
    batch, ranks = 0, distributed.world_size()
    while len(scores) * ranks < max(config.reference_samples, 1):
        indices = _rank_share(_prompt_indices(len(prompts), config.rollout_batch_size * ranks, batch, config.seed))
        batch_prompts = [prompts[i] for i in indices]
        query = _encode_prompts(tokenizer, batch_prompts, policy.device, config.max_prompt_tokens)
        context_length = query["input_ids"].shape[1]
        with policy.disable_adapter():
            generated = policy.generate(**query, generation_config=generation_config, output_logits=False)
        responses, mask = truncate_after_eos(generated.sequences[:, context_length:], tokenizer.eos_token_id, tokenizer.pad_token_id)
        completion_ids = [r[m.bool()].tolist() for r, m in zip(responses.cpu(), mask.cpu())]
        completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        scores.extend(reward_fn(batch_prompts, completions, completion_ids).float().tolist())
        batch += 1
    return distributed.mean(sum(scores) / len(scores)), len(scores) * ranks


# ---------------------------------------------------------------- command line


def load_result(output_dir: Path | str) -> PPOResult:
    """The PPOResult a finished `python -m training.ppo` run left in output_dir/metrics.json."""
    saved = json.loads((Path(output_dir) / "metrics.json").read_text())
    paths = {key: Path(saved[key]) if saved[key] else None for key in ("policy_dir", "adapter_dir")}
    return PPOResult(output_dir=Path(saved["output_dir"]), iterations=saved["iterations"], stopped=saved["stopped"],
                     history=saved["history"], alarm=saved["alarm"], **paths)


def _reward_fn(data: dict[str, str], device: str) -> RewardFn:
    """The reward model at data["reward_model"], or the function data["reward_fn"] names ("package.module:name")."""
    if "reward_model" in data:
        return reward_fn_from_checkpoint(data["reward_model"], device)
    module, name = data["reward_fn"].split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.ppo --config run.json`; data: "prompts" ({"messages": chat} per JSONL line), optionally
    "reference_prompts" (the same, for the score offset), and "reward_model" (its directory; every rank loads it and
    scores its own completions) or "reward_fn" (an importable RewardFn, "package.module:name").

    Rank 0 prints a JSON line per iteration and the result last, and writes the result to output_dir/metrics.json.
    """
    from training.launch import print_log, print_result, read_run_file
    from training.preferences import read_jsonl

    run = read_run_file(argv, "python -m training.ppo", __doc__.split("\n")[0])
    config = PPOConfig(**run.config)
    device = distributed.join_ranks(cpu=config.device == "cpu")  # under accelerate launch: this rank's place in the group
    config.device = config.device or str(device)
    prompts = [row["messages"] for row in read_jsonl(run.data["prompts"])]
    reference = [row["messages"] for row in read_jsonl(run.data["reference_prompts"])] if "reference_prompts" in run.data else None
    result = train_ppo(config, prompts, _reward_fn(run.data, config.device), on_log=print_log, reference_prompts=reference)
    if distributed.is_main():
        (Path(config.output_dir) / "metrics.json").write_text(json.dumps(dataclasses.asdict(result), default=str, indent=2))
        print_result(result, leave_out=("history",))


if __name__ == "__main__":
    main()
