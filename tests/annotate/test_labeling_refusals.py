"""The labeling pages refuse as the API does (403 with a message, never a 500), and show a task only to its lease holder."""
from __future__ import annotations

import json

from django.test import Client

from annotate.labeling import assignment, gold
from annotate.labeling.validation import task_response_ids
from annotate.models import Assignment, Campaign, Judgement, Membership, Task


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def pause(user, campaign):
    Membership.objects.filter(user=user, campaign=campaign).update(is_paused=True, paused_reason="by hand")


def test_a_paused_labeler_opening_the_labeling_page_gets_403_with_a_message(alice, campaign):
    pause(alice, campaign)
    response = browser(alice).get("/c/helpful/label/")
    assert response.status_code == 403
    assert "You are paused in this campaign" in response.content.decode()
    assert not Assignment.objects.filter(labeler=alice).exists()


def test_a_submit_that_triggers_the_gold_pause_is_stored_and_says_so(alice, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    a, b = task_response_ids(task)
    gold.mark_gold(task, [[a], [b]])
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=1.0, gold_min_accuracy=0.9, gold_min_answered=1)
    client = browser(alice)
    assert client.get("/c/helpful/label/").status_code == 200
    assert Assignment.objects.get(labeler=alice, state="open").task_id == task.pk
    response = client.post(f"/tasks/{task.pk}/submit/", {"ranking": json.dumps([[b], [a]])})  # the wrong way round
    assert response.status_code == 200
    assert Judgement.objects.filter(labeler=alice, task=task).exists()
    assert Membership.objects.get(user=alice, campaign=campaign).is_paused
    assert "You are paused" in response.content.decode()


def test_skipping_a_task_one_does_not_hold_is_403(alice, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    response = browser(alice).post(f"/tasks/{task.pk}/skip/")
    assert response.status_code == 403 and "not leased to you" in response.content.decode()


def test_a_bad_ranking_shows_the_task_only_to_its_lease_holder(alice, bob, campaign):
    lease = assignment.next_task_for(alice, campaign)
    prompt_text = lease.task.prompt.messages[0]["content"]
    pause(bob, campaign)
    for user in (bob,):  # a labeler of the campaign (paused, too) who was never served the task
        response = browser(user).post(f"/tasks/{lease.task.pk}/submit/", {"ranking": "[[1]]"})
        assert response.status_code == 403
        page = response.content.decode()
        assert prompt_text not in page and "Answer" not in page
    held = browser(alice).post(f"/tasks/{lease.task.pk}/submit/", {"ranking": "[[1]]"})
    assert held.status_code == 422 and prompt_text in held.content.decode()


def test_gold_tasks_do_not_leak_through_the_submit_error_page(alice, bob, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    a, b = task_response_ids(task)
    gold.mark_gold(task, [[a], [b]])
    response = browser(bob).post(f"/tasks/{task.pk}/submit/", {"ranking": "not json"})
    assert response.status_code == 403 and task.prompt.messages[0]["content"] not in response.content.decode()
