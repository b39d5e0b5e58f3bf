"""Bradley–Terry strengths: numbers worked by hand, and synthetic sets where the true order is known."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from annotate.labeling import assignment, gold, judgements, validation
from annotate.models import ModelVersion
from annotate.stats.bradley_terry import model_standings, outcomes, standings
from tests.conftest import join, make_campaign, make_user

TRUE = {"weak": -1.0, "fair": -0.3, "good": 0.4, "best": 0.9}  # centred log-odds strengths


def test_rankings_expand_to_ordered_pairs_with_ties_as_half_wins():
    model_of = {1: "A", 2: "B", 3: "C", 4: "A"}
    grouped = outcomes([[[1], [2, 3], [4]]], model_of)  # A > (B = C) > A'
    wins = dict(zip(grouped.model_ids, grouped.wins()))
    a, b, c = grouped.model_ids.index("A"), grouped.model_ids.index("B"), grouped.model_ids.index("C")
    assert wins["A"][b] == 1 and wins["A"][c] == 1  # the A-over-A' pair says nothing about models: dropped
    assert wins["B"][c] == 0.5 and wins["C"][b] == 0.5  # the tie
    assert wins["B"][a] == 1 and wins["C"][a] == 1  # both beat the second A response
    assert wins["A"][a] == 0


def test_two_models_three_wins_to_one_give_a_gap_of_log_3():
    model_of = {1: "A", 2: "B"}
    table = standings([[[1], [2]]] * 3 + [[[2], [1]]], model_of, rounds=0)
    by_name = {row.model_id: row for row in table}
    assert by_name["A"].strength - by_name["B"].strength == pytest.approx(math.log(3), abs=0.01)  # weak prior: ~0.3% shrink
    assert by_name["A"].strength == pytest.approx(-by_name["B"].strength)  # centred
    assert (by_name["A"].win_rate, by_name["B"].win_rate) == (0.75, 0.25)
    assert by_name["A"].comparisons == 4


def test_an_unbeaten_model_gets_a_finite_strength_and_an_open_interval():
    best, worst = standings([[[1], [2]]] * 5, {1: "A", 2: "B"}, rounds=20)
    assert (best.model_id, worst.model_id) == ("A", "B")
    assert math.isfinite(best.strength) and math.isfinite(worst.strength)
    assert (best.ci_high, worst.ci_low) == (math.inf, -math.inf)  # the data set no bound on that side
    assert math.isfinite(best.ci_low) and math.isfinite(worst.ci_high)


def synthetic_rankings(n: int, k: int, seed: int) -> tuple[list, dict]:
    """k-way rankings of random model subsets: utility = true strength + Gumbel noise (pairwise: logistic, as BT)."""
    rng = np.random.default_rng(seed)
    names = np.array(list(TRUE))
    picked = np.argsort(rng.random((n, len(names))), axis=1)[:, :k]  # k distinct models per task
    utility = np.array(list(TRUE.values()))[picked] + rng.gumbel(size=(n, k))
    ids = np.arange(n * k).reshape(n, k)
    best_first = np.take_along_axis(ids, np.argsort(-utility, axis=1), axis=1)
    rankings = [[[rid] for rid in row] for row in best_first.tolist()]
    return rankings, dict(zip(ids.ravel().tolist(), names[picked].ravel().tolist()))


@pytest.mark.parametrize("k", [2, 3])
def test_the_true_order_is_recovered_with_separated_intervals(k):
    rankings, model_of = synthetic_rankings(n=3000, k=k, seed=7)
    table = standings(rankings, model_of, rounds=100, seed=1)
    assert [row.model_id for row in table] == ["best", "good", "fair", "weak"]
    for row in table:
        assert row.ci_low < row.strength < row.ci_high
        assert row.strength == pytest.approx(TRUE[row.model_id], abs=0.15)
    for better, worse in zip(table, table[1:]):
        assert better.ci_low > worse.ci_high  # this much data separates them: the intervals do not overlap


def test_the_95_percent_intervals_contain_the_true_strengths_about_95_percent_of_the_time():
    covered = 0
    for seed in range(10):
        rankings, model_of = synthetic_rankings(n=2000, k=2, seed=100 + seed)
        covered += sum(row.ci_low <= TRUE[row.model_id] <= row.ci_high for row in standings(rankings, model_of, seed=seed))
    assert covered >= 34  # of 40 intervals; 38 expected, 34 is 2.6 standard deviations below


def test_ties_count_as_half_a_win_in_the_win_rate():
    table = standings([[[1, 2]], [[1], [2]]], {1: "A", 2: "B"}, rounds=0)
    assert {row.model_id: row.win_rate for row in table} == {"A": 0.75, "B": 0.25}


def test_bootstrap_intervals_are_seeded():
    rankings, model_of = synthetic_rankings(n=300, k=2, seed=3)
    assert standings(rankings, model_of, seed=5) == standings(rankings, model_of, seed=5)


def test_a_hundred_thousand_judgements_fit_in_seconds():
    rankings, model_of = synthetic_rankings(n=100_000, k=2, seed=11)
    started = time.perf_counter()
    table = standings(rankings, model_of, rounds=100)
    assert time.perf_counter() - started < 10  # about 0.5 s on 2 cores: outcomes are counted before fitting
    assert [row.model_id for row in table] == ["best", "good", "fair", "weak"]


def test_campaign_standings_leave_out_paused_labelers(db):
    campaign = make_campaign("bt", prompts=6, overlap=2, models=("small", "large"))
    alice, mallet = join(make_user("alice"), campaign, "labeler"), join(make_user("mallet"), campaign, "labeler")
    large = ModelVersion.objects.get(name="large").pk

    def judge_all(user, prefer_large: bool):
        while lease := assignment.next_task_for(user, campaign):
            ids = validation.task_response_ids(lease.task)
            ids.sort(key=lambda rid: (lease.task.responses.get(pk=rid).model_version_id == large) != prefer_large)
            judgements.submit(user, lease.task, [[ids[0]], [ids[1]]])

    judge_all(alice, prefer_large=True)
    judge_all(mallet, prefer_large=False)
    assert {row.win_rate for row in model_standings(campaign, rounds=10)} == {0.5}
    gold.set_paused(campaign, mallet, True, "gold accuracy")
    table = model_standings(campaign, rounds=10)
    assert [(row.model_id, row.win_rate, row.comparisons) for row in table] == [(large, 1.0, 6), (table[1].model_id, 0.0, 6)]
