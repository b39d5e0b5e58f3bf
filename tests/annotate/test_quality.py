"""Gold tasks mixed in at the configured rate, gold scoring, automatic pausing, and criteria ratings."""
from __future__ import annotations

import pytest

from annotate.core.errors import InvalidRanking, LabelerPaused
from annotate.labeling import assignment, gold, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Campaign, Membership, Task
from tests.conftest import join, make_campaign, make_user


def make_gold(campaign, count):
    gold_tasks = list(Task.objects.filter(campaign=campaign).order_by("-id")[:count])
    for task in gold_tasks:
        ids = task_response_ids(task)
        gold.mark_gold(task, [[ids[0]], [ids[1]]])
    return {t.pk for t in gold_tasks}


@pytest.mark.parametrize(
    "ranking, truth, expected",
    [
        ([[1], [2], [3]], [[1], [2], [3]], 1.0),
        ([[3], [2], [1]], [[1], [2], [3]], 0.0),
        ([[1, 2], [3]], [[1], [2], [3]], 2 / 3),  # the tie of 1 and 2 is wrong, the rest right
        ([[2], [1], [3]], [[1, 2], [3]], 1.0),  # gold ties 1 and 2: that pair does not count
    ],
)
def test_gold_scores_by_hand(ranking, truth, expected):
    assert gold.gold_score(ranking, truth) == pytest.approx(expected)


def test_gold_is_mixed_in_at_the_configured_rate_and_looks_like_any_task(db):
    campaign = make_campaign(prompts=40, overlap=1)
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=0.25)
    campaign.refresh_from_db()
    gold_ids = make_gold(campaign, 10)
    alice = join(make_user("alice"), campaign, "labeler")
    served = []
    for _ in range(20):
        lease = assignment.next_task_for(alice, campaign)
        served.append(lease.task.pk)
        ids = task_response_ids(lease.task)
        judgements.submit(alice, lease.task, [[ids[0]], [ids[1]]])
    assert sum(pk in gold_ids for pk in served) == 5  # exactly a quarter of 20
    assert len(set(served)) == 20


def test_gold_tasks_stay_out_of_the_normal_queue(db):
    campaign = make_campaign(prompts=3, overlap=1)
    gold_ids = make_gold(campaign, 3)
    alice = join(make_user("alice"), campaign, "labeler")
    assert assignment.next_task_for(alice, campaign) is None  # rate 0: no gold served, nothing else left
    assert Task.objects.filter(pk__in=gold_ids, remaining=0).count() == 3


def test_a_labeler_under_the_gold_bar_is_paused_and_gets_no_more_tasks(db):
    campaign = make_campaign(prompts=20, overlap=1)
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=1.0, gold_min_accuracy=0.8, gold_min_answered=3)
    campaign.refresh_from_db()
    make_gold(campaign, 5)
    mallet = join(make_user("mallet"), campaign, "labeler")
    for _ in range(3):  # always the opposite of the gold answer
        lease = assignment.next_task_for(mallet, campaign)
        ids = task_response_ids(lease.task)
        judgements.submit(mallet, lease.task, [[ids[1]], [ids[0]]])
    membership = Membership.objects.get(user=mallet)
    assert membership.is_paused and "gold accuracy 0.00" in membership.paused_reason
    assert gold.paused_labeler_ids(campaign) == {mallet.pk}
    with pytest.raises(LabelerPaused):
        assignment.next_task_for(mallet, campaign)
    gold.set_paused(campaign, mallet, False)
    assert assignment.next_task_for(mallet, campaign) is not None


def test_a_gold_answer_must_be_a_valid_ordering(db):
    campaign = make_campaign(prompts=1)
    task = Task.objects.get(campaign=campaign)
    ids = task_response_ids(task)
    with pytest.raises(InvalidRanking):
        gold.mark_gold(task, [[ids[0]]])
    with pytest.raises(InvalidRanking, match="at least two"):
        gold.mark_gold(task, [ids])


def test_criteria_ratings_are_validated_and_stored(db):
    campaign = make_campaign(prompts=2, overlap=1)
    Campaign.objects.filter(pk=campaign.pk).update(criteria=[{"name": "helpful", "label": "Helpfulness", "min": 1, "max": 7}])
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, Campaign.objects.get(pk=campaign.pk))
    task = Task.objects.select_related("campaign").get(pk=lease.task.pk)
    ids = task_response_ids(task)
    for bad in ({str(ids[0]): {"helpful": 9}}, {str(ids[0]): {"honest": 3}}, {"999999": {"helpful": 3}}, [1, 2]):
        with pytest.raises(InvalidRanking) as caught:
            judgements.submit(alice, task, [[ids[0]], [ids[1]]], ratings=bad)
        assert caught.value.field == "ratings"
    stored = judgements.submit(alice, task, [[ids[0]], [ids[1]]], ratings={str(ids[0]): {"helpful": 6}, str(ids[1]): {"helpful": 2}})
    assert stored.judgement.ratings == {str(ids[0]): {"helpful": 6}, str(ids[1]): {"helpful": 2}}
