"""Held-out evaluation of a reward model: scores of the eval pairs, pairwise accuracy, calibration."""

from __future__ import annotations

import math
from collections.abc import Sequence

from datasets import Dataset
from transformers import PreTrainedModel

from training.reward_scoring import forward_scores


def eval_scores(model: PreTrainedModel, dataset: Dataset, batch_size: int) -> tuple[list[float], list[float]]:
    """Rewards of the chosen and rejected sides of each (tokenized) eval pair."""
    chosen = forward_scores(model, list(dataset["chosen_ids"]), batch_size)
    rejected = forward_scores(model, list(dataset["rejected_ids"]), batch_size)
    return chosen, rejected


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen response scores strictly higher."""
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def calibration(
    chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the Bradley-Terry probability p = sigmoid(r_c - r_r).

    Each pair predicts its more likely order with confidence max(p, 1 - p), right when p > 0.5.
    Confidences fall in n_bins equal bins over [0.5, 1]; ECE = sum over bins of
    count / N * |accuracy - mean confidence| (Guo et al. 2017). Returns (ece, bins).
    """
    width = 0.5 / n_bins
    tallies = [[0, 0.0, 0] for _ in range(n_bins)]  # count, sum of confidence, right
    for c, r in zip(chosen, rejected):
        p = 1.0 / (1.0 + math.exp(-(c - r))) if c - r > -700 else 0.0
        confidence = max(p, 1.0 - p)
        tally = tallies[min(int((confidence - 0.5) / width), n_bins - 1)]
        tally[0] += 1
        tally[1] += confidence
        tally[2] += p > 0.5
    bins = [
        {"lower": round(0.5 + i * width, 6), "upper": round(0.5 + (i + 1) * width, 6), "count": n,
         "confidence": total / n if n else 0.0, "accuracy": right / n if n else 0.0}
        for i, (n, total, right) in enumerate(tallies)
    ]
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / max(len(chosen), 1)
    return ece, bins
