"""Agreement figures against small examples worked by hand, and alpha against a textbook example."""
from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest

from annotate.labeling import assignment, gold, judgements, validation
from annotate.models import Task
from annotate.stats.agreement import (
    campaign_agreement,
    fleiss_kappa,
    fractional_ranks,
    labeler_agreement,
    ordinal_alpha,
    raw_agreement,
)
from tests.conftest import join, make_campaign, make_user

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units example:
# ordinal alpha 0.815 (nominal 0.743, interval 0.849).
TEXTBOOK = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories; P = 0.378, Pe = 0.213, kappa 0.210.
FLEISS_1971 = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_ordinal_alpha_matches_the_textbook_and_the_package():
    units = [[v for v in column if not math.isnan(v)] for column in zip(*TEXTBOOK)]
    assert ordinal_alpha(units) == pytest.approx(0.815, abs=5e-4)
    assert ordinal_alpha(units) == pytest.approx(krippendorff.alpha(np.array(TEXTBOOK), level_of_measurement="ordinal"))


def test_fleiss_kappa_matches_fleiss_1971():
    assert raw_agreement(FLEISS_1971) == pytest.approx(0.378, abs=5e-4)
    assert fleiss_kappa(FLEISS_1971) == pytest.approx(0.210, abs=5e-4)


def test_agreement_is_undefined_without_anything_to_compare():
    assert ordinal_alpha([[1], [2]]) is None  # nobody judged a unit twice
    assert ordinal_alpha([[1, 1], [1, 1]]) is None  # one value only: no chance correction possible
    assert fleiss_kappa([[2, 0, 0], [3, 0, 0]]) is None
    assert raw_agreement([[1, 0, 0]]) is None
    assert fleiss_kappa([]) is None


def test_tied_responses_share_the_mean_of_their_places():
    assert fractional_ranks([[7], [8, 9], [10]]) == {7: 1, 8: 2.5, 9: 2.5, 10: 4}
    assert fractional_ranks([[1, 2]]) == {1: 1.5, 2: 1.5}


ANSWERS = {"L": lambda l, r: [[l], [r]], "R": lambda l, r: [[r], [l]], "=": lambda l, r: [[l, r]]}


def judge_next(user, campaign, answer: str) -> Task:
    """Lease the labeler's next task and answer left better (L), right better (R) or tie (=)."""
    lease = assignment.next_task_for(user, campaign)
    left, right = validation.task_response_ids(lease.task)  # in display order
    judgements.submit(user, lease.task, ANSWERS[answer](left, right))
    return lease.task


@pytest.fixture
def worked_example(db):
    """Pairwise, overlap 4 (room for one more). Task 1: L L L; task 2: L R L; task 3: = R (alice, bob, dan in that order)."""
    campaign = make_campaign("worked", prompts=3, overlap=4)
    alice, bob, dan = (join(make_user(name), campaign, "labeler") for name in ("alice", "bob", "dan"))
    for user, answers in ((alice, "LL="), (bob, "LRR"), (dan, "LL")):
        for answer in answers:
            judge_next(user, campaign, answer)
    return campaign, alice, bob, dan


def test_campaign_agreement_matches_the_worked_example(worked_example):
    campaign, *_ = worked_example
    figures = campaign_agreement(campaign)
    # Units (task, response) with fractional ranks: T1 L [1,1,1] R [2,2,2]; T2 L [1,2,1] R [2,1,2]; T3 L [1.5,2] R [1.5,1].
    # Coincidences: o11 = o22 = 4, o12 = o21 = 2, o(1,1.5) = o(1.5,2) = 1 each way; n1 = n2 = 7, n1.5 = 2, n = 16.
    # Ordinal distances: d(1,1.5) = d(1.5,2) = 4.5^2 = 20.25, d(1,2) = (16 - 7)^2 = 81.
    # alpha = 1 - (n - 1) * sum(o * d) / sum(n_c * n_k * d) = 1 - 15 * 405 / 9072 = 37/112.
    assert figures.alpha == pytest.approx(37 / 112)
    # Answer counts [left, right, tie]: [3,0,0], [2,1,0], [0,1,1]. P_i = 1, 1/3, 0: raw agreement 4/9.
    assert figures.raw_agreement == pytest.approx(4 / 9)
    # Pooled shares 5/8, 2/8, 1/8: Pe = 30/64; kappa = (4/9 - 15/32) / (1 - 15/32) = -7/153.
    assert figures.kappa == pytest.approx(-7 / 153)
    assert (figures.judgements, figures.labelers, figures.shared_tasks) == (8, 3, 3)


def test_each_labeler_is_compared_with_the_majority_of_the_others(worked_example):
    campaign, alice, bob, dan = worked_example
    # T1: all agree. T2: alice and dan face a 1-1 split (not counted); bob differs from L, L.
    # T3: alice's tie against bob's R, bob's R against alice's tie.
    assert labeler_agreement(campaign) == {alice.pk: pytest.approx(1 / 2), bob.pk: pytest.approx(1 / 3), dan.pk: 1.0}
    per_labeler = campaign_agreement(campaign).per_labeler
    assert (per_labeler[alice.pk].pairs, per_labeler[bob.pk].pairs, per_labeler[dan.pk].pairs) == (2, 3, 1)


def test_paused_labelers_are_left_out_but_get_their_own_figure(worked_example):
    campaign, alice, bob, dan = worked_example
    before = campaign_agreement(campaign)
    eve = join(make_user("eve"), campaign, "labeler")
    judge_next(eve, campaign, "R")  # task 1, where the others all said L
    judge_next(eve, campaign, "R")  # task 2, where the others' majority said L
    gold.set_paused(campaign, eve, True, "by hand")
    after = campaign_agreement(campaign)
    assert (after.alpha, after.raw_agreement, after.kappa, after.judgements) == (
        before.alpha, before.raw_agreement, before.kappa, before.judgements
    )
    scores = labeler_agreement(campaign)
    assert scores[bob.pk] == pytest.approx(1 / 3)  # eve is not one of "the others"
    assert scores[eve.pk] == 0.0  # but she is measured against the unpaused majority


def test_gold_tasks_are_left_out(worked_example):
    campaign, alice, bob, dan = worked_example
    first = Task.objects.filter(campaign=campaign).order_by("id").first()
    left, right = validation.task_response_ids(first)
    gold.mark_gold(first, [[left], [right]])
    figures = campaign_agreement(campaign)
    assert figures.shared_tasks == 2
    assert figures.raw_agreement == pytest.approx((1 / 3 + 0) / 2)  # tasks 2 and 3 only
    # without task 1, dan has no pair with a majority left; alice and bob agree on none
    assert labeler_agreement(campaign) == {alice.pk: 0.0, bob.pk: 0.0}
