"""The closed loop end to end, with simulated labelers who rank by a hidden rule (with noise):
after one round (reward model on their judgements → PPO → head-to-head generation), the new
policy beats the old one under that rule, and the round's figures show it."""
from __future__ import annotations

import random
from io import StringIO

import pytest
from django.core.management import call_command

from annotate.campaigns.imports.batches import import_prompts
from annotate.jobs import engine
from annotate.labeling import assignment, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Campaign, ModelVersion, Response, Task
from annotate.runs.registry import checkpoint_dir
from annotate.runs.rounds import round_summaries
from tests.annotate.test_jobs import work_off_queue
from tests.conftest import join, make_user
from tests.toy_policy import build_toy_policy, yes_fraction

pytestmark = pytest.mark.django_db(transaction=True)
QUESTIONS = ("Say something.", "Any words?", "Talk to me.", "What now?")
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]


def simulated_labeling(campaign: Campaign, labelers, rng: random.Random, noise: float = 0.15) -> int:
    """Each labeler ranks by the hidden rule (equal scores tie), answering at random `noise` of the time."""
    count = 0
    for labeler in labelers:
        while (lease := assignment.next_task_for(labeler, campaign)) is not None:
            ids = sorted(task_response_ids(lease.task))  # not the shuffled display order: the run repeats exactly
            texts = dict(Response.objects.filter(pk__in=ids).values_list("id", "text"))
            a, b = ids
            if rng.random() < noise:
                a, b = rng.sample(ids, 2)
                ranking = [[a], [b]]
            elif yes_fraction(texts[a]) == yes_fraction(texts[b]):
                ranking = [[a, b]]
            else:
                best = max(ids, key=lambda i: yes_fraction(texts[i]))
                ranking = [[best], [i for i in ids if i != best]]
            judgements.submit(labeler, lease.task, ranking)
            count += 1
    return count


def mean_rule_score(model_dir, seed: int) -> float:
    from training.generate import GenerationConfig, generate

    config = GenerationConfig(temperature=1.0, max_new_tokens=8, n_per_prompt=96, seed=seed)
    texts = [c.text for batch in generate(model_dir, PROMPTS, config) for c in batch]
    return sum(map(yes_fraction, texts)) / len(texts)


def test_one_round_with_simulated_labelers_improves_the_policy_under_their_hidden_rule(tiny_checkpoint, artifacts, tmp_path):
    rng = random.Random(7)
    toy = build_toy_policy(tiny_checkpoint, tmp_path / "toy", PROMPTS)
    campaign = Campaign.objects.create(name="Loop", slug="loop", task_type="pairwise", responses_per_task=2, overlap=1)
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    old = ModelVersion.objects.create(name="toy-r0", kind="policy", checkpoint_path=str(toy), round=0, metadata={"campaign": "loop"})
    import_prompts(campaign, [{"external_id": f"q{i}", "text": QUESTIONS[i % 4]} for i in range(16)])
    engine.start_run("generate", campaign=campaign, params={"models": ["toy-r0"], "n_per_prompt": 16, "max_new_tokens": 8, "temperature": 1.0, "seed": 3})
    work_off_queue()
    labelers = [join(make_user(f"sim{i}"), campaign, "labeler") for i in range(2)]
    assert simulated_labeling(campaign, labelers, rng) == Task.objects.filter(campaign=campaign).count() == 128

    params = (  # the phases' own defaults on any machine (auto would take the CPU preset's 2 PPO epochs here)
        '{"preset": "gpu", "reward": {"base_model": "tiny-base", "learning_rate": 0.001, "epochs": 4, "eval_fraction": 0.25},'
        ' "policy": {"iterations": 40, "rollout_batch_size": 16, "minibatch_size": 8, "learning_rate": 0.003,'
        ' "temperature": 1.0, "max_new_tokens": 8, "seed": 1},'
        ' "generate": {"n_per_prompt": 1, "max_new_tokens": 8, "temperature": 1.0}}'
    )
    call_command("rlhf_round", "loop", "--params", params, "--now", stdout=StringIO())

    new = ModelVersion.objects.get(kind="policy", round=1)
    assert new.parent == old and new.metadata["method"] == "ppo"
    # the policy records the judgements behind its reward model: the snapshot the round froze
    assert new.metadata["snapshot"] == ModelVersion.objects.get(kind="reward").metadata["snapshot"]
    assert new.metadata["snapshot"]["name"].endswith("-reward")
    before, after = mean_rule_score(checkpoint_dir(old), seed=11), mean_rule_score(checkpoint_dir(new), seed=11)
    # 384 samples a side: the standard error of the difference is about 0.015
    assert after > before + 0.04, f"hidden-rule score {before:.3f} before the round, {after:.3f} after"
    # the new policy's responses wait in the queue, each against the old policy's
    head_to_head = Task.objects.filter(campaign=campaign, responses__model_version=new).distinct()
    assert head_to_head.count() == 16  # one new response per prompt
    assert all(sorted(t.responses.values_list("model_version__name", flat=True)) == sorted([new.name, "toy-r0"]) for t in head_to_head)
    simulated_labeling(campaign, labelers, rng, noise=0.0)
    summary = next(r for r in round_summaries(campaign) if r["round"] == 1)
    assert summary["judgements"] == 16 and summary["win_rate"] > 0.5 and summary["kl"] is not None
