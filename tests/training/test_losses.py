"""PPO's tensor functions against numbers worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    truncate_after_eos,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_on_three_steps_matches_the_hand_computation():
    # γ=1, λ=0.95; the episode ends after step 2, so V(after) = 0:
    # δ2 = 1.0 - 0.3 = 0.7                 A2 = 0.7
    # δ1 = -0.2 + 0.3 - 0.4 = -0.3         A1 = -0.3 + 0.95·0.7 = 0.365
    # δ0 = 0.1 + 0.4 - 0.5 = 0.0           A0 = 0.0 + 0.95·0.365 = 0.34675
    rewards, values, mask = t([0.1, -0.2, 1.0]), t([0.5, 0.4, 0.3]), t([1, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert advantages.tolist()[0] == pytest.approx([0.34675, 0.365, 0.7])
    assert returns.tolist()[0] == pytest.approx([0.84675, 0.765, 1.0])


def test_gae_ignores_padding_after_the_last_real_token():
    rewards, values, mask = t([0.1, -0.2, 1.0, 5.0, 5.0]), t([0.5, 0.4, 0.3, 9.0, 9.0]), t([1, 1, 1, 0, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert advantages.tolist()[0] == pytest.approx([0.34675, 0.365, 0.7, 0.0, 0.0])
    assert returns.tolist()[0] == pytest.approx([0.84675, 0.765, 1.0, 0.0, 0.0])


def test_gae_with_lambda_one_gives_monte_carlo_advantages():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.2, 0.4, 0.6]), t([1, 1, 1])
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.8, 0.6, 0.4])


def test_masked_mean_and_var_ignore_padding():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # (1 + 0 + 1) / (3 - 1)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)


def test_masked_whitening_ignores_padding_and_zeroes_it():
    x, mask = t([1.0, 2.0, 100.0], [3.0, -50.0, -50.0]), t([1, 1, 0], [1, 0, 0])
    # real values 1, 2, 3: mean 2, unbiased std 1
    torch.testing.assert_close(masked_whiten(x, mask), t([-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]))


def test_whitening_without_shifting_keeps_the_mean():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    "advantage, ratio, expected_loss, clipped",
    [
        (1.0, 1.5, -1.2, True),  # good action pushed past 1+ε: gain capped at 1.2
        (1.0, 0.9, -0.9, False),  # inside the trust region
        (-1.0, 1.5, 1.5, False),  # bad action made likelier: the pessimistic term is unclipped
        (-1.0, 0.5, 0.8, True),  # bad action pushed past 1-ε: gain capped at 0.8
    ],
)
def test_clipped_policy_loss_in_the_clipped_and_unclipped_regions(advantage, ratio, expected_loss, clipped):
    old = t([-2.0])
    new = old + math.log(ratio)
    loss, stats = clipped_policy_loss(new, old, t([advantage]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert stats["clipfrac"].item() == (1.0 if clipped else 0.0)
    assert stats["ratio"].item() == pytest.approx(ratio)
    assert stats["approxkl"].item() == pytest.approx(ratio - 1 - math.log(ratio), abs=1e-6)


def test_clipped_policy_loss_is_a_masked_mean_over_tokens():
    old = t([0.0, 0.0, 0.0])
    new = t([math.log(0.9), 0.0, math.log(100.0)])
    loss, _ = clipped_policy_loss(new, old, t([1.0, 2.0, 1.0]), t([1, 1, 0]), clip=0.2)
    assert loss.item() == pytest.approx((-0.9 - 2.0) / 2)


def test_clipped_policy_loss_gradient_vanishes_in_the_clipped_region():
    new = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = clipped_policy_loss(new, t([0.0, 0.0]), t([1.0, 1.0]), t([1, 1]), clip=0.2)
    loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([0.0, -1.1 / 2])


def test_clipped_value_loss_takes_the_larger_of_clipped_and_unclipped_errors():
    # V moved 1.0 -> 2.0, clipped to 1.2; R = 3: max(1.0, 3.24) / 2
    loss, clipfrac = clipped_value_loss(t([2.0]), t([1.0]), t([3.0]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(1.62)
    assert clipfrac.item() == 1.0
    # V moved 1.0 -> 1.1 (inside the clip): both errors 1.9² = 3.61
    loss, clipfrac = clipped_value_loss(t([1.1]), t([1.0]), t([3.0]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(1.805)
    assert clipfrac.item() == 0.0


def test_kl_penalty_is_per_token_and_the_score_lands_on_the_last_real_token():
    logprobs = t([-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0])
    ref_logprobs = t([-1.5, -2.0, -2.0, -9.0], [-1.0, -1.0, -1.0, -1.0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    rewards, kl = kl_rewards(logprobs, ref_logprobs, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    torch.testing.assert_close(kl, t([0.5, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(rewards, t([-0.05, 0.0, 0.1 + 2.0, 0.0], [0.0, 0.0, 0.0, -1.0]))


def test_everything_after_the_first_eos_is_padded_and_masked():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    truncated, mask = truncate_after_eos(responses, eos, pad)
    assert truncated.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_logprobs_and_entropy_divide_the_logits_by_the_temperature():
    logits = torch.tensor([[[2.0, 0.0]]])
    # at T=2 the logits are (1, 0): p = e/(e+1)
    p = math.e / (math.e + 1)
    assert logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0).item() == pytest.approx(math.log(p))
    expected_entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert entropy_from_logits(logits, temperature=2.0).item() == pytest.approx(expected_entropy)


def test_adaptive_kl_raises_beta_when_kl_overshoots_and_lowers_it_when_it_undershoots():
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, kl=3.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 0.98)
    assert adaptive_kl_coef(0.1, kl=6.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1)
