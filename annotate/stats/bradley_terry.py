"""Bradley–Terry strengths of model versions, with bootstrap confidence intervals (as Chatbot Arena).

P(model i's response is preferred to model j's) = sigmoid(s_i - s_j). Strengths are on the
log-odds scale and centred (the mean model is 0): a gap of 1 means about 73% preference.

Outcomes come from the rankings: every pair of responses in different groups is one win for the
better one's model; responses tied in one group give each model half a win. Pairs of two responses
of the same model say nothing about models and are dropped. The fit is the maximum-likelihood
estimate (Newton's method) with a weak N(0, 10^2) prior that keeps an unbeaten model finite.

Intervals: the judgements are resampled with replacement (`rounds` times, seeded) and refitted;
the interval is the central `level` share of the refitted strengths. A model that won (or lost)
every comparison gets an open interval on that side (+inf / -inf): its finite strength only
reflects the prior. Judgements are first grouped
by the outcomes they give, so a resample is one multinomial draw over the groups: the cost does not
grow with the number of judgements once they are counted.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from annotate.models import Campaign
from annotate.stats.rankings import campaign_rankings

PRIOR_PRECISION = 0.01
"""1 / variance of the Gaussian prior on each strength: negligible once a model has a few comparisons."""


@dataclass(frozen=True)
class Standing:
    model_id: int
    comparisons: float
    """Pairwise comparisons with other models' responses (ties included)."""
    wins: float
    """Comparisons won, ties counted as half a win."""
    win_rate: float
    strength: float
    ci_low: float
    ci_high: float


@dataclass
class Outcomes:
    """Judgements grouped by the model-level outcomes they give, as flat (group, cell, wins) entries."""

    model_ids: list[int]
    counts: np.ndarray
    """Judgements per group."""
    group: np.ndarray
    cell: np.ndarray
    """winner index * M + loser index."""
    value: np.ndarray

    def wins(self, weights: np.ndarray | None = None) -> np.ndarray:
        """M x M wins of row over column, each group weighted by `weights` (default: its judgement count)."""
        m = len(self.model_ids)
        weights = self.counts if weights is None else weights
        return np.bincount(self.cell, weights=self.value * weights[self.group], minlength=m * m).reshape(m, m)


def outcomes(rankings: Iterable[Sequence[Sequence[int]]], model_of: dict[int, int]) -> Outcomes:
    """Expand rankings into model-level pairwise outcomes (see the module docstring), grouped."""
    model_ids = sorted(set(model_of.values()))
    index = {mid: i for i, mid in enumerate(model_ids)}
    # Rankings seen as models (not responses) repeat a lot: count those first, expand each once.
    shapes = Counter(tuple(tuple(sorted(index[model_of[rid]] for rid in group)) for group in ranking) for ranking in rankings)
    groups: Counter = Counter()
    for shape, n in shapes.items():
        cells = _cells(shape, len(model_ids))
        if cells:
            groups[tuple(sorted(cells.items()))] += n
    entries = [(g, cell, value) for g, key in enumerate(groups) for cell, value in key]
    group, cell, value = zip(*entries) if entries else ((), (), ())
    return Outcomes(
        model_ids,
        counts=np.array(list(groups.values()), dtype=np.float64),
        group=np.array(group, dtype=np.int64),
        cell=np.array(cell, dtype=np.int64),
        value=np.array(value, dtype=np.float64),
    )


def _cells(shape: tuple[tuple[int, ...], ...], m: int) -> dict[int, float]:
    """Wins (flat cell winner * m + loser -> count) of one ranking given as groups of model indices."""
    cells: defaultdict[int, float] = defaultdict(float)
    for g, group in enumerate(shape):
        for x, i in enumerate(group):
            for j in group[x + 1 :]:  # tied: half a win each
                if i != j:
                    cells[i * m + j] += 0.5
                    cells[j * m + i] += 0.5
            for worse in shape[g + 1 :]:
                for j in worse:
                    if i != j:
                        cells[i * m + j] += 1.0
    return cells


def fit(wins: np.ndarray, *, max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Strengths (centred) maximising sum_ij wins[i, j] * log sigmoid(s_i - s_j) under the weak prior."""
    m = len(wins)
    games = wins + wins.T
    s = np.zeros(m)
    objective = _objective(wins, s)
    for _ in range(max_iter):
        p = _sigmoid(s[:, None] - s[None, :])
        gradient = (wins - games * p).sum(axis=1) - PRIOR_PRECISION * s
        curvature = games * p * (1 - p)
        information = np.diag(curvature.sum(axis=1) + PRIOR_PRECISION) - curvature
        step = np.linalg.solve(information, gradient)
        # Newton with step halving: the log-likelihood is concave, so this only trims overshoots
        for _ in range(30):
            candidate = _objective(wins, s + step)
            if candidate >= objective - 1e-12:
                break
            step /= 2
        s, objective = s + step, candidate
        if np.abs(step).max() < tol:
            break
    return s - s.mean()


def standings(
    rankings: Iterable[Sequence[Sequence[int]]],
    model_of: dict[int, int],
    *,
    rounds: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> list[Standing]:
    """Win rate and Bradley–Terry strength with a bootstrap interval per model that was compared, strongest first."""
    grouped = outcomes(rankings, model_of)
    if not len(grouped.counts):
        return []
    wins = grouped.wins()
    games = wins + wins.T
    compared = games.sum(axis=1) > 0
    strength = fit(wins[np.ix_(compared, compared)])
    low, high = _bootstrap(grouped, compared, rounds, level, seed)
    ids = [mid for mid, keep in zip(grouped.model_ids, compared) if keep]
    won, played = wins.sum(axis=1)[compared], games.sum(axis=1)[compared]
    # Never beaten (or never won): every resample says so too, so the data set no bound on that side.
    low, high = np.where(won == 0, -np.inf, low), np.where(won == played, np.inf, high)
    table = [
        Standing(mid, float(n), float(w), float(w / n), float(s), float(lo), float(hi))
        for mid, n, w, s, lo, hi in zip(ids, played, won, strength, low, high)
    ]
    return sorted(table, key=lambda row: -row.strength)


def model_standings(campaign: Campaign, **options) -> list[Standing]:
    """`standings` of a campaign's non-gold judgements, paused labelers left out."""
    data = campaign_rankings(campaign)
    return standings((j.ranking for j in data.counted()), data.model_of, **options)


def _bootstrap(grouped: Outcomes, compared: np.ndarray, rounds: int, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    size = int(compared.sum())
    if rounds <= 0:
        return np.full(size, np.nan), np.full(size, np.nan)
    rng = np.random.default_rng(seed)
    total = int(grouped.counts.sum())
    draws = rng.multinomial(total, grouped.counts / total, size=rounds)  # resampled judgements per group
    fits = np.array([fit(grouped.wins(draw.astype(np.float64))[np.ix_(compared, compared)]) for draw in draws])
    tail = (1 - level) / 2 * 100
    return np.percentile(fits, tail, axis=0), np.percentile(fits, 100 - tail, axis=0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))


def _objective(wins: np.ndarray, s: np.ndarray) -> float:
    diff = s[:, None] - s[None, :]
    return float(-(wins * np.logaddexp(0, -diff)).sum() - PRIOR_PRECISION / 2 * (s**2).sum())
