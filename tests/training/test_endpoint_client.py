"""The endpoint client against a real HTTP server that speaks the chat-completions protocol over the tiny model.

tests/chat_server.py stands in for vLLM, TGI and SGLang: these tests send real requests through
the official `openai` client to it, with the faults those servers and the networks in front of
them produce (429 with Retry-After, 500, timeouts, malformed bodies, fewer choices than asked).
"""
from __future__ import annotations

import time

import pytest

from tests.chat_server import ChatServer
from training.endpoint_client import Endpoint, SamplingConfig, generate_from_endpoint, request_seed

PROMPTS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(6)]


@pytest.fixture
def server(tiny_checkpoint):
    servers = []

    def start(**options) -> tuple[ChatServer, str]:
        server = ChatServer(str(tiny_checkpoint), **options)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()


def run_all(endpoint, prompts=PROMPTS, **sampling):
    config = SamplingConfig(max_tokens=6, temperature=1.0, **sampling)
    results = [result for batch in generate_from_endpoint(endpoint, prompts, config) for result in batch]
    return sorted(results, key=lambda r: r.prompt_index)


def test_every_prompt_gets_n_samples_in_one_request_each(server):
    chat, url = server()
    results = run_all(Endpoint(url, "tiny"), n_per_prompt=3)
    assert [len(r.samples) for r in results] == [3] * 6 and not any(r.error for r in results)
    assert [s.sample_index for s in results[0].samples] == [0, 1, 2]
    assert len(chat.seen) == 6 and {s.n for s in chat.seen} == {3}
    assert len({s.seed for s in chat.seen}) == 6  # a seed per request, derived from the run's seed


def test_a_server_that_returns_fewer_choices_than_asked_is_asked_again_one_sample_at_a_time(server):
    chat, url = server(honour_n=False)
    results = run_all(Endpoint(url, "tiny", max_concurrency=1), n_per_prompt=3)
    assert [len(r.samples) for r in results] == [3] * 6 and not any(r.error for r in results)
    # the first prompt learns it (one request with n=3, then 2 singles), the rest ask singly from the start
    assert [s.n for s in chat.seen[:3]] == [3, 1, 1] and {s.n for s in chat.seen[3:]} == {1}
    assert len(chat.seen) == 3 + 5 * 3
    first = [s.seed for s in chat.seen if s.prompt == "Question 0?"]
    assert len(set(first)) == 3  # split requests do not repeat each other's samples


def test_a_server_that_refuses_n_is_asked_one_sample_at_a_time(server):
    chat, url = server()
    chat.faults["Question 0?"] = ["n-refused"]
    results = run_all(Endpoint(url, "tiny", max_concurrency=1), prompts=PROMPTS[:2], n_per_prompt=2)
    assert [len(r.samples) for r in results] == [2, 2] and not any(r.error for r in results)
    assert [(s.n, s.status) for s in chat.seen] == [(2, 400), (1, 200), (1, 200), (1, 200), (1, 200)]


def test_429_is_retried_after_the_servers_retry_after(server):
    chat, url = server(retry_after="2")
    chat.faults["Question 1?"] = ["429"]
    results = run_all(Endpoint(url, "tiny"), prompts=PROMPTS[:2])
    assert not any(r.error for r in results) and all(len(r.samples) == 1 for r in results)
    refused, retried = [s for s in chat.seen if s.prompt == "Question 1?"]
    assert refused.status == 429 and retried.status == 200
    assert retried.at - refused.at >= 2.0  # the client's own backoff would have waited 0.5 s at most


def test_500s_and_timeouts_are_retried(server):
    chat, url = server(slow_seconds=6)
    chat.faults["Question 0?"] = ["500", "500"]
    chat.faults["Question 1?"] = ["slow"]
    results = run_all(Endpoint(url, "tiny", timeout=2.0), prompts=PROMPTS[:3])
    assert not any(r.error for r in results) and all(len(r.samples) == 1 for r in results)
    assert [s.status for s in chat.seen if s.prompt == "Question 0?"] == [500, 500, 200]
    assert len([s for s in chat.seen if s.prompt == "Question 1?"]) == 2


def test_what_still_fails_after_the_retries_is_that_prompts_error_and_the_rest_are_kept(server):
    chat, url = server()
    chat.faults["Question 0?"] = ["500"] * 3
    chat.faults["Question 1?"] = ["malformed"]
    chat.faults["Question 2?"] = ["no-choices"]
    results = run_all(Endpoint(url, "tiny", max_retries=2), prompts=PROMPTS[:4])
    assert results[0].error.startswith("HTTP 500 after 2 retries") and results[0].samples == ()
    assert results[1].error.startswith("malformed answer")
    assert results[2].error == "the server answered with no choices"
    assert results[3].error is None and len(results[3].samples) == 1


def test_no_more_requests_are_in_flight_than_the_limit(server):
    chat, url = server(honour_n=False, hold_until_in_flight=2)
    results = run_all(Endpoint(url, "tiny", max_concurrency=2), n_per_prompt=3)
    assert all(len(r.samples) == 3 for r in results)
    assert chat.max_in_flight == 2  # held until 2 were in flight: never a third


def test_the_key_is_sent_as_a_bearer_token(server):
    chat, url = server()
    run_all(Endpoint(url, "tiny", api_key="sk-secret-1"), prompts=PROMPTS[:1])
    assert chat.seen[0].authorization == "Bearer sk-secret-1"
    assert "sk-secret-1" not in repr(Endpoint(url, "tiny", api_key="sk-secret-1"))


def test_stopping_cancels_the_requests_in_flight(server):
    chat, url = server()
    for prompt in PROMPTS[1:]:
        chat.faults[prompt[0]["content"]] = ["hold"]  # answered only when the server is released (or after 30 s)
    stop = []
    batches = generate_from_endpoint(Endpoint(url, "tiny", max_concurrency=6), PROMPTS, SamplingConfig(max_tokens=4), should_stop=lambda: bool(stop))
    got = []
    for batch in batches:
        got.extend(batch)
        stop.append(True)
    assert [r.prompt_index for r in got] == [0]  # the iterator ended without waiting for the held requests
    assert len(chat.seen) == 6


def test_answers_that_arrived_before_the_stop_was_seen_are_still_yielded(server):
    chat, url = server()
    for prompt in PROMPTS[1:]:
        chat.faults[prompt[0]["content"]] = ["hold"]

    def stop_once_the_first_answer_is_back() -> bool:
        # asked before the first answer was taken (polls of 1 ms): the answer is in the queue when the stop comes
        while not chat.seen:
            time.sleep(0.01)
        time.sleep(1.0)  # a 4-token answer from the tiny model: long back by now
        return True

    batches = generate_from_endpoint(Endpoint(url, "tiny", max_concurrency=6), PROMPTS, SamplingConfig(max_tokens=4),
                                     should_stop=stop_once_the_first_answer_is_back, poll_seconds=0.001)
    assert [r.prompt_index for batch in batches for r in batch] == [0]


def test_request_seeds_are_stable_and_distinct():
    assert request_seed(3, 1, 0) == request_seed(3, 1, 0)
    assert len({request_seed(3, p, s) for p in range(20) for s in range(4)}) == 80
    assert request_seed(None, 0, 0) is None
