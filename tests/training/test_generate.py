"""Sampling responses: counts, lengths, seeds, left padding, validation and cancellation."""

from __future__ import annotations

from collections import Counter
from operator import attrgetter

import pytest

from training.generate import GenerationConfig, generate
from training.models import load_causal_lm, load_tokenizer

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Name three colours of the rainbow, then say which one you like most."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Opposite of hot?"}],
]


def sample(model_dir, prompts=PROMPTS, **config) -> list:
    config = GenerationConfig(**{"max_new_tokens": 6, "device": "cpu", **config})
    return [completion for batch in generate(model_dir, prompts, config) for completion in batch]


def test_each_prompt_gets_n_responses_of_at_most_max_new_tokens(tiny_model_dir):
    completions = sample(tiny_model_dir, n_per_prompt=3, max_new_tokens=5, batch_size=4)

    assert Counter(c.prompt_index for c in completions) == {0: 3, 1: 3, 2: 3}
    assert sorted({(c.prompt_index, c.sample_index) for c in completions}) == [
        (p, s) for p in range(3) for s in range(3)
    ]
    # a random tiny model practically never samples EOS, so every response runs to the limit
    assert all(c.num_tokens == 5 and not c.finished_with_eos for c in completions)
    assert all(c.text for c in completions)


def test_the_same_seed_gives_the_same_responses(tiny_model_dir):
    first = sample(tiny_model_dir, seed=7, temperature=1.0, n_per_prompt=2)
    again = sample(tiny_model_dir, seed=7, temperature=1.0, n_per_prompt=2)
    other = sample(tiny_model_dir, seed=8, temperature=1.0, n_per_prompt=2)

    assert first == again
    assert [c.text for c in first] != [c.text for c in other]


def test_a_tiny_top_p_leaves_only_the_most_likely_token(tiny_model_dir):
    nucleus = sample(tiny_model_dir, top_p=1e-6, temperature=2.0, seed=1)
    greedy = sample(tiny_model_dir, greedy=True)

    assert nucleus == greedy


def test_left_padded_batches_give_the_one_at_a_time_greedy_answers(smollm2_dir):
    # the real model: a random tiny one greedily repeats its last token whatever the padding
    batched = sample(smollm2_dir, greedy=True, max_new_tokens=10, batch_size=3)
    alone = sample(smollm2_dir, greedy=True, max_new_tokens=10, batch_size=1)

    by_prompt = attrgetter("prompt_index")
    assert sorted(batched, key=by_prompt) == sorted(alone, key=by_prompt)
    assert len({c.text for c in batched}) == 3
    short = next(c for c in batched if c.prompt_index == 2)
    assert short.finished_with_eos and short.num_tokens < 10


def test_greedy_responses_match_transformers_generate(smollm2_dir):
    model, tokenizer = load_causal_lm(smollm2_dir, device="cpu"), load_tokenizer(smollm2_dir)
    inputs = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=10, top_k=None, top_p=None, temperature=None)

    [ours] = sample(smollm2_dir, PROMPTS[1:2], greedy=True, max_new_tokens=10)
    assert ours.text == tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", 0.0),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", 0),
        ("max_new_tokens", -3),
        ("n_per_prompt", 0),
        ("batch_size", 0),
    ],
)
def test_an_out_of_range_setting_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value}).validate()


def test_the_defaults_are_valid():
    assert GenerationConfig().validate() == GenerationConfig()


def test_should_stop_cancels_between_batches_and_progress_is_reported(tiny_model_dir):
    progress: list[tuple[int, int]] = []
    config = GenerationConfig(n_per_prompt=2, batch_size=2, max_new_tokens=3, device="cpu")

    def report(done: int, total: int) -> None:
        progress.append((done, total))

    batches = list(generate(tiny_model_dir, PROMPTS, config, on_batch=report, should_stop=lambda: len(progress) == 2))

    assert [len(batch) for batch in batches] == [2, 2]
    assert progress == [(2, 6), (4, 6)]
