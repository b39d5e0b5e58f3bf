"""The evaluation's KL estimator: unbiased for KL(π ‖ π_ref) and never negative."""
from __future__ import annotations

import math

import torch

from training.evaluate import k3


def test_k3_averages_to_the_exact_kl_under_the_sampling_policy_and_is_never_negative():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact = sum(a * math.log(a / b) for a, b in zip(p.tolist(), q.tolist()))  # 0.3180 by hand
    per_token = k3(p.log(), q.log())
    assert abs(float((p * per_token).sum()) - exact) < 1e-6  # E_p[r - 1 - log r] = E_p[-log r] since E_p[r] = 1
    assert (per_token >= 0).all() and float(per_token[0]) > 0
    assert torch.equal(k3(p.log(), p.log()), torch.zeros(3))  # the same policy: zero, not noise
