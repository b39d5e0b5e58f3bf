"""Context passages reach every consumer: exports (every shape and container), snapshots, training data, generation."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.exports import export
from annotate.exports.options import ExportFilters, ExportOptions
from annotate.exports.rows import encode_json
from annotate.exports.snapshots import create_snapshot
from annotate.exports.training_data import prompt_chats, ranked_judgements, snapshot_judgements
from annotate.models import Campaign
from annotate.runs.generation import prompt_rows_for
from tests.annotate.test_exports import body, jsonl, judge_all
from tests.conftest import api_client

PASSAGES = [{"title": "Fruit", "text": "Apples are red."}, {"title": "", "text": "Tigers are striped."}]
SYSTEM = {"role": "system", "content": "Passages:\n\n[1] Fruit\nApples are red.\n\n[2] Tigers are striped."}
URL = "/api/v1/campaigns/helpful/export/"


@pytest.fixture
def rag(campaign, alice, bob, rita):
    """The helpful campaign plus one prompt with two passages, judged by alice and bob."""
    import_prompts(campaign, [{"external_id": "rag", "text": "What colour are apples?", "context": PASSAGES}])
    import_responses(campaign, [{"prompt": "rag", "model": m, "text": f"{m} says red"} for m in ("m1", "m2")])
    judge_all(alice, campaign, "m1")
    judge_all(bob, campaign, "m2")
    return campaign


def test_trl_pairs_carry_the_passages_in_the_prompt_and_a_context_column(rag, rita):
    rows = jsonl(body(api_client(rita).get(URL)))
    with_passages = [r for r in rows if r["prompt_id"] == "rag"]
    assert len(with_passages) == 2
    assert all(r["prompt"] == [SYSTEM, {"role": "user", "content": "What colour are apples?"}] and r["context"] == PASSAGES for r in with_passages)
    assert all("context" not in r and r["prompt"][0]["role"] == "user" for r in rows if r["prompt_id"] != "rag")
    text = jsonl(body(api_client(rita).get(URL, {"text": "true"})))
    assert [r["prompt"] for r in text if r["prompt_id"] == "rag"][0].startswith("system: Passages:\n\n[1] Fruit")


@pytest.mark.parametrize("shape", ["rankings", "tasks"])
def test_rankings_and_tasks_keep_the_prompt_and_add_a_context_column(rag, rita, shape):
    rows = jsonl(body(api_client(rita).get(URL, {"shape": shape})))
    [row] = [r for r in rows if r["prompt_id"] == "rag"][:1]
    assert row["prompt"] == [{"role": "user", "content": "What colour are apples?"}] and row["context"] == PASSAGES
    assert all("context" not in r for r in rows if r["prompt_id"] != "rag")


def test_the_fast_pair_lines_are_the_rows_encoded_with_context(rag):
    options, filters = ExportOptions(), ExportFilters()
    assert list(export.export_lines(rag, options, filters)) == [encode_json(r) for r in export.export_rows(rag, options, filters)]


def test_parquet_gets_a_context_column_only_when_some_prompt_has_passages(rag, rita, campaign):
    table = pq.read_table(io.BytesIO(body(api_client(rita).get(URL, {"format": "parquet"}))))
    rows = table.to_pylist()
    assert [r["context"] for r in rows if r["prompt_id"] == "rag"][0] == PASSAGES
    assert all(r["context"] is None for r in rows if r["prompt_id"] != "rag")
    plain = Campaign.objects.create(name="Plain", slug="plain")
    assert "context" not in export.schema_for(ExportOptions(), export.has_context(plain)).names


def test_training_data_renders_the_passages_from_the_database_and_from_a_snapshot(rag, artifacts):
    chats = {tuple(j.prompt_messages[0].items()) for j in ranked_judgements(rag)}
    assert tuple(SYSTEM.items()) in chats
    snapshot = create_snapshot(rag, "s", ExportOptions(shape="rankings", format="jsonl"), ExportFilters())
    from_snapshot = [j for j in snapshot_judgements(snapshot) if j.prompt_id == "rag"]
    from_database = [j for j in ranked_judgements(rag) if j.prompt_messages[0] == SYSTEM]
    assert from_snapshot and [j.prompt_messages for j in from_snapshot] == [j.prompt_messages for j in from_database]


def test_generation_and_policy_training_prompt_with_the_passages(rag):
    rows = dict(prompt_rows_for(rag, {"prompts": ["rag"], "limit": None}))
    assert list(rows.values()) == [[SYSTEM, {"role": "user", "content": "What colour are apples?"}]]
    chats = prompt_chats(rag.prompts.order_by("id"))
    assert chats[-1][0] == SYSTEM and chats[0] == [{"role": "user", "content": "Question 0?"}]
    assert json.dumps(chats[0]) == json.dumps(rag.prompts.order_by("id").first().messages)
