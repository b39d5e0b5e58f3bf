"""Inter-annotator agreement: how far the labelers' rankings of the same tasks agree.

- Krippendorff's alpha, ordinal, from the `krippendorff` package. Units are (task, response)
  items; the value a labeler gives a unit is the response's rank in their ranking, with tied
  responses sharing the mean of the places they span (fractional ranks: [[a], [b, c]] gives
  a 1, b and c 2.5), so a tie sits between the two orders it stands for.
- Pairwise campaigns also get the raw agreement rate and Fleiss' kappa over the three answers
  a labeler can give: left better, right better, tie ("both bad" is a tie). Tasks are rated by
  varying numbers of labelers, so both use the usual generalisation: P_i is the share of agreeing
  pairs of labelers on task i, the raw rate is the mean P_i, and chance agreement comes from the
  pooled answer shares. With the same number of labelers everywhere it is Fleiss (1971) exactly.
- Per labeler: the share of response pairs (a, b) on which they order a and b like the majority
  of the other labelers of that task (a strict majority among the others; pairs without one are
  not counted).

Gold tasks are left out, and so are paused labelers: their judgements count neither in the
campaign's figures nor as "the others" for anyone; they still get their own per-labeler figure.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import krippendorff
import numpy as np

from annotate.models import Campaign
from annotate.stats.rankings import CampaignRankings, Ranked, campaign_rankings

LEFT, RIGHT, TIE = 0, 1, 2


@dataclass(frozen=True)
class LabelerAgreement:
    agreement: float
    """Share of compared pairs ordered like the majority of the others."""
    pairs: int
    """Response pairs compared (those where the others had a strict majority)."""


@dataclass
class Agreement:
    judgements: int
    labelers: int
    shared_tasks: int
    """Tasks judged by at least two (unpaused) labelers: the only ones agreement can be measured on."""
    alpha: float | None = None
    """Krippendorff's alpha, ordinal, over fractional ranks; None when there is nothing to compare."""
    raw_agreement: float | None = None
    """Pairwise campaigns: mean share of agreeing labeler pairs per task."""
    kappa: float | None = None
    """Pairwise campaigns: Fleiss' kappa over left / right / tie."""
    per_labeler: dict[int, LabelerAgreement] = field(default_factory=dict)


def fractional_ranks(ranking: Sequence[Sequence[int]]) -> dict[int, float]:
    """Response id -> rank, 1 the best; tied responses share the mean of the places they span."""
    ranks, place = {}, 1
    for group in ranking:
        shared = place + (len(group) - 1) / 2
        for rid in group:
            ranks[rid] = shared
        place += len(group)
    return ranks


def ordinal_alpha(units: Iterable[Sequence[float]]) -> float | None:
    """Krippendorff's alpha (ordinal) of units given as the values their coders gave; None if undefined."""
    unit_of: list[int] = []
    values: list[float] = []
    for u, given in enumerate(units):
        if len(given) >= 2:  # a lone value is not pairable
            unit_of.extend([u] * len(given))
            values.extend(given)
    domain, column = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
    if len(domain) < 2:
        return None  # nothing, or everyone gave one and the same value: nothing to chance-correct
    _, row = np.unique(np.asarray(unit_of), return_inverse=True)
    counts = np.zeros((row.max() + 1, len(domain)), dtype=np.int64)
    np.add.at(counts, (row, column), 1)
    value = float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement="ordinal"))
    return value if np.isfinite(value) else None


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of an items x categories table of answer counts (items with under 2 answers are skipped)."""
    counts = _rated_twice(table)
    if counts is None:
        return None
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    if chance >= 1.0:
        return None  # one category only: agreement is certain, kappa undefined
    return (_mean_pair_agreement(counts) - chance) / (1.0 - chance)


def raw_agreement(table: Sequence[Sequence[int]]) -> float | None:
    """Mean over items (answered at least twice) of the share of answer pairs that agree."""
    counts = _rated_twice(table)
    return None if counts is None else _mean_pair_agreement(counts)


def _rated_twice(table) -> np.ndarray | None:
    if not len(table):
        return None
    counts = np.asarray(table, dtype=np.float64).reshape(len(table), -1)
    counts = counts[counts.sum(axis=1) >= 2]
    return counts if len(counts) else None


def _mean_pair_agreement(counts: np.ndarray) -> float:
    n = counts.sum(axis=1)
    return float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean())


def agreement_of(data: CampaignRankings, *, pairwise: bool) -> Agreement:
    """Every agreement figure of a campaign's loaded rankings (see the module docstring)."""
    counted = data.counted()
    by_task = _by_task(counted)
    shared = {task: judged for task, judged in by_task.items() if len(judged) >= 2}
    result = Agreement(
        judgements=len(counted),
        labelers=len({j.labeler_id for j in counted}),
        shared_tasks=len(shared),
        per_labeler=majority_agreement(data.judgements),
    )
    result.alpha = ordinal_alpha(_rank_units(shared))
    if pairwise:
        table = [_answer_counts(judged, data.position_of) for judged in shared.values()]
        result.raw_agreement, result.kappa = raw_agreement(table), fleiss_kappa(table)
    return result


