"""Exports: three shapes, four containers, every filter, privacy, snapshots, and who may export."""
from __future__ import annotations

import gzip
import io
import json
import warnings
import zipfile
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.utils import timezone

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.exports import agreement, export, formats
from annotate.exports.options import FILTER_NAMES, FLAGGED, FORMATS, IDENTITIES, OPTION_NAMES, SHAPES, ExportFilters, ExportOptions
from annotate.exports.rows import encode_json, prompt_text, pseudonym
from annotate.labeling import assignment, gold, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Judgement, ModelVersion, Response, Snapshot, Task
from tests.conftest import api_client, join, make_campaign, make_user

URL = "/api/v1/campaigns/helpful/export/"


def judge_all(labeler, campaign, prefer="m1", **extra) -> list[Judgement]:
    """The labeler judges every task left for them: `prefer`'s response first, the rest after."""
    done = []
    while (lease := assignment.next_task_for(labeler, campaign)) is not None:
        ids = task_response_ids(lease.task)
        models = dict(Response.objects.filter(pk__in=ids).values_list("id", "model_version__name"))
        best = [rid for rid in ids if models[rid] == prefer] or ids[:1]
        ranking = [best, [rid for rid in ids if rid not in best]]
        done.append(judgements.submit(labeler, lease.task, ranking, **extra).judgement)
    return done


def judge_task(labeler, campaign, ranking_of):
    """The labeler judges their next task with `ranking_of(response ids in display order)`."""
    lease = assignment.next_task_for(labeler, campaign)
    return judgements.submit(labeler, lease.task, ranking_of(task_response_ids(lease.task))).judgement


def body(response) -> bytes:
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def rows_of(client, **params) -> list[dict]:
    return jsonl(body(client.get(URL, params)))


@pytest.fixture
def judged(campaign, alice, bob, rita, carol):
    """Alice prefers m1 everywhere, bob prefers m2: 5 tasks, 10 judgements."""
    return judge_all(alice, campaign, "m1") + judge_all(bob, campaign, "m2")


# Shapes


def test_pairs_are_trl_conversational_rows_with_provenance(judged, rita, alice, campaign):
    rows = rows_of(api_client(rita))
    assert len(rows) == 10
    first = rows[0]
    assert first["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert first["chosen"][0]["role"] == "assistant" and first["rejected"][0]["role"] == "assistant"
    assert set(first) == {"prompt", "chosen", "rejected", "prompt_id", "chosen_id", "rejected_id", "chosen_model",
                          "rejected_model", "task_id", "judgement_id", "labeler"}
    alices = [r for r in rows if r["labeler"] == pseudonym(campaign.pk, alice.pk)]
    assert len(alices) == 5 and all(r["chosen_model"] == "m1" and r["rejected_model"] == "m2" for r in alices)
    assert all(Response.objects.get(pk=r["chosen_id"]).text == r["chosen"][0]["content"] for r in rows)
    assert "margin" not in first  # TRL's RewardTrainer would use it silently


def test_jsonl_pairs_are_exactly_the_rows_encoded(campaign, alice, bob):
    import_prompts(campaign, [{"external_id": "ü \"q\"", "messages": [{"role": "system", "content": "Be kind.\n"}, {"role": "user", "content": "Grüße ✓"}]}])
    import_responses(campaign, [{"prompt": "ü \"q\"", "model": m, "text": f"{m}: \"quoted\"\tand ünïcode\n"} for m in ("m1", "m2")])
    judge_all(alice, campaign, "m1")
    judge_all(bob, campaign, "m2")
    for identities in IDENTITIES:
        options, filters = ExportOptions(identities=identities), ExportFilters()
        rows = [encode_json(row) for row in export.export_rows(campaign, options, filters)]
        assert list(export.export_lines(campaign, options, filters)) == rows and len(rows) == 12


def test_pairs_as_plain_text(judged, rita):
    row = rows_of(api_client(rita), text="true")[0]
    assert row["prompt"] == "Question 0?"
    assert isinstance(row["chosen"], str) and isinstance(row["rejected"], str)


def test_a_multi_turn_prompt_as_text_keeps_the_roles():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt_text(messages) == "system: Be brief.\n\nuser: Hi"


def test_a_k_way_ranking_with_ties_gives_the_pairs_across_groups_and_ties_give_none(db):
    campaign = make_campaign("ranked", task_type="ranking", k=3, overlap=1, prompts=2, models=("m1", "m2", "m3"))
    rita = join(make_user("rita"), campaign, "researcher")
    alice = join(make_user("alice"), campaign, "labeler")
    split = judge_task(alice, campaign, lambda ids: [[ids[0]], [ids[1], ids[2]]])
    judge_task(alice, campaign, lambda ids: [ids])  # all tied
    rows = jsonl(body(api_client(rita).get("/api/v1/campaigns/ranked/export/")))
    ids = list(split.ranking)
    assert [(r["chosen_id"], r["rejected_id"]) for r in rows] == [(ids[0][0], ids[1][0]), (ids[0][0], ids[1][1])]


def test_rankings_carry_each_judgements_detail(db):
    campaign = make_campaign(prompts=1, overlap=1)
    campaign.criteria = [{"name": "helpful", "label": "Helpful", "min": 1, "max": 5}]
    campaign.save()
    ModelVersion.objects.filter(name="m2").update(round=1)
    rita = join(make_user("rita"), campaign, "researcher")
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, campaign)
    ids = task_response_ids(lease.task)
    judgements.submit(alice, lease.task, [[ids[1]], [ids[0]]], rationale="clearer", flags=["unsafe"],
                      ratings={str(ids[1]): {"helpful": 4}}, time_spent_ms=4200)
    [row] = rows_of(api_client(rita), shape="rankings")
    assert row["ranking"] == [[ids[1]], [ids[0]]]
    assert row["labeler"] == pseudonym(campaign.pk, alice.pk)
    assert (row["rationale"], row["flags"], row["time_spent_ms"], row["is_surplus"]) == ("clearer", ["unsafe"], 4200, False)
    assert row["ratings"] == [{"response_id": ids[1], "criterion": "helpful", "value": 4}]
    assert {r["model"]: r["round"] for r in row["responses"]} == {"m1": None, "m2": 1}
    assert [r["id"] for r in row["responses"]] == ids and row["prompt_id"] == "p0"


