"""How responses become tasks."""
from __future__ import annotations

from annotate.campaigns.imports.batches import import_responses
from annotate.models import Task, TaskResponse
from tests.conftest import make_campaign


def test_each_prompt_with_k_responses_makes_one_task_mixing_models(db):
    campaign = make_campaign(prompts=3, models=("m1", "m2"))
    assert Task.objects.filter(campaign=campaign).count() == 3
    for task in Task.objects.filter(campaign=campaign):
        models = {r.model_version.name for r in task.responses.all()}
        assert models == {"m1", "m2"}
        assert sorted(TaskResponse.objects.filter(task=task).values_list("position", flat=True)) == [0, 1]


def test_leftover_responses_wait_for_more(db):
    campaign = make_campaign(task_type="ranking", k=3, prompts=1, models=("a", "b", "c"))
    import_responses(campaign, [{"prompt": "p0", "model": "d", "text": "one more"}])
    assert Task.objects.filter(campaign=campaign).count() == 1
    import_responses(campaign, [{"prompt": "p0", "model": m, "text": m} for m in ("e", "f")])
    assert Task.objects.filter(campaign=campaign).count() == 2
    used = list(TaskResponse.objects.filter(task__campaign=campaign).values_list("response_id", flat=True))
    assert len(used) == len(set(used)) == 6
