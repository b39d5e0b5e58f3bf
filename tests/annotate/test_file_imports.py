"""File imports through the API: every format, its bad inputs, duplicates, limits, and the background path."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.campaigns.imports import batches, readers
from annotate.jobs import engine
from annotate.models import Campaign, ModelVersion, Prompt, Response, Run, Task
from tests.conftest import api_client, join, make_campaign, make_user


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # users are made per test


def upload(user, name: str, content: bytes, slug: str = "helpful", **fields):
    data = {"file": SimpleUploadedFile(name, content), **fields}
    return api_client(user).post(f"/api/v1/campaigns/{slug}/imports/", data, format="multipart")


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet_bytes(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.rglob("*"):
            archive.write(path, Path("my_dataset") / path.relative_to(folder))
    return buffer.getvalue()


PAIRS = [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "chosen_model": "m1", "rejected_model": "m2", "source": "quiz"},
    {"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "chosen_model": "m2", "rejected_model": "m1", "source": "math"},
]


def new_prompts():
    return Prompt.objects.exclude(external_id__in=[f"p{i}" for i in range(5)])


# CSV


def test_a_csv_of_prompts_with_context_metadata_and_extra_columns(carol, campaign):
    content = csv_bytes(
        "external_id,text,context,topic",
        'q1,What is RLHF?,"[""RLHF trains a reward model.""]",ml',
        "q2,Name a prime.,,math",
    )
    response = upload(carol, "prompts.csv", content, kind="prompts")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["format"], body["rows"], body["prompts_created"]) == ("csv", 2, 2)
    q1 = Prompt.objects.get(external_id="q1")
    assert q1.messages == [{"role": "user", "content": "What is RLHF?"}]
    assert q1.context == [{"title": "", "text": "RLHF trains a reward model."}]
    assert q1.metadata == {"topic": "ml"}


def test_a_csv_of_chat_prompts_with_json_cells(carol, campaign):
    messages = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]).replace('"', '""')
    response = upload(carol, "chat.csv", csv_bytes("id,messages", f'c1,"{messages}"'), kind="prompts")
    assert response.status_code == 201, response.content
    assert [t["role"] for t in Prompt.objects.get(external_id="c1").messages] == ["system", "user"]


def test_a_missing_column_is_named_with_the_columns_the_file_has(carol, campaign):
    response = upload(carol, "prompts.csv", csv_bytes("id,question", "1,Why?"), kind="prompts")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "missing column: messages, text or prompt" in detail and "question" in detail
    assert not new_prompts().exists()


def test_a_file_that_is_not_utf8_is_a_clear_error(carol, campaign):
    content = "external_id,text\nq1,Café au lait?\n".encode("latin-1")
    response = upload(carol, "prompts.csv", content, kind="prompts")
    assert response.status_code == 400 and "not UTF-8" in response.json()["detail"]
    utf16 = upload(carol, "prompts.csv", "external_id,text\nq1,Hi\n".encode("utf-16"), kind="prompts")
    assert utf16.status_code == 400 and "UTF-16" in utf16.json()["detail"]
    jsonl = upload(carol, "prompts.jsonl", b'{"id": "x", "text": "caf\xe9"}\n', kind="prompts")
    assert jsonl.status_code == 400 and "not UTF-8" in jsonl.json()["detail"]
    assert not new_prompts().exists()


def test_a_utf8_bom_and_semicolons_from_excel_are_fine(carol, campaign):
    response = upload(carol, "prompts.csv", "\ufeffexternal_id;text\nq1;Hi, there\n".encode(), kind="prompts")
    assert response.status_code == 201, response.content
    assert Prompt.objects.get(external_id="q1").messages[0]["content"] == "Hi, there"


def test_one_bad_row_rejects_the_file_and_every_bad_row_is_numbered(carol, campaign):
    content = csv_bytes("external_id,text", "ok1,Fine", "bad1,", "ok2,Fine too", ",No id")
    response = upload(carol, "prompts.csv", content, kind="prompts")
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("2 of 4 rows are invalid; nothing was imported")
    assert [e["row"] for e in body["errors"]] == [2, 4]
    assert not new_prompts().exists()


def test_duplicate_prompts_are_errors_or_skipped_on_request(carol, campaign):
    content = csv_bytes("external_id,text", "p0,Already here", "n1,New", "n1,Repeated")
    refused = upload(carol, "prompts.csv", content, kind="prompts")
    assert refused.status_code == 400
    assert [(e["row"], e["error"]) for e in refused.json()["errors"]] == [
        (1, "external_id 'p0' already exists in this campaign"),
        (3, "external_id 'n1' repeats row 2"),
    ]
    skipped = upload(carol, "prompts.csv", content, kind="prompts", on_duplicate="skip")
    assert skipped.status_code == 201, skipped.content
    body = skipped.json()
    assert body["prompts_created"] == 1 and body["skipped_count"] == 2
    assert [(s["row"], s["external_id"]) for s in body["skipped"]] == [(1, "p0"), (3, "n1")]
    assert Prompt.objects.get(external_id="n1").messages[0]["content"] == "New"


def test_responses_need_registered_models_unless_new_names_are_allowed(carol, campaign):
    upload(carol, "prompts.csv", csv_bytes("external_id,text", "q1,Why?"), kind="prompts")
    content = csv_bytes("prompt,model,text", "q1,m1,Because.", "q1,gpt-9,Why not.")
    refused = upload(carol, "responses.csv", content, kind="responses")
    assert refused.status_code == 400
    [error] = refused.json()["errors"]
    assert error["row"] == 2 and "model 'gpt-9' is not registered" in error["error"] and "m1" in error["error"]
    assert not Response.objects.filter(prompt__external_id="q1").exists()
    accepted = upload(carol, "responses.csv", content, kind="responses", create_models="true")
    assert accepted.status_code == 201, accepted.content
    assert (accepted.json()["responses_created"], accepted.json()["tasks_built"]) == (2, 1)
    assert ModelVersion.objects.filter(name="gpt-9").exists()


def test_responses_without_a_model_column_take_the_files_model_name(carol, campaign):
    upload(carol, "prompts.csv", csv_bytes("external_id,text", "q1,Why?"), kind="prompts")
    missing = upload(carol, "responses.csv", csv_bytes("prompt,text", "q1,Because."), kind="responses")
    assert missing.status_code == 400 and "missing column: model" in missing.json()["detail"]
    named = upload(carol, "responses.csv", csv_bytes("prompt,text", "q1,Because."), kind="responses", model="m2")
    assert named.status_code == 201, named.content
    assert Response.objects.get(prompt__external_id="q1").model_version.name == "m2"


def test_duplicates_are_found_in_large_files_too(carol, campaign, monkeypatch):
    monkeypatch.setattr(batches, "_IN_LOOKUP_LIMIT", 1)  # past it, the campaign's ids are read instead of an IN list
    response = upload(carol, "prompts.csv", csv_bytes("external_id,text", "p0,Again", "p1,Again", "q9,New"), kind="prompts")
    assert [e["row"] for e in response.json()["errors"]] == [1, 2]


def test_an_upload_spooled_to_disk_reads_the_same(carol, campaign, settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 10  # Django writes larger uploads to a temporary file
    response = upload(carol, "pairs.parquet", parquet_bytes(PAIRS), kind="preferences")
    assert response.status_code == 201, response.content
    csv_response = upload(carol, "p.csv", csv_bytes("external_id,text", "disk,On disk?"), kind="prompts")
    assert csv_response.status_code == 201, csv_response.content


def test_responses_to_unknown_prompts_are_row_errors(carol, campaign):
    response = upload(carol, "responses.csv", csv_bytes("prompt,model,text", "p0,m1,Fine", "nope,m1,Lost"), kind="responses")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"row": 2, "error": "prompt 'nope' is not in this campaign"}]


# Limits


def test_a_file_over_the_byte_limit_is_refused_with_the_limit(carol, campaign, settings):
    settings.IMPORT_MAX_BYTES = 1024 * 1024
    content = csv_bytes("external_id,text", *(f"big{i},{'x' * 1000}" for i in range(1100)))
    response = upload(carol, "big.csv", content, kind="prompts")
    assert response.status_code == 413
    assert "the limit is 1 MB" in response.json()["detail"]
    assert not new_prompts().exists()


def test_a_file_over_the_row_limit_is_refused(carol, campaign, settings):
    settings.IMPORT_MAX_ROWS = 3
    response = upload(carol, "rows.jsonl", jsonl_bytes({"id": f"r{i}", "text": "?"} for i in range(4)), kind="prompts")
    assert response.status_code == 413 and "more than 3 rows" in response.json()["detail"]


def test_a_row_over_the_text_limit_is_a_row_error(carol, campaign, monkeypatch):
    monkeypatch.setattr(batches, "MAX_TEXT_CHARS", 50)
    response = upload(carol, "prompts.csv", csv_bytes("external_id,text", "short,Hi", f"long,{'x' * 51}"), kind="prompts")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"row": 2, "error": "the prompt is 51 characters long; the limit is 50"}]


def test_an_empty_file_or_unknown_kind_is_a_400(carol, campaign):
    assert upload(carol, "empty.csv", b"", kind="prompts").status_code == 400
    assert upload(carol, "header.csv", b"external_id,text\n", kind="prompts").status_code == 400
    bad_kind = upload(carol, "p.csv", csv_bytes("external_id,text", "a,b"), kind="votes")
    assert bad_kind.status_code == 400 and "kind" in bad_kind.json()


# JSONL and TRL preferences


def test_trl_pairs_become_prompts_with_two_responses_and_a_task_each(carol, campaign):
    response = upload(carol, "pairs.jsonl", jsonl_bytes(PAIRS), kind="preferences")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["prompts_created"], body["responses_created"], body["tasks_built"]) == (2, 4, 2)
    prompt = Prompt.objects.get(messages__0__content="Capital of France?")
    assert prompt.external_id.startswith("h-") and prompt.metadata == {"source": "quiz"}
    labels = {r.text: (r.model_version.name, r.generation_params["imported_as"]) for r in prompt.responses.all()}
    assert labels == {"Paris.": ("m1", "chosen"), "Lyon.": ("m2", "rejected")}


def test_the_same_prompt_twice_is_a_duplicate_by_content(carol, campaign):
    assert upload(carol, "pairs.jsonl", jsonl_bytes(PAIRS), kind="preferences").status_code == 201
    again = upload(carol, "pairs.jsonl", jsonl_bytes(PAIRS), kind="preferences")
    assert again.status_code == 400 and "already exists" in again.json()["errors"][0]["error"]
    skipped = upload(carol, "pairs.jsonl", jsonl_bytes(PAIRS), kind="preferences", on_duplicate="skip")
    assert skipped.status_code == 201
    assert (skipped.json()["skipped_count"], skipped.json()["responses_skipped"], skipped.json()["responses_created"]) == (2, 4, 0)


def test_pairs_without_model_names_need_the_files_model(carol, campaign):
    rows = [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}]
    missing = upload(carol, "pairs.jsonl", jsonl_bytes(rows), kind="preferences")
    assert missing.status_code == 400 and "missing column: chosen_model and rejected_model (or model)" in missing.json()["detail"]
    named = upload(carol, "pairs.jsonl", jsonl_bytes(rows), kind="preferences", model="m1")
    assert named.status_code == 201 and named.json()["tasks_built"] == 1


def test_a_missing_rejected_column_is_named(carol, campaign):
    response = upload(carol, "pairs.jsonl", jsonl_bytes([{"prompt": "Hi", "chosen": "Hello", "model": "m1"}]), kind="preferences")
    assert response.status_code == 400 and "missing column: rejected" in response.json()["detail"]


def test_conversational_pairs_take_the_prompt_from_the_shared_turns(carol, campaign):
    user = {"role": "user", "content": "Tell me a joke."}
    rows = [{
        "chosen": [user, {"role": "assistant", "content": "Why did the chicken..."}],
        "rejected": [user, {"role": "assistant", "content": "No."}],
        "model": "m1",
    }]
    response = upload(carol, "conv.jsonl", jsonl_bytes(rows), kind="preferences")
    assert response.status_code == 201, response.content
    prompt = new_prompts().get()
    assert prompt.messages == [user]
    assert sorted(prompt.responses.values_list("text", flat=True)) == ["No.", "Why did the chicken..."]


def test_anthropic_hh_text_is_split_into_turns(carol, campaign):
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant:"
    rows = [{"chosen": shared + " Put it in boiling water for 8 minutes.", "rejected": shared + " I can't help."}]
    response = upload(carol, "hh.jsonl", jsonl_bytes(rows), kind="preferences", model="m1")
    assert response.status_code == 201, response.content
    prompt = new_prompts().get()
    assert [t["role"] for t in prompt.messages] == ["user", "assistant", "user"]
    assert prompt.messages[-1]["content"] == "How do I boil an egg?"
    assert sorted(prompt.responses.values_list("text", flat=True)) == ["I can't help.", "Put it in boiling water for 8 minutes."]


def test_completions_give_k_responses_per_prompt(db):
    ranking = Campaign.objects.create(name="Rank", slug="rank", task_type="ranking", responses_per_task=3)
    carol = join(make_user("carol", is_staff=True), ranking, "admin")
    rows = [
        {"id": "r1", "prompt": "Write a haiku.", "completions": ["a", "b", "c"], "models": ["m1", "m2", "m3"]},
        {"id": "r2", "prompt": "Write a limerick.", "completions": [{"text": "x", "model": "m1"}, {"text": "y", "model": "m2"}], "models": None},
    ]
    response = upload(carol, "k.jsonl", jsonl_bytes(rows), slug="rank", kind="preferences", create_models="1")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["prompts_created"], body["responses_created"], body["tasks_built"]) == (2, 5, 1)
    assert "fewer than 3 responses" in body["warnings"][0]


def test_a_response_that_is_json_text_stays_text(carol, campaign):
    rows = [{"prompt": "Reply in JSON.", "chosen": '{"answer": 42}', "rejected": "[1, 2]", "model": "m1"}]
    response = upload(carol, "json.jsonl", jsonl_bytes(rows), kind="preferences")
    assert response.status_code == 201, response.content
    assert sorted(new_prompts().get().responses.values_list("text", flat=True)) == ['[1, 2]', '{"answer": 42}']


def test_a_broken_jsonl_line_is_an_error_on_its_line(carol, campaign):
    content = b'{"id": "a", "text": "ok"}\n\n{"id": "b", "text": \n[1, 2]\n'
    response = upload(carol, "p.jsonl", content, kind="prompts")
    assert response.status_code == 400
    assert [(e["row"], e["error"].split(":")[0]) for e in response.json()["errors"]] == [(3, "not valid JSON"), (4, "each line must be a JSON object")]
    assert not new_prompts().exists()


def test_tabs_newlines_and_backslashes_are_stored_as_written(carol, campaign):
    prompt = 'Path C:\\temp\\new?\tTab "quoted"\r\nnext line \\N'
    rows = [{"prompt": prompt, "chosen": "a\tb\nc\\d", "rejected": "\\.\n\\N", "model": "m1", "note": "back\\slash\ttab"}]
    response = upload(carol, "escapes.jsonl", jsonl_bytes(rows), kind="preferences", create_models="true")
    assert response.status_code == 201, response.content
    stored = new_prompts().get()
    assert stored.messages == [{"role": "user", "content": prompt}] and stored.metadata == {"note": "back\\slash\ttab"}
    assert sorted(stored.responses.values_list("text", flat=True)) == sorted(["a\tb\nc\\d", "\\.\n\\N"])


# JSONL: columns past the first pass (it parses only the first HEAD_ROWS lines)


@pytest.fixture
def two_head_rows(monkeypatch):
    monkeypatch.setattr(readers, "HEAD_ROWS", 2)


def test_a_late_column_that_changes_the_reading_starts_the_import_again(carol, campaign, two_head_rows):
    # an id column on row 4 only: every row is read by it (as a first pass over every row would), so rows 1-3 have no id
    rows = [{"text": "one"}, {"text": "two"}, {"text": "three"}, {"external_id": "q4", "text": "four"}]
    response = upload(carol, "late.jsonl", jsonl_bytes(rows), kind="prompts")
    assert response.status_code == 400, response.content
    assert [(e["row"], e["error"]) for e in response.json()["errors"]] == [(n, "external_id is empty") for n in (1, 2, 3)]
    assert not new_prompts().exists()


def test_a_late_extra_column_goes_into_metadata_in_one_pass(carol, campaign, two_head_rows, monkeypatch):
    settles = []
    monkeypatch.setattr(readers.Source, "settle", lambda source: settles.append(source))
    rows = [{"id": f"q{n}", "text": f"prompt {n}"} for n in range(1, 5)]
    rows[3]["topic"] = "late"
    response = upload(carol, "extra.jsonl", jsonl_bytes(rows), kind="prompts")
    assert response.status_code == 201, response.content
    assert (response.json()["rows"], response.json()["prompts_created"]) == (4, 4)
    assert Prompt.objects.get(external_id="q4").metadata == {"topic": "late"} and not settles


def test_first_rows_without_a_needed_column_are_read_with_every_rows_columns(carol, campaign, two_head_rows):
    rows = [{"prompt": f"p{n}", "text": f"answer {n}"} for n in range(4)]  # the campaign's prompts p0-p3
    rows[2]["model"] = "m1"  # the model column appears on row 3: the first rows alone would be missing it
    response = upload(carol, "responses.jsonl", jsonl_bytes(rows), kind="responses", create_models="true")
    assert response.status_code == 400, response.content
    assert [(e["row"], e["error"]) for e in response.json()["errors"]] == [(n, "model must be a non-empty model name") for n in (1, 2, 4)]


# Parquet


def test_a_parquet_file_of_trl_pairs(carol, campaign):
    response = upload(carol, "pairs.parquet", parquet_bytes(PAIRS), kind="preferences")
    assert response.status_code == 201, response.content
    assert response.json()["format"] == "parquet" and response.json()["tasks_built"] == 2


def test_parquet_dates_and_nested_metadata_are_kept_as_json(carol, campaign):
    import datetime

    rows = [{**PAIRS[0], "collected": datetime.datetime(2024, 5, 1, 12, 0), "metadata": {"tags": ["geo"], "score": 0.5}}]
    response = upload(carol, "p.parquet", parquet_bytes(rows), kind="preferences")
    assert response.status_code == 201, response.content
    assert new_prompts().get().metadata == {"source": "quiz", "collected": "2024-05-01T12:00:00", "tags": ["geo"], "score": 0.5}


def test_a_parquet_file_missing_a_column_or_broken(carol, campaign):
    missing = upload(carol, "p.parquet", parquet_bytes([{"prompt": "Hi", "chosen": "Yo", "model": "m1"}]), kind="preferences")
    assert missing.status_code == 400 and "missing column: rejected" in missing.json()["detail"]
    broken = upload(carol, "p.parquet", b"PAR1 not really parquet", kind="preferences")
    assert broken.status_code == 400 and "not a readable Parquet file" in broken.json()["detail"]


# Hugging Face datasets folder (zipped)


@pytest.fixture(scope="module")
def hf_zips(tmp_path_factory):
    from datasets import Dataset, DatasetDict

    base = tmp_path_factory.mktemp("hf")
    Dataset.from_list(PAIRS).save_to_disk(str(base / "single"))
    DatasetDict({
        "train": Dataset.from_list(PAIRS),
        "test": Dataset.from_list([{**PAIRS[0], "prompt": "Only in test?"}]),
    }).save_to_disk(str(base / "dict"))
    return {"single": zip_folder(base / "single"), "dict": zip_folder(base / "dict")}


def test_a_zipped_save_to_disk_folder(carol, campaign, hf_zips):
    response = upload(carol, "dataset.zip", hf_zips["single"], kind="preferences")
    assert response.status_code == 201, response.content
    assert (response.json()["format"], response.json()["tasks_built"]) == ("hf", 2)


def test_a_dataset_dict_imports_train_or_the_named_split(carol, campaign, hf_zips):
    assert upload(carol, "dataset.zip", hf_zips["dict"], kind="preferences").json()["prompts_created"] == 2
    test_split = upload(carol, "dataset.zip", hf_zips["dict"], kind="preferences", split="test")
    assert test_split.status_code == 201 and test_split.json()["prompts_created"] == 1
    wrong = upload(carol, "dataset.zip", hf_zips["dict"], kind="preferences", split="validation")
    assert wrong.status_code == 400 and "['test', 'train']" in wrong.json()["detail"]


def test_a_zip_without_a_dataset_or_not_a_zip(carol, campaign):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    response = upload(carol, "stuff.zip", buffer.getvalue(), kind="preferences")
    assert response.status_code == 400 and "no Hugging Face datasets folder" in response.json()["detail"]
    assert upload(carol, "stuff.zip", b"not a zip", kind="preferences").status_code == 400


# Label Studio


LABEL_STUDIO = [
    {
        "id": 11,
        "data": {"prompt": "Summarise the plot of Hamlet.", "answer1": "A prince avenges his father.", "answer2": "A play.", "answer1_model": "m1", "answer2_model": "m2"},
        "annotations": [{"id": 1, "was_cancelled": False, "result": [{"type": "pairwise", "from_name": "comparison", "value": {"selected": "left"}}]}],
    },
    {"id": 12, "data": {"prompt": "Define entropy.", "answer1": "Disorder.", "answer2": "Expected surprise.", "answer1_model": "m2", "answer2_model": "m1"}, "annotations": []},
]


def test_a_label_studio_export_with_its_pairwise_choices(carol, campaign):
    response = upload(carol, "project-1-export.json", json.dumps(LABEL_STUDIO).encode(), kind="preferences")
    assert response.status_code == 201, response.content
    assert (response.json()["format"], response.json()["tasks_built"]) == ("label_studio", 2)
    hamlet = Prompt.objects.get(external_id="ls-11")
    assert hamlet.metadata["label_studio"] == {"task_id": 11, "annotations": 1, "preferred": "answer1"}
    assert dict(hamlet.responses.values_list("text", "model_version__name")) == {"A prince avenges his father.": "m1", "A play.": "m2"}


def test_a_label_studio_choice_that_is_not_left_or_right_is_no_preference(carol, campaign):
    # a list or object as the choice once raised TypeError (unhashable) and failed the whole import
    task = json.loads(json.dumps(LABEL_STUDIO[0]))
    task["annotations"][0]["result"][0]["value"]["selected"] = ["left"]
    response = upload(carol, "project-1-export.json", json.dumps([task]).encode(), kind="preferences")
    assert response.status_code == 201, response.content
    assert Prompt.objects.get(external_id="ls-11").metadata["label_studio"] == {"task_id": 11, "annotations": 1}


def test_a_label_studio_task_without_a_prompt_is_a_row_error(carol, campaign):
    tasks = [LABEL_STUDIO[0], {"id": 13, "data": {"answer1": "x", "answer2": "y"}}]
    response = upload(carol, "export.json", json.dumps(tasks).encode(), kind="preferences", model="m1")
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["row"] == 2 and "no prompt" in error["error"]
    assert not new_prompts().exists()


def test_a_label_studio_export_cannot_be_imported_as_responses(carol, campaign):
    response = upload(carol, "export.json", json.dumps(LABEL_STUDIO).encode(), kind="responses")
    assert response.status_code == 400 and "as preferences" in response.json()["detail"]


# The background path


@pytest.fixture
def small_sync_limit(settings, artifacts):
    settings.IMPORT_SYNC_ROWS = 3
    return artifacts


def test_a_large_import_runs_in_the_background_with_progress(carol, campaign, small_sync_limit):
    content = csv_bytes("external_id,text", *(f"bg{i},Question {i}?" for i in range(6)))
    response = upload(carol, "many.csv", content, kind="prompts")
    assert response.status_code == 202, response.content
    run = Run.objects.get(pk=response.json()["id"])
    assert (run.kind, run.status, run.created_by) == ("import", "queued", carol)
    stored = small_sync_limit / run.params["path"]
    assert stored.read_bytes() == content and stored.is_relative_to(small_sync_limit / "uploads")
    assert not new_prompts().exists()  # nothing written in the request
    engine.execute_run.call(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.progress == 1.0 and run.result["prompts_created"] == 6
    assert new_prompts().count() == 6
    assert not stored.exists()  # the upload is removed once imported


def test_a_background_import_with_a_bad_row_fails_and_imports_nothing(carol, campaign, small_sync_limit):
    content = csv_bytes("external_id,text", *(f"bg{i},Question {i}?" for i in range(5)), "bg-bad,")
    run = Run.objects.get(pk=upload(carol, "many.csv", content, kind="prompts").json()["id"])
    engine.execute_run.call(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "row 6: text is empty" in run.error
    assert run.result["errors"] == [{"row": 6, "error": "text is empty"}]
    assert not new_prompts().exists()


def test_an_import_run_only_reads_its_campaigns_uploads(carol, campaign, artifacts):
    with pytest.raises(engine.InvalidParams) as caught:
        engine.start_run("import", campaign=campaign, params={"kind": "prompts", "path": "../../etc/passwd"})
    assert caught.value.field == "path"
    other = make_campaign("other", prompts=1)
    (artifacts / "uploads" / str(other.pk)).mkdir(parents=True)
    (artifacts / "uploads" / str(other.pk) / "x.csv").write_text("external_id,text\n")
    with pytest.raises(engine.InvalidParams):
        engine.start_run("import", campaign=campaign, params={"kind": "prompts", "path": f"uploads/{other.pk}/x.csv"})
    (artifacts / "uploads" / str(campaign.pk)).mkdir(parents=True)
    (artifacts / "uploads" / str(campaign.pk) / "loose.csv").write_text("external_id,text\n")
    with pytest.raises(engine.InvalidParams):  # not in an upload's own folder, which the run removes afterwards
        engine.start_run("import", campaign=campaign, params={"kind": "prompts", "path": f"uploads/{campaign.pk}/loose.csv"})


# Who may import


@pytest.mark.parametrize("who, expected", [("carol", 201), ("rita", 403), ("alice", 403), ("mallory", 404)])
def test_only_the_campaigns_admins_import(request, who, expected, alice, carol, rita, mallory, campaign):
    response = upload(request.getfixturevalue(who), "p.csv", csv_bytes("external_id,text", "perm,Hi"), kind="prompts")
    assert response.status_code == expected


def test_tasks_built_from_an_import_follow_the_campaign(carol, campaign):
    Campaign.objects.filter(pk=campaign.pk).update(overlap=3)
    upload(carol, "pairs.jsonl", jsonl_bytes(PAIRS), kind="preferences")
    assert set(Task.objects.filter(prompt__in=new_prompts()).values_list("judgements_needed", "remaining")) == {(3, 3)}


# The same edge cases in every format

ROWS = [
    {"id": "x1", "prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco.", "chosen_model": "m1", "rejected_model": "m2"},
    {"id": "x2", "prompt": "Largest planet?", "chosen": "Jupiter.", "rejected": "Mars.", "chosen_model": "m2", "rejected_model": "m1"},
]
FORMATS = ["csv", "jsonl", "json", "parquet", "hf", "label_studio"]


def encode(fmt: str, rows: list[dict], tmp_path: Path, encoding: str = "utf-8") -> tuple[str, bytes]:
    """The rows as a file of the given format: (file name, content)."""
    if fmt == "csv":
        import csv

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        return "rows.csv", out.getvalue().encode(encoding)
    if fmt == "jsonl":
        return "rows.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(encoding)
    if fmt == "json":
        return "rows.json", json.dumps(rows, ensure_ascii=False).encode(encoding)
    if fmt == "parquet":
        return "rows.parquet", parquet_bytes(rows)
    if fmt == "hf":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
        return "rows.zip", zip_folder(tmp_path / "ds")
    keys = {"id": "id", "prompt": "prompt", "chosen": "answer1", "rejected": "answer2", "chosen_model": "answer1_model", "rejected_model": "answer2_model"}
    tasks = [{"id": i, "data": {keys[k]: v for k, v in r.items()}} for i, r in enumerate(rows, 1)]
    return "export.json", json.dumps(tasks, ensure_ascii=False).encode(encoding)


def send(user, fmt, rows, tmp_path, **fields):
    name, content = encode(fmt, rows, tmp_path)
    return upload(user, name, content, kind="preferences", **fields)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_imports_a_good_file(carol, campaign, tmp_path, fmt):
    response = send(carol, fmt, ROWS, tmp_path)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["format"], body["prompts_created"], body["responses_created"], body["tasks_built"]) == (fmt, 2, 4, 2)
    peru = Prompt.objects.get(external_id="x1")
    assert dict(peru.responses.values_list("text", "model_version__name")) == {"Lima.": "m1", "Cusco.": "m2"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_names_a_missing_column(carol, campaign, tmp_path, fmt):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in ROWS]
    response = send(carol, fmt, rows, tmp_path)
    assert response.status_code == 400
    body = response.json()
    if fmt == "label_studio":  # each task carries its own data: a row error per task
        assert [e["row"] for e in body["errors"]] == [1, 2] and "no prompt" in body["errors"][0]["error"]
    else:
        assert "missing column: prompt" in body["detail"]
    assert not new_prompts().exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reports_duplicates_or_skips_them(carol, campaign, tmp_path, fmt):
    assert send(carol, fmt, ROWS[:1], tmp_path / "first").status_code == 201
    refused = send(carol, fmt, ROWS, tmp_path / "again")
    assert refused.status_code == 400
    assert refused.json()["errors"] == [{"row": 1, "error": "external_id 'x1' already exists in this campaign"}]
    skipped = send(carol, fmt, ROWS, tmp_path / "skip", on_duplicate="skip")
    assert skipped.status_code == 201 and skipped.json()["skipped"] == [{"row": 1, "external_id": "x1", "reason": "already exists in this campaign"}]
    assert sorted(new_prompts().values_list("external_id", flat=True)) == ["x1", "x2"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_rejects_the_whole_file_for_one_bad_row(carol, campaign, tmp_path, fmt):
    rows = [ROWS[0], {**ROWS[1], "prompt": ""}]
    response = send(carol, fmt, rows, tmp_path)
    assert response.status_code == 400
    assert [e["row"] for e in response.json()["errors"]] == [2]
    assert not new_prompts().exists() and not ModelVersion.objects.filter(responses__prompt__external_id="x1").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_to_the_row_limit(carol, campaign, tmp_path, settings, fmt):
    settings.IMPORT_MAX_ROWS = 1
    response = send(carol, fmt, ROWS, tmp_path)
    assert response.status_code == 413 and "more than 1 rows" in response.json()["detail"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "label_studio"])
def test_every_text_format_refuses_other_encodings(carol, campaign, tmp_path, fmt):
    rows = [{**ROWS[0], "prompt": "¿Capital del Perú?"}]
    name, content = encode(fmt, rows, tmp_path, encoding="latin-1")
    response = upload(carol, name, content, kind="preferences")
    assert response.status_code == 400 and "not UTF-8" in response.json()["detail"]
