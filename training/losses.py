"""Small tensor functions for PPO on language models.

Shapes: B sequences in a batch, T response positions. `mask` is 1.0 on real response
tokens (up to and including the first EOS) and 0.0 on the padding after it.
References: Schulman et al. 2016 (GAE), 2017 (PPO); Ziegler et al. 2019 (per-token KL
penalty, adaptive KL); Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the positions where mask is 1. Shapes: x, mask (B, T) -> scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the positions where mask is 1. Shapes: (B, T) -> scalar."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / std over the masked positions; padding comes out as 0. Shapes: (B, T)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def truncate_after_eos(responses: Tensor, eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Replace everything after each row's first EOS with pad; return (responses, mask).

    The EOS itself stays and is a real token. Shapes: responses (B, T) int -> (B, T) int, (B, T) float.
    """
    is_eos = responses == eos_token_id
    # number of EOS strictly before each position: > 0 means "after the first EOS"
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = eos_before == 0
    return responses.masked_fill(~mask, pad_token_id), mask.float()


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last real token in each row (0 for an empty row). Shapes: (B, T) -> (B,) long."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def kl_rewards(
    logprobs: Tensor, ref_logprobs: Tensor, scores: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = -β·(log π(a_t) - log π_ref(a_t)), plus the score on the last real token.

    Returns (rewards, kl), both zero on padding.
    Shapes: logprobs, ref_logprobs, mask (B, T); scores (B,) -> (B, T), (B, T).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, backwards over response positions; returns (advantages, returns).

    The episode ends at the last real token: the value after it counts as 0. Returns are
    advantages + values. Both come out zero on padding. Shapes: (B, T) -> (B, T), (B, T).
    """
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: masked mean of max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)), ρ = π/π_old.

    Also returns detached stats: clipfrac, approxkl (k3 estimator of KL(π_old‖π)), ratio.
    Shapes: (B, T) -> scalar.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": masked_mean(ratio - 1 - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, Tensor]:
    """0.5 · masked mean of max((V - R)², (V_clipped - R)²), V_clipped within ±clip of V_old.

    Returns (loss, clipfrac). Shapes: (B, T) -> scalar, scalar.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask).detach()
    return loss, clipfrac


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T) at the chosen tokens. Shapes: logits (B, T, V), tokens (B, T) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, temperature: float) -> Tensor:
    """Entropy of softmax(logits / T) at every position. Shapes: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over real tokens: 1 is a perfect critic, ≤ 0 a useless one. Shapes: (B, T)."""
    var_returns = masked_var(returns, mask)
    return 1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019: move β toward the value that keeps the KL at `target`, by at most ±20% per horizon."""
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n_steps / horizon)
