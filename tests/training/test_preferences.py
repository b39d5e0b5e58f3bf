"""Rankings -> preference pairs -> TRL rows: the contract between the web half and the ML half."""

from __future__ import annotations

import pytest

from training.preferences import (
    MIN_EVAL_PAIRS,
    MIN_TRAIN_PAIRS,
    PreferenceDatasetError,
    PreferenceOptions,
    RankedJudgement,
    aggregate_majority,
    build_preference_dataset,
    judgement_pairs,
    ranking_to_pairs,
    read_jsonl,
    split_prompts,
)

RESPONSES = {"a": "Paris.", "b": "Lyon.", "c": "Marseille.", "d": "I don't know."}


def judge(labeler: str, ranking: list[list[str]], prompt_id: int = 1, **kwargs) -> RankedJudgement:
    return RankedJudgement(
        prompt_id=prompt_id,
        prompt_messages=[{"role": "user", "content": f"Question {prompt_id}: capital of France?"}],
        responses=RESPONSES,
        ranking=ranking,
        labeler_id=labeler,
        **kwargs,
    )


def many_prompts(labeler: str, n_prompts: int = 20, **kwargs) -> list[RankedJudgement]:
    """n_prompts judgements of three pairs each: [[a], [b], [c]]."""
    return [judge(labeler, [["a"], ["b"], ["c"]], prompt_id=i, **kwargs) for i in range(n_prompts)]


OPTIONS = PreferenceOptions(eval_fraction=0.25, seed=0)


# ---------------------------------------------------------------- ranking_to_pairs


def test_every_pair_across_groups_is_ordered_best_first():
    assert ranking_to_pairs([["a"], ["b", "c"], ["d"]]) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]


def test_ties_give_no_pair():
    assert ranking_to_pairs([["a", "b", "c"]]) == []
    assert ranking_to_pairs([["a", "b"], ["c"]]) == [("a", "c"), ("b", "c")]
    assert ranking_to_pairs([["a"]]) == []


def test_a_response_ranked_twice_is_refused():
    with pytest.raises(PreferenceDatasetError, match="twice"):
        ranking_to_pairs([["a"], ["b", "a"]])


def test_a_ranked_response_without_text_is_refused():
    judgement = judge("alice", [["a"], ["zzz"]])
    with pytest.raises(PreferenceDatasetError, match="zzz"):
        judgement_pairs(judgement)


# ---------------------------------------------------------------- weights and margins


def test_per_judgement_weighting_makes_each_judgement_count_once():
    pairs = judgement_pairs(judge("alice", [["a"], ["b", "c"], ["d"]], weight=2.0), "per_judgement")
    assert [p.weight for p in pairs] == [pytest.approx(2.0 / 5)] * 5


def test_rank_distance_weighting_counts_the_groups_between():
    pairs = judgement_pairs(judge("alice", [["a"], ["b", "c"], ["d"]]), "rank_distance")
    assert [(p.chosen_id, p.rejected_id, p.weight) for p in pairs] == [
        ("a", "b", 1.0), ("a", "c", 1.0), ("a", "d", 2.0), ("b", "d", 1.0), ("c", "d", 1.0),
    ]


def test_margin_grows_with_rank_distance_from_zero_for_neighbours():
    dataset = build_preference_dataset(many_prompts("alice"), OPTIONS)
    margins = {(r["chosen_id"], r["rejected_id"]): r["margin"] for r in dataset.train}
    assert margins == {("a", "b"): 0.0, ("b", "c"): 0.0, ("a", "c"): 0.5}


# ---------------------------------------------------------------- aggregation across labelers


def test_majority_keeps_the_order_most_labelers_state():
    pairs = [
        *judgement_pairs(judge("alice", [["a"], ["b"]])),
        *judgement_pairs(judge("bob", [["a"], ["b"]])),
        *judgement_pairs(judge("carol", [["b"], ["a"]])),
    ]
    kept, tied = aggregate_majority(pairs)
    assert [(p.chosen_id, p.rejected_id, p.votes, p.dissent) for p in kept] == [("a", "b", 2, 1)]
    assert tied == 0


def test_majority_drops_a_pair_with_equal_votes():
    pairs = [
        *judgement_pairs(judge("alice", [["a"], ["b"], ["c"]])),
        *judgement_pairs(judge("bob", [["b"], ["a"], ["c"]])),
    ]
    kept, tied = aggregate_majority(pairs)
    assert sorted((p.chosen_id, p.rejected_id, p.votes) for p in kept) == [("a", "c", 2), ("b", "c", 2)]
    assert tied == 1


def test_majority_never_merges_pairs_of_different_prompts():
    pairs = [*judgement_pairs(judge("alice", [["a"], ["b"]], 1)), *judgement_pairs(judge("bob", [["b"], ["a"]], 2))]
    kept, tied = aggregate_majority(pairs)
    assert len(kept) == 2 and tied == 0


def test_keeping_all_pairs_keeps_every_labelers_votes():
    judgements = many_prompts("alice") + many_prompts("bob")
    everything = build_preference_dataset(judgements, OPTIONS)
    majority = build_preference_dataset(judgements, PreferenceOptions(eval_fraction=0.25, aggregation="majority"))
    assert len(everything.train) + len(everything.eval) == 2 * 20 * 3
    assert len(majority.train) + len(majority.eval) == 20 * 3