def test_tasks_aggregate_the_rankings_and_measure_agreement(campaign, alice, bob, rita):
    judge_all(alice, campaign, "m1")
    first_task = Judgement.objects.order_by("id").first().task_id
    agree = judge_task(bob, campaign, lambda ids: Judgement.objects.get(task_id=first_task).ranking)  # same order as alice
    judge_all(bob, campaign, "m2")  # the other 4: the opposite order
    rows = rows_of(api_client(rita), shape="tasks")
    assert len(rows) == 5 and all(r["judgements"] == 2 for r in rows)
    by_task = {r["task_id"]: r for r in rows}
    same = by_task[agree.task_id]
    assert same["agreement"] == 1.0 and same["ranking"] == agree.ranking
    opposite = [r for r in rows if r["task_id"] != agree.task_id]
    assert all(r["agreement"] == 0.0 and len(r["ranking"]) == 1 for r in opposite)  # one group: a tie
    assert all(m["mean_rank"] == 1.5 for m in opposite[0]["mean_ranks"])


def test_agreement_and_mean_ranks_by_hand():
    assert agreement.pairwise_agreement([[[1], [2], [3]], [[1], [3], [2]]]) == pytest.approx(2 / 3)
    assert agreement.pairwise_agreement([[[1, 2], [3]], [[1, 2], [3]], [[2], [1], [3]]]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert agreement.pairwise_agreement([[[1], [2]]]) is None
    means = agreement.mean_ranks([[[1], [2, 3]], [[2], [1], [3]]])
    assert means == {1: 1.5, 2: 1.75, 3: 2.75}
    assert agreement.aggregate_ranking({1: 1.5, 2: 1.5, 3: 3.0}) == [[1, 2], [3]]


# Containers


@pytest.mark.parametrize("params", [{"shape": "pairs"}, {"shape": "pairs", "text": "true"}, {"shape": "rankings"}, {"shape": "tasks"}])
def test_every_container_holds_the_same_rows(judged, rita, params, tmp_path):
    client = api_client(rita)
    plain = rows_of(client, **params)
    assert gzip.decompress(body(client.get(URL, params | {"format": "jsonl.gz"}))) == body(client.get(URL, params))
    parquet = pq.read_table(io.BytesIO(body(client.get(URL, params | {"format": "parquet"}))))
    assert parquet.to_pylist() == plain
    hf = load_hf_zip(client.get(URL, params | {"format": "hf"}), tmp_path)
    assert sorted(json.dumps(r, sort_keys=True) for split in hf.values() for r in split) == sorted(json.dumps(r, sort_keys=True) for r in plain)


def load_hf_zip(response, tmp_path):
    from datasets import load_from_disk

    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).extractall(tmp_path)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    return load_from_disk(str(folder))


