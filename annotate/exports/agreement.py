"""Agreement and aggregation of one task's rankings, for exports (the `tasks` shape, `min_agreement`).

A ranking is a list of groups of response ids, best first; the responses in a group are tied.
Campaign-wide inter-annotator agreement is `annotate.stats.agreement`.
"""
from __future__ import annotations

from itertools import combinations, groupby

from annotate.labeling.gold import rank_of


def pairwise_agreement(rankings: list[list[list[int]]]) -> float | None:
    """Mean over pairs of judgements of the share of response pairs both order alike (a tie matches only a tie).

    None when fewer than two judgements (or fewer than two responses) make it undefined.
    """
    ranks = [rank_of(ranking) for ranking in rankings]
    items = sorted(ranks[0]) if ranks else []
    response_pairs = list(combinations(items, 2))
    if len(ranks) < 2 or not response_pairs:
        return None
    scores = [
        sum(_order(x, a, b) == _order(y, a, b) for a, b in response_pairs) / len(response_pairs)
        for x, y in combinations(ranks, 2)
    ]
    return sum(scores) / len(scores)


def _order(rank: dict[int, int], a: int, b: int) -> int:
    """-1 if a is ranked above b, 1 if below, 0 if tied."""
    return (rank[a] > rank[b]) - (rank[a] < rank[b])


def mean_ranks(rankings: list[list[list[int]]]) -> dict[int, float]:
    """Each response's mean 1-based rank; tied responses share the average of the places they span."""
    totals: dict[int, float] = {}
    for ranking in rankings:
        place = 1
        for group in ranking:
            shared = place + (len(group) - 1) / 2
            for rid in group:
                totals[rid] = totals.get(rid, 0.0) + shared
            place += len(group)
    return {rid: total / len(rankings) for rid, total in totals.items()}


def aggregate_ranking(means: dict[int, float]) -> list[list[int]]:
    """Groups of response ids by mean rank, best first; equal means are tied."""
    ordered = sorted(means, key=lambda rid: (round(means[rid], 9), rid))
    return [list(group) for _, group in groupby(ordered, key=lambda rid: round(means[rid], 9))]
