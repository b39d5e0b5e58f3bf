"""Snapshots of large campaigns are written by a background run; the request answers 202 at once."""
from __future__ import annotations

import hashlib

import pytest

from annotate.exports import snapshot_job
from annotate.models import Run, Snapshot
from tests.annotate.test_exports import SNAPSHOTS, judge_all
from tests.annotate.test_jobs import work_off_queue
from tests.conftest import api_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def large(monkeypatch, campaign, alice, bob):
    """The campaign counts as large: any judgement beyond the in-request limit (lowered to 3)."""
    monkeypatch.setattr(snapshot_job, "IN_REQUEST_LIMIT", 3)
    judge_all(alice, campaign, "m1")
    judge_all(bob, campaign, "m2")
    return campaign


def test_a_large_campaigns_snapshot_is_written_by_a_run(large, rita, artifacts):
    client = api_client(rita)
    response = client.post(SNAPSHOTS, {"name": "big", "shape": "rankings", "format": "jsonl.gz", "filters": {"flagged": "exclude"}}, format="json")
    assert response.status_code == 202, response.content
    run = Run.objects.get(pk=response.json()["run"])
    assert (run.kind, run.status, response.json()["url"]) == ("snapshot", "queued", f"/api/v1/runs/{run.pk}/")
    assert not Snapshot.objects.exists()
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    snapshot = Snapshot.objects.get(name="big")
    assert (snapshot.shape, snapshot.format, snapshot.filters, snapshot.created_by) == ("rankings", "jsonl.gz", {"flagged": "exclude"}, rita)
    assert run.result == {"snapshot": "big", "version": 1, "content_hash": snapshot.content_hash, "row_counts": snapshot.row_counts}
    download = client.get(f"{SNAPSHOTS}big/download/")
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == snapshot.content_hash
    assert snapshot.row_counts["rows"] == 10


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"name": "taken"}, 409, "name"),
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "ok", "shape": "blob"}, 400, "shape"),
        ({"name": "ok", "filters": {"identities": "real"}}, 400, "identities"),
    ],
)
def test_a_large_campaigns_bad_snapshot_request_is_refused_at_once(large, rita, artifacts, payload, status, field):
    client = api_client(rita)
    client.post(SNAPSHOTS, {"name": "taken"}, format="json")
    work_off_queue()
    response = client.post(SNAPSHOTS, payload, format="json")
    assert response.status_code == status and response.json()["field"] == field
    assert Run.objects.filter(kind="snapshot").count() == 1