def test_the_hf_split_is_by_prompt(campaign, alice, bob, rita, tmp_path):
    import_prompts(campaign, [{"external_id": f"x{i}", "text": f"More {i}?"} for i in range(15)])
    import_responses(campaign, [{"prompt": f"x{i}", "model": m, "text": f"{m} on {i}"} for i in range(15) for m in ("m1", "m2")])
    judge_all(alice, campaign)
    judge_all(bob, campaign)
    data = load_hf_zip(api_client(rita).get(URL, {"format": "hf", "test_fraction": "0.25", "seed": "3"}), tmp_path)
    train, test = {r["prompt_id"] for r in data["train"]}, {r["prompt_id"] for r in data["test"]}
    assert not train & test and len(test) == 5 and len(train) == 15
    assert len(data["train"]) + len(data["test"]) == 40


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_an_empty_selection_is_a_valid_empty_file(campaign, rita, fmt, shape, tmp_path):
    response = api_client(rita).get(URL, {"shape": shape, "format": fmt})
    if fmt == "hf":
        data = load_hf_zip(response, tmp_path)
        assert len(data["train"]) == len(data["test"]) == 0
        assert data["train"].column_names == formats.SCHEMAS[shape].names
        return
    content = body(response)
    if fmt == "jsonl":
        assert content == b""
    elif fmt == "jsonl.gz":
        assert gzip.decompress(content) == b""
    else:
        table = pq.read_table(io.BytesIO(content))
        assert table.num_rows == 0 and table.schema == formats.SCHEMAS[shape]


def test_rows_are_the_same_whatever_the_batch_size(judged, rita, monkeypatch):
    client = api_client(rita)
    whole = rows_of(client, shape="tasks")
    monkeypatch.setattr(export, "CHUNK", 1)
    monkeypatch.setattr(export, "ROW_GROUP", 3)
    assert rows_of(client, shape="tasks") == whole
    assert pq.read_table(io.BytesIO(body(client.get(URL, {"shape": "tasks", "format": "parquet"})))).to_pylist() == whole


def test_under_wsgi_the_export_is_sent_whole_with_its_length(judged, rita, monkeypatch):
    """WSGI cannot abort a started response (annotate/core/aborting.py): the export is written first, then sent."""
    monkeypatch.setattr(export, "FLUSH_BYTES", 100)
    response = api_client(rita).get(URL)
    assert response.streaming and response["Content-Type"] == "application/jsonl"
    assert 'filename="helpful-pairs.jsonl"' in response["Content-Disposition"]
    data = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(data) and len(jsonl(data)) == 10


def test_under_asgi_the_export_streams_chunk_by_chunk(judged, rita, monkeypatch):
    """Django's ASGI handler would read a sync iterator whole (and warn); ours hands it over chunk by chunk."""
    from annotate.api.tokens import issue_token

    monkeypatch.setattr(export, "FLUSH_BYTES", 100)
    token = issue_token(rita)

    async def fetch():
        response = await AsyncClient().get(URL, headers={"Authorization": f"Token {token}"})
        return response, [chunk async for chunk in response]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response, chunks = async_to_sync(fetch)()
    assert response.status_code == 200 and len(chunks) > 1
    assert len(jsonl(b"".join(chunks))) == 10
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]


# Filters


