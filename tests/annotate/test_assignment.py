"""The assignment engine: overlap, never twice, priority, leases, skips, surplus."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.core.errors import AlreadySubmitted, CampaignNotOpen, InvalidRanking, NotLeased
from annotate.labeling import assignment, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Assignment, Campaign, Judgement, Task
from tests.conftest import join, make_campaign, make_user


def rank(task):
    ids = task_response_ids(task)
    return [[ids[0]], ids[1:]]


def label_one(user, campaign):
    lease = assignment.next_task_for(user, campaign)
    judgements.submit(user, lease.task, rank(lease.task))
    return lease.task


def test_a_task_is_never_served_beyond_its_overlap(db):
    campaign = make_campaign(prompts=1, overlap=2)
    users = [join(make_user(f"u{i}"), campaign, "labeler") for i in range(3)]
    first, second = (assignment.next_task_for(u, campaign) for u in users[:2])
    assert first.task == second.task
    assert assignment.next_task_for(users[2], campaign) is None


def test_a_task_is_never_served_twice_to_the_same_labeler(alice, campaign):
    seen = []
    while (lease := assignment.next_task_for(alice, campaign)) is not None:
        seen.append(lease.task.pk)
        judgements.submit(alice, lease.task, rank(lease.task))
    assert len(seen) == len(set(seen)) == campaign.tasks.count()


def test_a_reload_returns_the_task_already_leased(alice, campaign):
    first = assignment.next_task_for(alice, campaign)
    again = assignment.next_task_for(alice, campaign)
    assert again.task == first.task and not again.is_new
    assert Assignment.objects.filter(labeler=alice).count() == 1


def test_higher_priority_first_then_oldest(alice, campaign):
    tasks = list(campaign.tasks.order_by("id"))
    Task.objects.filter(pk=tasks[3].pk).update(priority=5)
    order = [label_one(alice, campaign).pk for _ in range(3)]
    assert order == [tasks[3].pk, tasks[0].pk, tasks[1].pk]


def test_an_expired_lease_returns_its_slot_to_the_pool(db):
    campaign = make_campaign(prompts=1, overlap=1)
    alice, bob = (join(make_user(n), campaign, "labeler") for n in ("alice", "bob"))
    lease = assignment.next_task_for(alice, campaign)
    assert assignment.next_task_for(bob, campaign) is None
    later = timezone.now() + timedelta(seconds=campaign.lease_seconds + 1)
    assert assignment.reclaim_expired_leases(campaign, now=later) == 1
    assert Assignment.objects.get(pk=lease.assignment.pk).state == Assignment.State.EXPIRED
    assert assignment.next_task_for(bob, campaign).task == lease.task


def test_a_late_judgement_counts_when_the_task_still_needs_it(db):
    campaign = make_campaign(prompts=1, overlap=1)
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, campaign)
    assignment.reclaim_expired_leases(campaign, now=timezone.now() + timedelta(days=1))
    submission = judgements.submit(alice, lease.task, rank(lease.task))
    task = Task.objects.get(pk=lease.task.pk)
    assert not submission.judgement.is_surplus
    assert (task.judgements_received, task.remaining) == (1, 0)


def test_a_late_judgement_on_a_full_task_is_kept_as_surplus(db):
    campaign = make_campaign(prompts=1, overlap=1)
    alice, bob = (join(make_user(n), campaign, "labeler") for n in ("alice", "bob"))
    lease = assignment.next_task_for(alice, campaign)
    assignment.reclaim_expired_leases(campaign, now=timezone.now() + timedelta(days=1))
    label_one(bob, campaign)
    submission = judgements.submit(alice, lease.task, rank(lease.task))
    task = Task.objects.get(pk=lease.task.pk)
    assert submission.judgement.is_surplus
    assert Judgement.objects.filter(task=task).count() == 2
    assert (task.judgements_received, task.remaining) == (1, 0)


def test_a_skipped_task_is_not_served_again_and_frees_its_slot(db):
    campaign = make_campaign(prompts=2, overlap=1)
    alice, bob = (join(make_user(n), campaign, "labeler") for n in ("alice", "bob"))
    skipped = assignment.next_task_for(alice, campaign).task
    assignment.skip(alice, skipped)
    assert assignment.next_task_for(alice, campaign).task != skipped
    assert assignment.next_task_for(bob, campaign).task == skipped


def test_a_second_judgement_on_the_same_task_is_refused(alice, campaign):
    task = label_one(alice, campaign)
    with pytest.raises(AlreadySubmitted):
        judgements.submit(alice, task, rank(task))


def test_the_same_idempotency_key_stores_one_judgement(alice, campaign):
    lease = assignment.next_task_for(alice, campaign)
    first = judgements.submit(alice, lease.task, rank(lease.task), key="k1")
    again = judgements.submit(alice, lease.task, rank(lease.task), key="k1")
    assert again.replayed and again.judgement.pk == first.judgement.pk
    assert Judgement.objects.count() == 1


def test_a_judgement_without_a_lease_is_refused(alice, bob, campaign):
    lease = assignment.next_task_for(alice, campaign)
    with pytest.raises(NotLeased):
        judgements.submit(bob, lease.task, rank(lease.task))


@pytest.mark.parametrize(
    "make_ranking, message",
    [
        (lambda ids: [[ids[0]], [999_999]], "not in this task"),
        (lambda ids: [[ids[0]]], "misses"),
        (lambda ids: [[ids[0]], [ids[0], ids[1]]], "repeats"),
        (lambda ids: [], "non-empty"),
        (lambda ids: [ids[0], ids[1]], "group"),
        (lambda ids: [["x"], [ids[1]]], "not an integer"),
    ],
)
def test_invalid_rankings_are_refused_and_nothing_is_written(alice, campaign, make_ranking, message):
    lease = assignment.next_task_for(alice, campaign)
    with pytest.raises(InvalidRanking, match=message):
        judgements.submit(alice, lease.task, make_ranking(task_response_ids(lease.task)))
    assert Judgement.objects.count() == 0
    assert Assignment.objects.get(pk=lease.assignment.pk).state == Assignment.State.OPEN


def test_ties_are_stored_as_one_group(db):
    campaign = make_campaign(task_type="ranking", k=4, prompts=1, models=("a", "b", "c", "d"))
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, campaign)
    ids = task_response_ids(lease.task)
    stored = judgements.submit(alice, lease.task, [[ids[2]], [ids[0], ids[3]], [ids[1]]]).judgement
    assert Judgement.objects.get(pk=stored.pk).ranking == [[ids[2]], [ids[0], ids[3]], [ids[1]]]


def test_a_paused_campaign_serves_nothing(alice, campaign):
    campaign.status = Campaign.Status.PAUSED
    campaign.save()
    with pytest.raises(CampaignNotOpen):
        assignment.next_task_for(alice, campaign)


def test_progress_counts(alice, bob, campaign):
    label_one(alice, campaign)
    label_one(bob, campaign)
    counts = assignment.progress(campaign, alice)
    assert counts["tasks"] == 5
    assert counts["judgements_needed"] == 10 and counts["judgements_received"] == 2
    assert counts["complete_tasks"] == 1 and counts["open_tasks"] == 4
    assert counts["labeler_submitted"] == 1
