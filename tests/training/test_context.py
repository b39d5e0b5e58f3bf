"""Context passages reach the reward model: one rendering (`chat_with_context`), and it matters for learning."""

from __future__ import annotations

from training.preferences import PreferenceOptions, RankedJudgement, build_preference_dataset, chat_with_context
from training.reward import train_reward_model
from training.reward_config import RewardConfig

WORDS = ("apple", "tiger")


def test_passages_go_in_a_numbered_system_turn_before_the_conversation():
    chat = [{"role": "user", "content": "Which?"}]
    context = [{"title": "Fruit", "text": "An apple."}, {"title": "", "text": "A tiger."}]
    assert chat_with_context(chat, context) == [
        {"role": "system", "content": "Passages:\n\n[1] Fruit\nAn apple.\n\n[2] A tiger."},
        {"role": "user", "content": "Which?"},
    ]
    with_system = [{"role": "system", "content": "Be brief."}, *chat]
    assert chat_with_context(with_system, context[:1])[0] == {"role": "system", "content": "Be brief.\n\nPassages:\n\n[1] Fruit\nAn apple."}
    assert chat_with_context(chat, []) is chat  # no passages: the prompt as it always was


def passage_judgements(n: int, with_context: bool, start: int = 0) -> list[RankedJudgement]:
    """The right answer is the word the passage names; the question alone never says which."""
    judgements = []
    for i in range(start, start + n):
        right, wrong = WORDS[i % 2], WORDS[1 - i % 2]
        context = [{"title": "", "text": f"The answer is {right}."}] if with_context else []
        judgements.append(RankedJudgement(
            prompt_id=i, prompt_messages=chat_with_context([{"role": "user", "content": "What is the answer?"}], context),
            responses={f"{i}-r": right, f"{i}-w": wrong}, ranking=[[f"{i}-r"], [f"{i}-w"]], labeler_id="sim",
        ))
    return judgements


def accuracy(model_dir, tmp_path, with_context: bool) -> float:
    train = build_preference_dataset(passage_judgements(48, with_context), PreferenceOptions(eval_fraction=0.1, seed=0))
    held_out = build_preference_dataset(passage_judgements(16, with_context, start=1000), PreferenceOptions(eval_fraction=0.25, seed=0, min_train_pairs=1))
    config = RewardConfig(base_model=str(model_dir), output_dir=str(tmp_path / f"rm-{with_context}"), use_lora=False, learning_rate=1e-3,
                          num_train_epochs=6, logging_steps=50, seed=0, center_rewards_coefficient=None)
    # held out: 8 prompts naming each word, so a model blind to the passage gets exactly half right
    return train_reward_model(config, train.train + train.eval, held_out.train + held_out.eval).metrics["eval/accuracy"]


def test_a_reward_model_learns_an_answer_that_depends_on_the_passage_and_cannot_without_it(tiny_model_dir, tmp_path):
    assert accuracy(tiny_model_dir, tmp_path, with_context=True) >= 0.9
    assert accuracy(tiny_model_dir, tmp_path, with_context=False) <= 0.5