def test_paused_labelers_gold_tasks_are_left_out_and_surplus_kept_by_default(judged, rita, alice, bob, campaign):
    client = api_client(rita)
    gold.set_paused(campaign, bob, True, "testing")
    assert {r["labeler"] for r in rows_of(client)} == {pseudonym(campaign.pk, alice.pk)}
    assert len(rows_of(client, include_paused="true")) == 10
    gold_task = Task.objects.filter(campaign=campaign).order_by("id").first()
    gold.mark_gold(gold_task, Judgement.objects.filter(task=gold_task, labeler=alice).get().ranking)
    assert len(rows_of(client, include_paused="true")) == 8
    assert len(rows_of(client, include_paused="true", include_gold="true")) == 10
    Judgement.objects.filter(labeler=alice).update(is_surplus=True)
    assert len(rows_of(client)) == 4
    assert rows_of(client, include_surplus="false") == []


def test_date_range(judged, rita, alice):
    client = api_client(rita)
    now = timezone.now()
    Judgement.objects.filter(labeler=alice).update(created_at=now - timedelta(days=10))
    assert len(rows_of(client, since=(now - timedelta(days=1)).isoformat())) == 5
    assert len(rows_of(client, until=(now - timedelta(days=1)).date().isoformat())) == 5
    assert len(rows_of(client, since=(now - timedelta(days=11)).date().isoformat(), until=(now + timedelta(days=1)).isoformat())) == 10


def test_model_versions_and_rounds(campaign, alice, rita):
    import_prompts(campaign, [{"external_id": "new", "text": "New?"}])
    import_responses(campaign, [{"prompt": "new", "model": "m3", "text": "from m3"}, {"prompt": "new", "model": "m1", "text": "from m1"}])
    ModelVersion.objects.filter(name="m3").update(round=2)
    ModelVersion.objects.exclude(name="m3").update(round=1)
    judge_all(alice, campaign)
    client = api_client(rita)
    assert {r["prompt_id"] for r in rows_of(client, models="m3")} == {"new"}
    assert len(rows_of(client, models="m3,m2")) == 6
    assert {r["prompt_id"] for r in rows_of(client, round="2")} == {"new"}
    assert len(rows_of(client, round="1")) == 6
    assert rows_of(client, models="nobody") == []


def test_labeler_gold_accuracy(judged, rita, alice, campaign):
    client = api_client(rita)
    gold_task = Task.objects.filter(campaign=campaign).order_by("id").first()
    gold.mark_gold(gold_task, Judgement.objects.filter(task=gold_task, labeler=alice).get().ranking)  # alice right, bob wrong
    assert {r["labeler"] for r in rows_of(client, min_gold_accuracy="0.5")} == {pseudonym(campaign.pk, alice.pk)}
    assert len(rows_of(client, min_gold_accuracy="0")) == 8  # both answered gold
    assert len(rows_of(client)) == 8


def test_agreement(campaign, alice, bob, rita):
    judge_all(alice, campaign, "m1")
    first_task = Judgement.objects.order_by("id").first().task_id
    judge_task(bob, campaign, lambda ids: Judgement.objects.get(task_id=first_task).ranking)
    judge_all(bob, campaign, "m2")
    client = api_client(rita)
    assert {r["task_id"] for r in rows_of(client, min_agreement="0.9")} == {first_task}
    assert len(rows_of(client, shape="rankings", min_agreement="0")) == 10


def test_flagged_in_out_or_only(campaign, alice, rita):
    judge_task(alice, campaign, lambda ids: [[ids[0]], [ids[1]]])
    lease = assignment.next_task_for(alice, campaign)
    ids = task_response_ids(lease.task)
    judgements.submit(alice, lease.task, [[ids[0]], [ids[1]]], flags=["unsafe"])
    client = api_client(rita)
    assert len(rows_of(client)) == 2
    assert [r["flags"] for r in rows_of(client, shape="rankings", flagged="exclude")] == [[]]
    assert [r["flags"] for r in rows_of(client, shape="rankings", flagged="only")] == [["unsafe"]]


@pytest.mark.parametrize(
    "params, field, allowed",
    [
        ({"shape": "triples"}, "shape", list(SHAPES)),
        ({"format": "csv"}, "format", list(FORMATS)),
        ({"colour": "red"}, "colour", list(OPTION_NAMES + FILTER_NAMES)),
        ({"flagged": "maybe"}, "flagged", list(FLAGGED)),
        ({"include_gold": "perhaps"}, "include_gold", ["true", "false"]),
        ({"identities": "everyone"}, "identities", list(IDENTITIES)),
    ],
)
def test_bad_parameters_are_a_400_listing_the_allowed_values(campaign, rita, params, field, allowed):
    response = api_client(rita).get(URL, params)
    assert response.status_code == 400
    assert response.json()["field"] == field and response.json()["allowed"] == allowed