# ---------------------------------------------------------------- gold checks


def mallory_who_failed_gold_checks() -> list[RankedJudgement]:
    """20 judgements that rank "I don't know." first, excluded after failed gold checks."""
    return [judge("mallory", [["d"], ["a"]], prompt_id=i, excluded=True) for i in range(20)]


def test_judgements_of_labelers_who_failed_gold_checks_are_left_out():
    judgements = many_prompts("alice") + mallory_who_failed_gold_checks()
    dataset = build_preference_dataset(judgements, OPTIONS)
    rows = dataset.train + dataset.eval
    assert ("d", "a") not in {(r["chosen_id"], r["rejected_id"]) for r in rows}
    assert dataset.stats["judgements_excluded"] == 20


def test_failed_labelers_can_be_included_on_request():
    judgements = many_prompts("alice") + mallory_who_failed_gold_checks()
    dataset = build_preference_dataset(judgements, PreferenceOptions(eval_fraction=0.25, include_excluded=True))
    assert ("d", "a") in {(r["chosen_id"], r["rejected_id"]) for r in dataset.train + dataset.eval}


def test_only_excluded_judgements_say_so():
    with pytest.raises(PreferenceDatasetError, match="failed gold checks"):
        build_preference_dataset(many_prompts("mallory", excluded=True), OPTIONS)


# ---------------------------------------------------------------- split


def test_no_prompt_is_in_both_train_and_eval():
    dataset = build_preference_dataset(many_prompts("alice", 40) + many_prompts("bob", 40), OPTIONS)
    train_prompts = {r["prompt_id"] for r in dataset.train}
    eval_prompts = {r["prompt_id"] for r in dataset.eval}
    assert train_prompts.isdisjoint(eval_prompts)
    assert len(eval_prompts) == 10 and len(train_prompts) == 30


def test_the_split_depends_only_on_the_prompts_and_the_seed():
    judgements = many_prompts("alice", 40)
    first = build_preference_dataset(judgements, OPTIONS)
    again = build_preference_dataset(list(reversed(judgements)), OPTIONS)
    other_seed = build_preference_dataset(judgements, PreferenceOptions(eval_fraction=0.25, seed=1))
    assert first.train == again.train and first.eval == again.eval
    assert {r["prompt_id"] for r in first.eval} != {r["prompt_id"] for r in other_seed.eval}


def test_at_least_one_prompt_is_held_out_and_at_least_one_trained_on():
    assert len(split_prompts([1, 2, 3], eval_fraction=0.01)) == 1
    assert len(split_prompts([1, 2, 3], eval_fraction=0.99)) == 2


# ---------------------------------------------------------------- format and hash


def test_rows_are_in_trls_conversational_preference_format():
    from trl.data_utils import is_conversational

    row = build_preference_dataset(many_prompts("alice"), OPTIONS).train[0]
    assert is_conversational(row)
    assert row["prompt"] == [{"role": "user", "content": f"Question {row['prompt_id']}: capital of France?"}]
    assert row["chosen"] == [{"role": "assistant", "content": RESPONSES[row["chosen_id"]]}]
    assert row["rejected"] == [{"role": "assistant", "content": RESPONSES[row["rejected_id"]]}]


def test_the_hash_is_stable_and_survives_a_round_trip_through_jsonl(tmp_path):
    dataset = build_preference_dataset(many_prompts("alice"), OPTIONS)
    again = build_preference_dataset(list(reversed(many_prompts("alice"))), OPTIONS)
    train_path, eval_path = dataset.write(tmp_path)
    reloaded = type(dataset)(train=read_jsonl(train_path), eval=read_jsonl(eval_path))
    assert dataset.content_hash == again.content_hash == reloaded.content_hash
    assert len(dataset.content_hash) == 64


def test_the_hash_changes_with_the_content():
    base = build_preference_dataset(many_prompts("alice"), OPTIONS).content_hash
    judgements = many_prompts("alice")
    judgements[0] = judge("alice", [["b"], ["a"], ["c"]], prompt_id=0)
    assert build_preference_dataset(judgements, OPTIONS).content_hash != base
    other_split = PreferenceOptions(eval_fraction=0.25, seed=3)
    assert build_preference_dataset(many_prompts("alice"), other_split).content_hash != base


# ---------------------------------------------------------------- not enough to learn from


def test_too_few_pairs_says_how_many_there_are_and_how_many_are_needed():
    assert (MIN_TRAIN_PAIRS, MIN_EVAL_PAIRS) == (8, 2)
    with pytest.raises(PreferenceDatasetError, match=r"too few preference pairs: 6 for training \(need 8\)"):
        build_preference_dataset(many_prompts("alice", 3), PreferenceOptions(eval_fraction=0.3))


def test_only_ties_is_not_a_dataset():
    judgements = [judge("alice", [["a", "b", "c"]], prompt_id=i) for i in range(20)]
    with pytest.raises(PreferenceDatasetError, match="tied"):
        build_preference_dataset(judgements, OPTIONS)


def test_a_majority_vote_with_only_ties_is_not_a_dataset():
    judgements = many_prompts("alice") + [judge("bob", [["c"], ["b"], ["a"]], prompt_id=i) for i in range(20)]
    with pytest.raises(PreferenceDatasetError, match="tied"):
        build_preference_dataset(judgements, PreferenceOptions(aggregation="majority"))
