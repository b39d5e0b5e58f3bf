"""Many labelers racing for the same tasks over real, parallel database connections."""
from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection
from django.db.models import Count

from annotate.labeling import assignment, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Assignment, Judgement, Task
from tests.conftest import join, make_campaign, make_user

LABELERS = 32


def label_until_empty(user, campaign, start: threading.Barrier, stored: list, errors: list) -> None:
    try:
        start.wait()
        while (lease := assignment.next_task_for(user, campaign)) is not None:
            ids = task_response_ids(lease.task)
            submission = judgements.submit(user, lease.task, [[ids[0]], ids[1:]], key=f"{user.pk}-{lease.task.pk}")
            stored.append(submission.judgement.pk)
    except Exception as exc:  # surfaced by the assertion below
        errors.append(repr(exc))
    finally:
        close_old_connections()
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_racing_labelers_never_over_serve_or_double_serve():
    campaign = make_campaign(prompts=40, overlap=3)
    users = [join(make_user(f"labeler{i}"), campaign, "labeler") for i in range(LABELERS)]
    start = threading.Barrier(LABELERS)
    stored: list[int] = []
    errors: list[str] = []
    threads = [threading.Thread(target=label_until_empty, args=(u, campaign, start, stored, errors)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    assert len(stored) == len(set(stored)) == Judgement.objects.count() == 40 * 3
    per_task = Task.objects.filter(campaign=campaign).annotate(n=Count("judgements"))
    assert all(t.n == t.judgements_received == t.judgements_needed == 3 and t.remaining == 0 for t in per_task)
    twice = Assignment.objects.values("task", "labeler").annotate(n=Count("id")).filter(n__gt=1)
    assert not twice.exists()
    assert not Judgement.objects.filter(is_surplus=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_double_click_with_one_key_stores_one_judgement():
    campaign = make_campaign(prompts=1, overlap=1)
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, campaign)
    ids = task_response_ids(lease.task)
    start = threading.Barrier(8)
    results: list = []

    def click():
        try:
            start.wait()
            results.append(judgements.submit(alice, lease.task, [[ids[0]], [ids[1]]], key="same").judgement.pk)
        except Exception as exc:
            results.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(results)) == 1 and isinstance(results[0], int), results
    assert Judgement.objects.count() == 1