def campaign_agreement(campaign: Campaign) -> Agreement:
    return agreement_of(campaign_rankings(campaign), pairwise=campaign.task_type == Campaign.TaskType.PAIRWISE)


def labeler_agreement(campaign: Campaign) -> dict[int, float]:
    """User id -> share of response pairs they order like the majority of the other (unpaused) labelers.

    Paused labelers are measured too (against the unpaused ones), so a labeler page can show why they
    were paused. Labelers with no pair to compare (nobody else judged their tasks yet) are absent.
    """
    return {uid: figure.agreement for uid, figure in majority_agreement(campaign_rankings(campaign).judgements).items()}


def majority_agreement(judgements: Iterable[Ranked]) -> dict[int, LabelerAgreement]:
    """Per labeler: pairs compared with the majority of the others, and the share they agreed on."""
    agreed: dict[int, int] = defaultdict(int)
    compared: dict[int, int] = defaultdict(int)
    for judged in _by_task(judgements).values():
        if len(judged) < 2:
            continue
        ranks = [fractional_ranks(j.ranking) for j in judged]
        for a, b in combinations(sorted(ranks[0]), 2):
            signs = [(r[a] < r[b]) - (r[a] > r[b]) for r in ranks]  # 1: a better, -1: b better, 0: tie
            votes = {-1: 0, 0: 0, 1: 0}
            for j, sign in zip(judged, signs):
                votes[sign] += not j.paused
            for j, sign in zip(judged, signs):
                own = 0 if j.paused else 1  # a paused labeler's vote was never counted
                others = sum(votes.values()) - own
                majority = [s for s, n in votes.items() if 2 * (n - own * (s == sign)) > others]
                if others and majority:
                    compared[j.labeler_id] += 1
                    agreed[j.labeler_id] += sign == majority[0]
    return {uid: LabelerAgreement(agreed[uid] / n, n) for uid, n in compared.items()}


def _by_task(judgements: Iterable[Ranked]) -> dict[int, list[Ranked]]:
    by_task: dict[int, list[Ranked]] = defaultdict(list)
    for j in judgements:
        by_task[j.task_id].append(j)
    return by_task


def _rank_units(by_task: dict[int, list[Ranked]]) -> Iterable[list[float]]:
    for judged in by_task.values():
        values: dict[int, list[float]] = defaultdict(list)
        for j in judged:
            for rid, rank in fractional_ranks(j.ranking).items():
                values[rid].append(rank)
        yield from values.values()


def _answer_counts(judged: list[Ranked], position_of: dict[int, int]) -> list[int]:
    """[left better, right better, tie] counts of a pairwise task's judgements."""
    counts = [0, 0, 0]
    for j in judged:
        if len(j.ranking) == 1:
            counts[TIE] += 1
        else:
            winner, loser = j.ranking[0][0], j.ranking[1][0]
            counts[LEFT if position_of[winner] < position_of[loser] else RIGHT] += 1
    return counts
