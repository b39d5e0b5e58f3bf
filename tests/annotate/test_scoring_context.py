"""The scoring endpoint's `context`: the passages reach the reward model's input (a system turn before the prompt),
so they change the score; a malformed or oversized context is a 400 naming the field."""
from __future__ import annotations

import pytest

from annotate.campaigns.imports.batches import MAX_TEXT_CHARS
from annotate.models import ModelVersion
from tests.conftest import api_client, join, make_campaign, make_user

pytestmark = pytest.mark.django_db
PASSAGE = "The Danube flows through ten countries."


@pytest.fixture
def scorer(tiny_checkpoint, artifacts):
    """A researcher of `rag` and the tiny model registered as the campaign's reward model."""
    campaign = make_campaign("rag", prompts=1)
    version = ModelVersion.objects.create(name="rag-rm", kind="reward", checkpoint_path=str(tiny_checkpoint), metadata={"campaign": "rag"})
    return api_client(join(make_user("rita"), campaign, "researcher")), f"/api/v1/models/{version.pk}/score/"


@pytest.fixture
def chats_scored(monkeypatch):
    """The chats the reward model was given, in order (scoring still happens)."""
    import training.reward_scoring as reward_scoring

    original, chats = reward_scoring.score, []

    def recording(model, tokenizer, chat, responses, *args, **kwargs):
        chats.append(chat)
        return original(model, tokenizer, chat, responses, *args, **kwargs)

    monkeypatch.setattr(reward_scoring, "score", recording)
    return chats


def test_the_context_passages_are_in_the_reward_models_input_and_change_the_score(scorer, chats_scored):
    client, url = scorer
    body = {"prompt": "How many countries does the Danube cross?", "responses": ["Ten.", "Three."]}
    plain = client.post(url, body, format="json")
    with_context = client.post(url, {**body, "context": [{"title": "Rivers", "text": PASSAGE}]}, format="json")
    assert plain.status_code == with_context.status_code == 200, with_context.content
    assert plain.json()["scores"] != with_context.json()["scores"]
    without, within = chats_scored
    assert PASSAGE not in str(without)
    assert within[0] == {"role": "system", "content": f"Passages:\n\n[1] Rivers\n{PASSAGE}"} and within[1:] == without
    assert client.post(url, {**body, "context": [PASSAGE]}, format="json").status_code == 200  # a plain string is an untitled passage
    assert chats_scored[-1][0]["content"] == f"Passages:\n\n[1] {PASSAGE}"


@pytest.mark.parametrize("context", ["a bare string", {"text": PASSAGE}, [42], [{"title": "no text"}], ["x" * (MAX_TEXT_CHARS + 1)]])
def test_a_bad_context_is_a_400_naming_the_field_and_nothing_is_scored(context, scorer, chats_scored):
    client, url = scorer
    response = client.post(url, {"prompt": "?", "responses": ["y"], "context": context}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["context"], response.content
    assert chats_scored == []


@pytest.mark.parametrize("field, body", [
    ("prompt", {"prompt": "x" * (MAX_TEXT_CHARS + 1), "responses": ["a"]}),
    ("prompt", {"prompt": [{"role": "user", "content": "x" * MAX_TEXT_CHARS}, {"role": "user", "content": "y"}], "responses": ["a"]}),
    ("responses", {"prompt": "Hello?", "responses": ["a", "x" * (MAX_TEXT_CHARS + 1)]}),
])
def test_an_oversized_prompt_or_response_is_a_400_naming_the_field_and_nothing_is_scored(field, body, scorer, chats_scored):
    client, url = scorer
    response = client.post(url, body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert chats_scored == []
