"""Malformed and hostile import files: always a 400 (or 413) that names the file or the row, never a 500,
and nothing written; and the streaming path's chunks behave as one file (duplicates, errors, tasks)."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.campaigns.imports import copying, files
from annotate.models import Prompt, Response, Task
from tests.conftest import api_client

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def upload(user, name: str, content: bytes, **fields):
    data = {"file": SimpleUploadedFile(name, content), **fields}
    return api_client(user).post("/api/v1/campaigns/helpful/imports/", data, format="multipart")


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def new_prompts():
    return Prompt.objects.exclude(external_id__in=[f"p{i}" for i in range(5)])


def a_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def with_bad_crc(content: bytes, member: bytes) -> bytes:
    """A stored zip with one byte of the member's data changed: its CRC-32 no longer matches."""
    at = content.index(member)
    return content[:at] + bytes([member[0] ^ 0xFF]) + content[at + 1 :]


def parquet_bytes(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def assert_refused_and_nothing_written(response, *, status=(400,)):
    assert response.status_code in status, (response.status_code, response.content[:300])
    body = response.json()
    names_where = body.get("field") == "file" or (body.get("errors") and all(isinstance(e["row"], int) for e in body["errors"]))
    assert names_where, body
    assert not new_prompts().exists()
    assert Response.objects.count() == 10 and Task.objects.count() == 5  # the campaign's own five prompts, untouched
    return body


# Zip archives


def test_a_zip_bomb_is_refused_before_it_is_unpacked(carol, campaign, settings, tmp_path, monkeypatch):
    settings.IMPORT_MAX_BYTES = 1 * MB
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the archive would be unpacked
    bomb = a_zip({"ds/state.json": b"{}", "ds/data-00000-of-00001.arrow": b"\0" * (3 * MB)})
    assert len(bomb) < 20_000
    response = upload(carol, "dataset.zip", bomb, kind="preferences")
    body = assert_refused_and_nothing_written(response, status=(413,))
    assert "unpacks to more than 1 MB" in body["detail"]
    assert not any(tmp_path.rglob("*.arrow"))


def test_a_small_zip_may_not_unpack_to_a_hundred_times_its_size(carol, campaign, settings, tmp_path, monkeypatch):
    settings.IMPORT_MAX_BYTES = 2048 * MB  # the PostgreSQL default: far more than the bomb
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    bomb = a_zip({"ds/state.json": b"{}", "ds/data-00000-of-00001.arrow": b"\0" * (80 * MB)})
    assert len(bomb) < 200_000
    body = assert_refused_and_nothing_written(upload(carol, "dataset.zip", bomb, kind="preferences"), status=(413,))
    assert "100 times the archive's size" in body["detail"]
    assert not any(tmp_path.rglob("*.arrow"))


def test_a_zip_member_with_a_bad_checksum_is_a_400_naming_it(carol, campaign):
    data = b"0123456789abcdef" * 64
    content = with_bad_crc(a_zip({"ds/state.json": b"{}", "ds/data.arrow": data}, compression=zipfile.ZIP_STORED), data)
    response = upload(carol, "dataset.zip", content, kind="preferences")
    body = assert_refused_and_nothing_written(response)
    assert "damaged" in body["detail"] and "ds/data.arrow" in body["detail"]


# CSV quotes


def test_a_csv_with_an_unbalanced_quote_is_a_row_error_not_merged_rows(carol, campaign):
    content = b'external_id,text\nq1,"Hello\nq2,World\nq3,Again\n'
    response = upload(carol, "prompts.csv", content, kind="prompts")
    body = assert_refused_and_nothing_written(response)
    [error] = body["errors"]
    assert error["row"] == 1 and "closing quote" in error["error"]


def test_a_quote_in_the_middle_of_a_quoted_cell_is_a_row_error(carol, campaign):
    response = upload(carol, "prompts.csv", b'external_id,text\nq1,fine\nq2,"say "hi" now"\n', kind="prompts")
    body = assert_refused_and_nothing_written(response)
    assert body["errors"][0]["row"] == 2


# Strings PostgreSQL cannot store, numbers Python will not parse, nesting past the recursion limit


def test_nul_characters_and_lone_surrogates_are_row_errors(carol, campaign):
    content = jsonl(
        {"id": "ok", "text": "Fine"},
        {"id": "nul", "text": "a\u0000b"},
        '{"id": "surrogate", "text": "half a pair: \\ud800"}',
        {"id": "meta", "text": "Fine", "metadata": {"note": "x\u0000"}},
    )
    body = assert_refused_and_nothing_written(upload(carol, "p.jsonl", content, kind="prompts"))
    assert [(e["row"], e["error"].split(" contains")[0]) for e in body["errors"]] == [
        (2, "the prompt"), (3, "the prompt"), (4, "metadata"),
    ]
    assert "NUL" in body["errors"][0]["error"] and "surrogate" in body["errors"][1]["error"]


def test_a_nul_byte_in_a_csv_cell_is_a_row_error(carol, campaign):
    body = assert_refused_and_nothing_written(upload(carol, "p.csv", b"external_id,text\nq1,a\x00b\n", kind="prompts"))
    assert body["errors"][0]["row"] == 1 and "NUL" in body["errors"][0]["error"]


def test_unicode_digits_are_text_like_any_other(carol, campaign):
    response = upload(carol, "p.jsonl", jsonl({"id": "²٣", "text": "x²", "metadata": {"n": "٣"}}), kind="prompts")
    assert response.status_code == 201, response.content
    assert Prompt.objects.get(external_id="²٣").metadata == {"n": "٣"}


MALFORMED = {
    "truncated JSON": ("rows.json", b'[{"id": "a", "text": "x"}, {"id": "b", "te', "prompts"),
    "truncated JSONL line": ("rows.jsonl", b'{"id": "a", "text": "x"}\n{"id": "b", "te', "prompts"),
    "wrong types": ("rows.jsonl", jsonl({"id": "a", "text": 5}, {"id": ["b"], "text": "x"}, {"id": "c", "text": "x", "metadata": "m"}), "prompts"),
    "a list, not an object": ("rows.jsonl", b"[1, 2]\n", "prompts"),
    "NUL": ("rows.jsonl", jsonl({"id": "a", "text": "\u0000"}), "prompts"),
    "NUL in a key": ("rows.jsonl", jsonl({"id": "a", "text": "x", "metadata": {"k\u0000": 1}}), "prompts"),
    "NUL in a response": ("rows.jsonl", jsonl({"prompt": "Hi", "chosen": "a\u0000", "rejected": "b", "model": "m1"}), "preferences"),
    "lone surrogate in a model name": ("rows.jsonl", b'{"prompt": "Hi", "chosen": "a", "rejected": "b", "model": "m\\udc80"}\n', "preferences"),
    "invalid UTF-8": ("rows.jsonl", b'{"id": "a", "text": "\xff\xfe\xfd"}\n', "prompts"),
    "UTF-16": ("rows.csv", "external_id,text\nq1,Hi\n".encode("utf-16"), "prompts"),
    "huge CSV cell": ("rows.csv", b"external_id,text\nq1," + b"x" * 200_000 + b"\n", "prompts"),
    "huge JSON field": ("rows.jsonl", jsonl({"id": "a", "text": "x" * 200_000}), "prompts"),
    "a number of 5,000 digits": ("rows.jsonl", b'{"id": ' + b"9" * 5000 + b', "text": "x"}\n', "prompts"),
    "deep nesting": ("rows.jsonl", b'{"id": "a", "text": "x", "metadata": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001 + b"\n", "prompts"),
    "deep nesting in a JSON file": ("rows.json", b"[" * 100_000 + b"]" * 100_000, "prompts"),
    "deep nesting in a CSV cell": ("rows.csv", b'external_id,text,metadata\nq1,x,"' + b"[" * 100_000 + b'"\n', "prompts"),
    "bad parquet": ("rows.parquet", b"PAR1" + b"\x00garbage" * 100 + b"PAR1", "preferences"),
    "truncated parquet": ("rows.parquet", None, "preferences"),
    "not a zip": ("rows.zip", b"PK\x03\x04 not really a zip", "preferences"),
    "zip with an unsafe path": ("rows.zip", a_zip({"../../evil/state.json": b"{}"}), "preferences"),
    "zip bomb": ("rows.zip", a_zip({"ds/state.json": b"{}", "ds/x.arrow": b"\0" * (3 * MB)}), "preferences"),
    "zip with a bad CRC": ("rows.zip", with_bad_crc(a_zip({"ds/state.json": b"{}", "ds/x.arrow": b"abcdefgh" * 100}, zipfile.ZIP_STORED), b"abcdefgh" * 100), "preferences"),
    "Label Studio task nested too deep": ("export.json", b'[{"id": 1, "data": {"prompt": "p", "answer1": "a", "answer2": ' + b"[" * 900 + b"]" * 900 + b"}}]", "preferences"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_a_400_naming_the_file_or_row_never_a_500(carol, campaign, settings, case):
    settings.IMPORT_MAX_BYTES = 1 * MB  # the zip bomb's limit; every other file is smaller
    name, content, kind = MALFORMED[case]
    if content is None:
        whole = parquet_bytes([{"prompt": f"Q{i}", "chosen": "a", "rejected": "b", "model": "m1"} for i in range(500)])
        content = whole[: len(whole) // 2]
    response = upload(carol, name, content, kind=kind)
    assert_refused_and_nothing_written(response, status=(400, 413))


# The streaming path's chunks behave as one file (on SQLite: the file is checked whole)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(copying, "CHUNK_ROWS", 2)


def test_a_repeat_in_a_later_chunk_names_the_row_it_repeats(carol, campaign, small_chunks):
    content = jsonl(*({"id": f"c{i}", "text": f"Q{i}?"} for i in range(5)), {"id": "c1", "text": "Again?"}, {"id": "p3", "text": "Old"})
    refused = upload(carol, "p.jsonl", content, kind="prompts")
    body = assert_refused_and_nothing_written(refused)
    assert body["errors"] == [
        {"row": 6, "error": "external_id 'c1' repeats row 2"},
        {"row": 7, "error": "external_id 'p3' already exists in this campaign"},
    ]
    assert body["detail"].startswith("2 of 7 rows are invalid")
    skipped = upload(carol, "p.jsonl", content, kind="prompts", on_duplicate="skip")
    assert skipped.status_code == 201, skipped.content
    assert (skipped.json()["prompts_created"], skipped.json()["skipped_count"]) == (5, 2)
    assert Prompt.objects.get(external_id="c1").messages[0]["content"] == "Q1?"


def test_a_bad_last_row_leaves_nothing_from_the_chunks_before_it(carol, campaign, small_chunks):
    rows = [{"prompt": f"Q{i}?", "chosen": "a", "rejected": "b", "model": "m1"} for i in range(7)] + [{"prompt": "", "chosen": "a", "rejected": "b", "model": "m1"}]
    body = assert_refused_and_nothing_written(upload(carol, "p.jsonl", jsonl(*rows), kind="preferences"))
    assert [e["row"] for e in body["errors"]] == [8]


def test_pairs_across_chunks_each_make_a_task_of_their_two_responses(carol, campaign, small_chunks):
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}", "chosen_model": "m1", "rejected_model": "m2"} for i in range(5)]
    response = upload(carol, "p.jsonl", jsonl(*rows), kind="preferences")
    assert response.status_code == 201, response.content
    assert (response.json()["prompts_created"], response.json()["responses_created"], response.json()["tasks_built"]) == (5, 10, 5)
    for task in Task.objects.filter(prompt__in=new_prompts()):
        texts = sorted(task.responses.values_list("text", flat=True))
        assert texts[0].startswith("bad") and texts[1].startswith("good") and texts[0][4:] == texts[1][5:]
        assert sorted(task.slots.values_list("position", flat=True)) == [0, 1]


def test_responses_to_one_prompt_across_chunks_make_its_tasks_at_the_end(carol, campaign, small_chunks):
    assert upload(carol, "p.jsonl", jsonl({"id": "n1", "text": "New?"}), kind="prompts").status_code == 201
    rows = [{"prompt": "n1", "model": m, "text": f"answer {i}"} for i, m in enumerate(["m1", "m1", "m2", "m2"])]
    response = upload(carol, "r.jsonl", jsonl(*rows), kind="responses")
    assert response.status_code == 201, response.content
    assert (response.json()["responses_created"], response.json()["tasks_built"]) == (4, 2)
    for task in Task.objects.filter(prompt__external_id="n1"):  # interleaved across models, as build_tasks does
        assert sorted(task.responses.values_list("model_version__name", flat=True)) == ["m1", "m2"]


def test_the_import_reports_its_progress(carol, campaign, small_chunks, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(*({"id": f"g{i}", "text": f"Q{i}?"} for i in range(5))))
    seen = []
    with files.open_source(path, "p.jsonl") as source:
        summary = files.import_source(campaign, source, files.import_options({"kind": "prompts"}), on_progress=lambda done, rows: seen.append((done, rows)))
    assert summary["prompts_created"] == 5
    assert seen and seen[-1] == (5, 5) and all(rows == 5 for _, rows in seen)


def test_nan_in_a_json_body_is_a_row_error(campaign):
    from annotate.campaigns.imports.batches import import_prompts
    from annotate.core.errors import ImportRejected

    with pytest.raises(ImportRejected) as caught:
        import_prompts(campaign, [{"external_id": "ok", "text": "x"}, {"external_id": "n", "text": "x", "metadata": {"a": float("nan")}}])
    assert caught.value.errors == [{"row": 1, "error": "metadata holds NaN or Infinity, which JSON cannot store"}]
    assert not new_prompts().exists()


def test_without_the_right_to_skip_foreign_key_checks_the_import_still_works(carol, campaign):
    """A role that may not SET session_replication_role (not a superuser): the rows are checked one by one instead."""
    from django.db import DatabaseError, connection, transaction

    if not copying.available():
        pytest.skip("the COPY path is PostgreSQL's")
    with connection.cursor() as cursor:  # all inside the test's transaction: the role goes when it is rolled back
        cursor.execute("CREATE ROLE arbiter_test_importer NOSUPERUSER")
        cursor.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO arbiter_test_importer")
        cursor.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO arbiter_test_importer")
        cursor.execute("SET LOCAL ROLE arbiter_test_importer")
        with pytest.raises(DatabaseError), transaction.atomic():
            cursor.execute("SET LOCAL session_replication_role = replica")
        rows = [{"prompt": f"Q{i}?", "chosen": "a", "rejected": "b", "chosen_model": "m1", "rejected_model": "m2"} for i in range(3)]
        response = upload(carol, "p.jsonl", jsonl(*rows), kind="preferences")
        cursor.execute("SELECT current_setting('session_replication_role'), current_user")
        assert cursor.fetchone() == ("origin", "arbiter_test_importer")
        cursor.execute("RESET ROLE")
    assert response.status_code == 201, response.content
    assert response.json()["tasks_built"] == 3


def test_a_copy_that_fails_in_the_writing_thread_rejects_the_whole_file(carol, campaign, monkeypatch):
    """COPYs run in a thread of their own: a prompt another import added meanwhile still rolls everything back."""
    if not copying.available():
        pytest.skip("the COPY path is PostgreSQL's")
    monkeypatch.setattr(copying, "CHUNK_ROWS", 2)
    monkeypatch.setattr(copying._Chunks, "_taken", lambda self, ids: {})  # as if p3 arrived after the check
    rows = [{"id": f"new{i}", "text": f"Q{i}?"} for i in range(4)] + [{"id": "p3", "text": "taken"}]
    response = upload(carol, "p.jsonl", jsonl(*rows), kind="prompts")
    assert response.status_code == 400, response.content
    assert "added by another import meanwhile" in response.json()["detail"]
    assert not new_prompts().exists()