@pytest.mark.parametrize(
    "params, field",
    [({"min_agreement": "1.5"}, "min_agreement"), ({"since": "yesterday"}, "since"), ({"round": "two"}, "round"),
     ({"test_fraction": "1"}, "test_fraction"), ({"text": "1", "shape": "tasks"}, "text")],
)
def test_bad_values_are_a_400_naming_the_field(campaign, rita, params, field):
    response = api_client(rita).get(URL, params)
    assert response.status_code == 400 and response.json()["field"] == field


# Privacy and permissions


def test_pseudonyms_are_stable_and_differ_between_campaigns(judged, rita, alice, campaign):
    client = api_client(rita)
    assert rows_of(client) == rows_of(client)
    other = make_campaign("other", prompts=1)
    assert pseudonym(other.pk, alice.pk) != pseudonym(campaign.pk, alice.pk)
    assert all(r["labeler"] not in ("alice", "bob", str(alice.pk)) for r in rows_of(client, shape="rankings"))


def test_real_identities_for_admins_only(judged, carol, rita):
    assert {r["labeler"] for r in rows_of(api_client(carol), identities="real")} == {"alice", "bob"}
    assert api_client(rita).get(URL, {"identities": "real"}).status_code == 403


@pytest.mark.parametrize("who, expected", [("carol", 200), ("rita", 200), ("alice", 403), ("mallory", 404)])
def test_who_may_export(campaign, request, who, expected, alice, carol, rita, mallory):
    assert api_client(request.getfixturevalue(who)).get(URL).status_code == expected


def test_anonymous_exports_are_refused(campaign):
    from rest_framework.test import APIClient

    assert APIClient().get(URL).status_code in (401, 403)


# Snapshots

SNAPSHOTS = "/api/v1/campaigns/helpful/snapshots/"


def test_a_snapshot_freezes_an_export_with_version_hash_and_counts(judged, rita, artifacts):
    import hashlib

    client = api_client(rita)
    response = client.post(SNAPSHOTS, {"name": "clean-v1", "shape": "pairs", "format": "jsonl", "filters": {"flagged": "exclude"}}, format="json")
    assert response.status_code == 201, response.content
    snap = response.json()
    assert snap["version"] == 1 and snap["filters"] == {"flagged": "exclude"}
    assert snap["row_counts"] == {"rows": 10, "judgements": 10, "tasks": 5}
    download = client.get(snap["download_url"])
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == snap["content_hash"] == Snapshot.objects.get().content_hash
    assert download["ETag"] == f'"{snap["content_hash"]}"'
    assert content == body(client.get(URL, {"flagged": "exclude"}))
    second = client.post(SNAPSHOTS, {"name": "tasks", "shape": "tasks", "format": "parquet"}, format="json").json()
    assert second["version"] == 2
    assert [s["name"] for s in client.get(SNAPSHOTS).json()] == ["tasks", "clean-v1"]


def test_a_snapshot_is_frozen_even_when_the_data_moves_on(judged, rita, artifacts, bob, campaign):
    client = api_client(rita)
    snap = client.post(SNAPSHOTS, {"name": "before", "format": "jsonl.gz"}, format="json").json()
    before = b"".join(client.get(snap["download_url"]).streaming_content)
    gold.set_paused(campaign, bob, True)
    after = b"".join(client.get(snap["download_url"]).streaming_content)
    assert before == after and len(jsonl(gzip.decompress(after))) == 10


