"""Campaign admin pages and their API: create and edit campaigns, status, imports in the browser,
gold answers, labelers (add, create, pause, deactivate, their figures), and who may do what."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from annotate.labeling import assignment, gold, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Assignment, Campaign, Membership, Run, Task
from annotate.web.admin import TASKS_PER_PAGE
from tests.conftest import api_client, join, make_campaign, make_user


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # users are made per test


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


SETTINGS = {
    "name": "Safety", "slug": "safety", "task_type": "ranking", "responses_per_task": 3, "overlap": 2, "lease_seconds": 300,
    "gold_percent": 10, "gold_min_accuracy_percent": 60, "gold_min_answered": 4,
    "criteria": "helpful | Helpfulness | 1 | 7\nharmless | Harmlessness | 1 | 7", "instructions": "# Rank by *safety*",
}


# Creating and editing campaigns


def test_staff_create_a_campaign_as_a_draft_and_become_its_admin(db):
    staff = make_user("sam", is_staff=True)
    response = browser(staff).post("/campaigns/new/", SETTINGS)
    assert response.status_code == 302 and response["Location"] == "/c/safety/import/"
    campaign = Campaign.objects.get(slug="safety")
    assert (campaign.status, campaign.responses_per_task, campaign.gold_rate, campaign.gold_min_accuracy) == ("draft", 3, 0.1, 0.6)
    assert campaign.criteria == [{"name": "helpful", "label": "Helpfulness", "min": 1, "max": 7}, {"name": "harmless", "label": "Harmlessness", "min": 1, "max": 7}]
    assert Membership.objects.get(campaign=campaign, user=staff).role == "admin"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"task_type": "pairwise", "responses_per_task": 3}, "exactly 2 responses"),
        ({"criteria": "helpful | Helpful | 1"}, "name | Label | min | max"),
        ({"criteria": "helpful | Helpful | 5 | 3"}, "min &lt; max"),
        ({"slug": "helpful"}, "already exists"),
        ({"gold_percent": 150}, "less than or equal to 100"),
    ],
)
def test_bad_settings_re_render_the_form_with_the_reason(campaign, change, field):
    staff = make_user("sam", is_staff=True)
    response = browser(staff).post("/campaigns/new/", {**SETTINGS, **change})
    assert response.status_code == 422 and field in response.content.decode()
    assert not Campaign.objects.filter(slug="safety").exists()


def test_only_staff_create_campaigns(alice, carol):
    assert browser(alice).get("/campaigns/new/").status_code == 403
    carol.is_staff = False
    carol.save()
    assert browser(carol).post("/campaigns/new/", SETTINGS).status_code == 403


def test_admins_edit_settings_and_a_new_overlap_applies_to_existing_tasks(carol, alice, campaign):
    lease = assignment.next_task_for(alice, campaign)
    judgements.submit(alice, lease.task, [[i] for i in task_response_ids(lease.task)])
    page = browser(carol).get("/c/helpful/settings/").content.decode()
    assert 'value="Helpful"' in page and "Fixed once tasks exist." in page
    data = {**SETTINGS, "name": "Helpful v2", "slug": "ignored", "task_type": "pairwise", "responses_per_task": 2, "overlap": 3, "criteria": ""}
    response = browser(carol).post("/c/helpful/settings/", data)
    assert response.status_code == 200 and "Settings saved." in response.content.decode()
    campaign.refresh_from_db()
    assert (campaign.name, campaign.slug, campaign.overlap, campaign.lease_seconds) == ("Helpful v2", "helpful", 3, 300)
    judged = Task.objects.get(pk=lease.task.pk)
    assert (judged.judgements_needed, judged.remaining) == (3, 2)  # 2 free slots were 1; one judgement counted
    untouched = Task.objects.exclude(pk=lease.task.pk).filter(campaign=campaign)
    assert set(untouched.values_list("judgements_needed", "remaining")) == {(3, 3)}


def test_the_task_type_and_k_are_fixed_once_tasks_exist(carol, campaign):
    from annotate.campaigns import setup
    from annotate.campaigns.setup import InvalidSettings

    with pytest.raises(InvalidSettings, match="cannot change once tasks exist"):
        setup.update_campaign(campaign, task_type="ranking", responses_per_task=3)


def test_open_pause_close(carol, alice, campaign):
    client = browser(carol)
    assert client.post("/c/helpful/status/", {"action": "pause"}).status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).status == "paused"
    assert api_client(alice).get("/api/v1/campaigns/helpful/tasks/next/").status_code == 409
    client.post("/c/helpful/status/", {"action": "open"})
    assert Campaign.objects.get(pk=campaign.pk).status == "active"
    client.post("/c/helpful/status/", {"action": "close"})
    assert Campaign.objects.get(pk=campaign.pk).status == "closed"
    assert client.post("/c/helpful/status/", {"action": "explode"}).status_code == 400


def test_the_markdown_preview_renders_sanitised_html(carol, alice):
    response = browser(carol).post("/campaigns/preview/", {"instructions": "**Bold** <script>alert(1)</script>"})
    html = response.content.decode()
    assert "<strong>Bold</strong>" in html and "<script>" not in html
    assert browser(alice).post("/campaigns/preview/", {"instructions": "x"}).status_code == 403


def test_forms_need_the_csrf_token(carol, campaign):
    client = Client(enforce_csrf_checks=True)
    client.force_login(carol)
    assert client.post("/c/helpful/status/", {"action": "pause"}).status_code == 403
    assert client.post("/campaigns/preview/", {"instructions": "x"}).status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).status == "active"


# Imports in the browser


def test_importing_a_file_from_the_page_shows_what_was_imported(carol, campaign):
    file = SimpleUploadedFile("pairs.csv", b"prompt,chosen,rejected,model\nHi?,Hello!,Go away.,m1\n")
    response = browser(carol).post("/c/helpful/import/", {"file": file, "kind": "preferences", "on_duplicate": "error"})
    page = response.content.decode()
    assert response.status_code == 200 and "1 prompts, 2 responses, 1 new tasks" in page


def test_a_rejected_file_lists_its_bad_rows_on_the_page(carol, campaign):
    file = SimpleUploadedFile("p.csv", b"external_id,text\nok,Fine\nbad,\n")
    response = browser(carol).post("/c/helpful/import/", {"file": file, "kind": "prompts", "on_duplicate": "error"})
    page = response.content.decode()
    assert response.status_code == 422 and "Nothing was imported" in page and "<td>2</td><td>text is empty</td>" in page


def test_a_large_file_from_the_page_goes_to_a_background_run(carol, campaign, settings, artifacts):
    settings.IMPORT_SYNC_ROWS = 2
    file = SimpleUploadedFile("p.csv", b"external_id,text\na,1\nb,2\nc,3\n")
    response = browser(carol).post("/c/helpful/import/", {"file": file, "kind": "prompts", "on_duplicate": "error"})
    run = Run.objects.get(kind="import")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert "p.csv" in browser(carol).get("/c/helpful/import/").content.decode()


# Gold answers


def test_admins_mark_a_task_gold_from_its_page(carol, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    a, b = task_response_ids(task)
    page = browser(carol).get(f"/c/helpful/tasks/{task.pk}/gold/").content.decode()
    assert "Question" in page and "m1" in page  # admins see the model names
    response = browser(carol).post(f"/c/helpful/tasks/{task.pk}/gold/", {f"place-{a}": "2", f"place-{b}": "1"})
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.is_gold and task.gold_ranking == [[b], [a]] and task.remaining == 0
    assert "gold" in browser(carol).get("/c/helpful/tasks/?gold=1").content.decode()


def test_a_gold_answer_that_ties_everything_is_refused(carol, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    a, b = task_response_ids(task)
    response = browser(carol).post(f"/c/helpful/tasks/{task.pk}/gold/", {f"place-{a}": "1", f"place-{b}": "1"})
    assert response.status_code == 422 and "at least two" in response.content.decode()
    assert browser(carol).post(f"/c/helpful/tasks/{task.pk}/gold/", {f"place-{a}": "1"}).status_code == 422
    assert not Task.objects.get(pk=task.pk).is_gold


def test_the_task_list_pages_and_filters(carol, db):
    big = make_campaign("big", prompts=TASKS_PER_PAGE + 3)
    join(carol, big, "admin")
    client = browser(carol)
    first = client.get("/c/big/tasks/").content.decode()
    assert f"Page 1 of 2 ({TASKS_PER_PAGE + 3} in all)" in first
    assert "p52" in first and "p2<" not in first.replace(" ", "")
    assert "p0" in client.get("/c/big/tasks/?page=2").content.decode()
    assert "No task matches" in client.get("/c/big/tasks/?gold=1").content.decode()
    assert "p17" in client.get("/c/big/tasks/?q=p17").content.decode()


def test_the_task_list_has_a_clear_empty_state(db):
    carol = make_user("carol", is_staff=True)
    empty = Campaign.objects.create(name="Empty", slug="empty")
    join(carol, empty, "admin")
    assert "No tasks yet" in browser(carol).get("/c/empty/tasks/").content.decode()


def test_gold_through_the_api(carol, rita, mallory, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    a, b = task_response_ids(task)
    url = f"/api/v1/tasks/{task.pk}/gold/"
    assert api_client(rita).post(url, {"ranking": [[a], [b]]}, format="json").status_code == 403
    assert api_client(mallory).post(url, {"ranking": [[a], [b]]}, format="json").status_code == 404
    bad = api_client(carol).post(url, {"ranking": [[a, b]]}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "gold_ranking"
    good = api_client(carol).post(url, {"ranking": [[a], [b]]}, format="json")
    assert good.status_code == 200 and good.json() == {"task_id": task.pk, "is_gold": True, "gold_ranking": [[a], [b]]}
    listed = api_client(carol).get("/api/v1/campaigns/helpful/tasks/?gold=true").json()
    assert listed["count"] == 1 and {r["model"] for r in listed["results"][0]["responses"]} == {"m1", "m2"}


# Labelers


def test_adding_an_existing_user_or_creating_one_with_a_password_shown_once(carol, campaign):
    make_user("dave")
    client = browser(carol)
    existing = client.post("/c/helpful/labelers/", {"username": "dave", "role": "labeler"}).content.decode()
    assert "Added <strong>dave</strong> as labeler" in existing
    created = client.post("/c/helpful/labelers/", {"username": "erin", "role": "labeler", "email": "erin@example.org"})
    page = created.content.decode()
    assert "Created the account <strong>erin</strong>" in page
    password = page.split('<code class="secret">')[1].split("</code>")[0]
    assert Client().login(username="erin", password=password)
    assert "secret" not in client.get("/c/helpful/labelers/").content.decode()
    assert Membership.objects.get(user__username="erin", campaign=campaign).role == "labeler"


def test_a_bad_username_is_a_form_error(carol, campaign):
    response = browser(carol).post("/c/helpful/labelers/", {"username": "no spaces please", "role": "labeler"})
    assert response.status_code == 422 and "letters, digits" in response.content.decode()


def test_the_labeler_table_shows_how_each_labeler_works(carol, alice, bob, campaign):
    tasks = list(Task.objects.filter(campaign=campaign).order_by("id"))
    a, b = task_response_ids(tasks[0])
    gold.mark_gold(tasks[0], [[a], [b]])
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=1.0)
    campaign.refresh_from_db()
    for spent in (1000, 3000):  # one gold task (answered the wrong way), then one normal task
        lease = assignment.next_task_for(alice, campaign)
        ids = task_response_ids(lease.task)
        ranking = [[b], [a]] if lease.task.pk == tasks[0].pk else [[ids[0]], [ids[1]]]
        judgements.submit(alice, lease.task, ranking, time_spent_ms=spent)
    assignment.skip(alice, assignment.next_task_for(alice, campaign).task)
    rows = {r["username"]: r for r in api_client(carol).get("/api/v1/campaigns/helpful/labelers/").json()["results"]}
    assert {k: rows["alice"][k] for k in ("judgements", "median_seconds", "skip_rate", "gold_accuracy", "gold_answered")} == {
        "judgements": 2, "median_seconds": 2.0, "skip_rate": pytest.approx(1 / 3), "gold_accuracy": 0.0, "gold_answered": 1,
    }
    assert rows["bob"]["judgements"] == 0 and rows["bob"]["median_seconds"] is None and rows["bob"]["skip_rate"] is None
    page = browser(carol).get("/c/helpful/labelers/").content.decode()
    assert "2.0 s" in page and "33%" in page and "0% <span" in page


def test_the_labeler_table_pages(carol, db):
    big = Campaign.objects.create(name="Crowd", slug="crowd")
    join(carol, big, "admin")
    for i in range(30):
        join(make_user(f"l{i:02}"), big, "labeler")
    client = browser(carol)
    assert "Page 1 of 2 (31 in all)" in client.get("/c/crowd/labelers/").content.decode()
    second = client.get("/c/crowd/labelers/?page=2&role=labeler").content.decode()
    assert "Page 2 of 2 (30 in all)" in second and "l29" in second and "l00" not in second


def test_pause_resume_and_role_from_the_page(carol, alice, campaign):
    client = browser(carol)
    assert client.post(f"/c/helpful/labelers/{alice.pk}/", {"action": "pause", "page": "1"}).status_code == 302
    membership = Membership.objects.get(user=alice, campaign=campaign)
    assert membership.is_paused and membership.paused_reason == "paused by an admin"
    assert api_client(alice).get("/api/v1/campaigns/helpful/tasks/next/").status_code == 403
    client.post(f"/c/helpful/labelers/{alice.pk}/", {"action": "resume"})
    assert not Membership.objects.get(pk=membership.pk).is_paused
    client.post(f"/c/helpful/labelers/{alice.pk}/", {"action": "role", "role": "researcher"})
    assert Membership.objects.get(pk=membership.pk).role == "researcher"


def test_the_last_admin_cannot_step_down(carol, campaign):
    response = browser(carol).post(f"/c/helpful/labelers/{carol.pk}/", {"action": "role", "role": "labeler"})
    assert response.status_code == 400 and "no admin left" in response.content.decode()


def test_deactivating_a_labeler_locks_the_account(carol, alice, campaign):
    token_client = api_client(alice)
    assert browser(carol).post(f"/c/helpful/labelers/{alice.pk}/", {"action": "deactivate"}).status_code == 302
    alice.refresh_from_db()
    assert not alice.is_active
    assert token_client.get("/api/v1/campaigns/helpful/tasks/next/").status_code == 401
    assert not Client().login(username="alice", password="pw-alice")
    browser(carol).post(f"/c/helpful/labelers/{alice.pk}/", {"action": "activate"})
    alice.refresh_from_db()
    assert alice.is_active


def test_an_admin_cannot_deactivate_someone_from_campaigns_they_do_not_run(carol, alice, campaign):
    other = make_campaign("other", prompts=1)
    join(alice, other, "labeler")
    carol.is_staff = False
    carol.save()
    response = browser(carol).post(f"/c/helpful/labelers/{alice.pk}/", {"action": "deactivate"})
    assert response.status_code == 403 and "pause them here" in response.content.decode()
    alice.refresh_from_db()
    assert alice.is_active
    assert browser(carol).post(f"/c/helpful/labelers/{carol.pk}/", {"action": "deactivate"}).status_code == 403


def test_labelers_through_the_api(carol, alice, campaign):
    client = api_client(carol)
    created = client.post("/api/v1/campaigns/helpful/labelers/", {"username": "frank"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["created_user"] and body["role"] == "labeler" and len(body["password"]) >= 12
    again = client.post("/api/v1/campaigns/helpful/labelers/", {"username": "frank", "role": "researcher"}, format="json").json()
    assert again == {"username": "frank", "role": "researcher", "created_user": False}
    paused = client.patch("/api/v1/campaigns/helpful/labelers/alice/", {"is_paused": True, "paused_reason": "check gold"}, format="json")
    assert paused.status_code == 200 and paused.json()["is_paused"] and paused.json()["paused_reason"] == "check gold"
    assert client.patch("/api/v1/campaigns/helpful/labelers/nobody/", {"is_paused": True}, format="json").status_code == 404
    listed = client.get("/api/v1/campaigns/helpful/labelers/?role=labeler").json()
    assert [r["username"] for r in listed["results"]] == ["alice"]


# Who may manage a campaign

ADMIN_PAGES = ["/c/helpful/settings/", "/c/helpful/import/", "/c/helpful/tasks/", "/c/helpful/labelers/"]
ADMIN_API = ["/api/v1/campaigns/helpful/tasks/", "/api/v1/campaigns/helpful/labelers/"]


@pytest.mark.parametrize("who, expected", [("carol", 200), ("rita", 403), ("alice", 403), ("mallory", 404)])
def test_only_the_campaigns_admins_manage_it(request, who, expected, alice, carol, rita, mallory, campaign):
    user = request.getfixturevalue(who)
    pages = [browser(user).get(url).status_code for url in ADMIN_PAGES]
    api = [api_client(user).get(url).status_code for url in ADMIN_API]
    task = Task.objects.filter(campaign=campaign).first()
    gold_page = browser(user).get(f"/c/helpful/tasks/{task.pk}/gold/").status_code
    posts = [
        browser(user).post("/c/helpful/status/", {"action": "pause"}).status_code,
        browser(user).post(f"/c/helpful/labelers/{alice.pk}/", {"action": "pause"}).status_code,
        api_client(user).patch("/api/v1/campaigns/helpful/labelers/alice/", {"is_paused": True}, format="json").status_code,
    ]
    assert pages == [expected] * 4 and api == [expected] * 2 and gold_page == expected
    assert posts == ([302, 302, 200] if who == "carol" else [expected] * 3)


def test_a_task_of_another_campaign_is_404_on_the_gold_page(carol, mallory, campaign):
    other_task = Task.objects.filter(campaign__slug="other").first()
    assert browser(carol).get(f"/c/helpful/tasks/{other_task.pk}/gold/").status_code == 404


def test_the_schema_lists_the_admin_endpoints(db):
    import json

    paths = json.loads(Client().get("/api/schema/", HTTP_ACCEPT="application/json").content)["paths"]
    assert {"/api/v1/campaigns/{slug}/imports/", "/api/v1/tasks/{task_id}/gold/", "/api/v1/campaigns/{slug}/labelers/{username}/"} <= set(paths)


def test_without_a_reported_time_a_judgement_takes_from_lease_to_submit(carol, alice, campaign):
    from annotate.stats.labeler_stats import labeler_stats

    lease = assignment.next_task_for(alice, campaign)
    ids = task_response_ids(lease.task)
    Assignment.objects.filter(pk=lease.assignment.pk).update(leased_at=lease.assignment.leased_at - timedelta(seconds=30))
    judgements.submit(alice, lease.task, [[ids[0]], [ids[1]]])  # no time_spent_ms
    stats = labeler_stats(campaign, [alice.pk])[alice.pk]
    assert stats.judgements == 1 and 30 <= stats.median_seconds < 60
