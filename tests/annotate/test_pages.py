"""The labeler's pages through Django's test client: login, home, labeling, submit, skip, escaping, access."""
from __future__ import annotations

import json
import re

from django.test import Client

from annotate.labeling.validation import task_response_ids
from annotate.models import Assignment, Judgement, Response
from tests.conftest import make_user


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def current_task(user):
    return Assignment.objects.get(labeler=user, state="open").task


def test_login_page_and_redirect_for_anonymous(db):
    client = Client()
    assert client.get("/").status_code == 302
    assert client.get("/login/").status_code == 200
    make_user("zed")
    response = client.post("/login/", {"username": "zed", "password": "pw-zed"})
    assert response.status_code == 302


def test_home_lists_my_campaigns_only(alice, mallory, campaign):
    page = browser(alice).get("/").content.decode()
    assert "Helpful" in page and "Other" not in page


def test_home_has_an_empty_state(db):
    page = browser(make_user("newbie")).get("/").content.decode()
    assert "not part of any campaign" in page


def test_the_labeling_page_shows_the_task_blind(alice, campaign):
    page = browser(alice).get(f"/c/{campaign.slug}/label/").content.decode()
    task = current_task(alice)
    for response in Response.objects.filter(tasks=task):
        assert response.text in page
        # labeling is blind; a whole-word match, since short names like "m1" turn up inside the random CSRF token
        assert not re.search(rf"\b{re.escape(response.model_version.name)}\b", page)
    assert "Keyboard shortcuts" in page


def test_submit_swaps_in_the_next_task(alice, campaign):
    client = browser(alice)
    client.get(f"/c/{campaign.slug}/label/")
    task = current_task(alice)
    ids = task_response_ids(task)
    response = client.post(f"/tasks/{task.pk}/submit/", {"ranking": json.dumps([[ids[1]], [ids[0]]]), "key": "x1", "rationale": "why", "time_spent_ms": "1234"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    judgement = Judgement.objects.get()
    assert (judgement.ranking, judgement.rationale, judgement.time_spent_ms) == ([[ids[1]], [ids[0]]], "why", 1234)
    assert current_task(alice) != task
    assert 'data-testid="done-count">1<' in response.content.decode()


def test_a_bad_ranking_re_renders_the_same_task_with_an_error(alice, campaign):
    client = browser(alice)
    client.get(f"/c/{campaign.slug}/label/")
    task = current_task(alice)
    response = client.post(f"/tasks/{task.pk}/submit/", {"ranking": "[[1]]", "key": "x"})
    assert response.status_code == 422
    assert "not in this task" in response.content.decode() or "misses" in response.content.decode()
    assert not Judgement.objects.exists()


def test_skip_serves_another_task(alice, campaign):
    client = browser(alice)
    client.get(f"/c/{campaign.slug}/label/")
    task = current_task(alice)
    client.post(f"/tasks/{task.pk}/skip/")
    assert current_task(alice) != task


def test_model_output_is_escaped(alice, campaign):
    task_response = Response.objects.filter(prompt__campaign=campaign).first()
    task_response.text = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    task_response.save()
    page = browser(alice).get(f"/c/{campaign.slug}/label/").content.decode()
    assert "<script>alert" not in page and "<img src=x" not in page


def test_instructions_markdown_is_sanitised(alice, campaign):
    campaign.instructions = "**Bold** <script>alert(1)</script> [x](javascript:alert(1))"
    campaign.save()
    page = browser(alice).get(f"/c/{campaign.slug}/label/").content.decode()
    assert "<strong>Bold</strong>" in page and "<script>alert(1)" not in page and "javascript:" not in page


def test_an_empty_queue_says_so(alice, campaign):
    campaign.tasks.update(remaining=0)
    page = browser(alice).get(f"/c/{campaign.slug}/label/").content.decode()
    assert "nothing left for you" in page


def test_other_campaigns_are_404_and_researchers_cannot_label(alice, rita, mallory, campaign):
    assert browser(mallory).get(f"/c/{campaign.slug}/label/").status_code == 404
    assert browser(rita).get(f"/c/{campaign.slug}/label/").status_code == 403
    browser(alice).get(f"/c/{campaign.slug}/label/")
    task = current_task(alice)
    assert browser(mallory).post(f"/tasks/{task.pk}/submit/", {"ranking": "[]"}).status_code == 404


def test_forms_need_the_csrf_token(alice, campaign):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get(f"/c/{campaign.slug}/label/")
    task = current_task(alice)
    assert client.post(f"/tasks/{task.pk}/skip/").status_code == 403