def test_a_taken_name_is_a_409_and_nothing_is_overwritten(judged, rita, artifacts):
    client = api_client(rita)
    first = client.post(SNAPSHOTS, {"name": "mine", "format": "jsonl"}, format="json").json()
    files = sorted(p.name for p in (artifacts / "snapshots" / "helpful").iterdir())
    original = (artifacts / Snapshot.objects.get().path).read_bytes()
    again = client.post(SNAPSHOTS, {"name": "mine", "shape": "tasks", "format": "parquet"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "snapshot_exists"
    assert sorted(p.name for p in (artifacts / "snapshots" / "helpful").iterdir()) == files
    assert (artifacts / Snapshot.objects.get().path).read_bytes() == original
    assert Snapshot.objects.get().content_hash == first["content_hash"]


def test_an_hf_snapshot_downloads_as_the_zip_it_hashed(judged, rita, artifacts, tmp_path):
    import hashlib

    client = api_client(rita)
    snap = client.post(SNAPSHOTS, {"name": "hf", "format": "hf", "filters": {"test_fraction": 0.4, "seed": 1}}, format="json").json()
    assert snap["filters"] == {"test_fraction": 0.4, "seed": 1}
    assert snap["row_counts"]["train"] + snap["row_counts"]["test"] == 10
    download = client.get(snap["download_url"])
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == snap["content_hash"]


@pytest.mark.parametrize(
    "payload, field",
    [({"name": "bad name"}, "name"), ({"name": "x", "shape": "triples"}, "shape"), ({"name": "x", "filters": {"identities": "real"}}, "identities"),
     ({"name": "x", "filters": {"colour": 1}}, "colour")],
)
def test_bad_snapshot_requests_are_400s(campaign, rita, artifacts, payload, field):
    response = api_client(rita).post(SNAPSHOTS, payload, format="json")
    assert response.status_code == 400 and response.json()["field"] == field
    assert not Snapshot.objects.exists()


@pytest.mark.parametrize("who, expected", [("alice", 403), ("mallory", 404)])
def test_only_researchers_and_admins_see_snapshots(campaign, artifacts, request, who, expected, alice, rita, mallory):
    api_client(rita).post(SNAPSHOTS, {"name": "s"}, format="json")
    client = api_client(request.getfixturevalue(who))
    assert client.get(SNAPSHOTS).status_code == expected
    assert client.post(SNAPSHOTS, {"name": "t"}, format="json").status_code == expected
    assert client.get(f"{SNAPSHOTS}s/download/").status_code == expected


def test_an_unknown_snapshot_is_a_404(campaign, rita, artifacts):
    assert api_client(rita).get(f"{SNAPSHOTS}nope/download/").status_code == 404


# The command


def test_the_command_writes_each_container(judged, tmp_path, capsys):
    from datasets import load_from_disk

    call_command("export_preferences", "helpful", "--out", str(tmp_path / "pairs.jsonl"))
    assert len(jsonl((tmp_path / "pairs.jsonl").read_bytes())) == 10
    call_command("export_preferences", "helpful", "--shape", "tasks", "--format", "parquet", "--out", str(tmp_path / "tasks.parquet"))
    assert pq.read_table(tmp_path / "tasks.parquet").num_rows == 5
    call_command("export_preferences", "helpful", "--format", "hf", "--out", str(tmp_path / "hf"), "--test-fraction", "0.4")
    data = load_from_disk(str(tmp_path / "hf"))
    assert len(data["train"]) + len(data["test"]) == 10 and len(data["test"]) > 0
    call_command("export_preferences", "helpful", "--format", "jsonl.gz", "--flagged", "only", "--out", str(tmp_path / "f.jsonl.gz"))
    assert gzip.decompress((tmp_path / "f.jsonl.gz").read_bytes()) == b""


def test_the_command_takes_the_same_filters_and_makes_snapshots(judged, bob, campaign, tmp_path, artifacts):
    gold.set_paused(campaign, bob, True)
    call_command("export_preferences", "helpful", "--shape", "rankings", "--identities", "real", "--out", str(tmp_path / "r.jsonl"))
    assert {r["labeler"] for r in jsonl((tmp_path / "r.jsonl").read_bytes())} == {"alice"}
    call_command("export_preferences", "helpful", "--include-paused", "--snapshot", "cli")
    assert Snapshot.objects.get(name="cli").row_counts["rows"] == 10


@pytest.mark.parametrize("args, message", [(["--shape", "triples"], "shape"), (["--min-agreement", "2"], "min_agreement")])
def test_the_command_fails_clearly(campaign, tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("export_preferences", "helpful", "--out", str(tmp_path / "x"), *args)
    with pytest.raises(CommandError, match="no campaign"):
        call_command("export_preferences", "nope", "--out", str(tmp_path / "x"))
