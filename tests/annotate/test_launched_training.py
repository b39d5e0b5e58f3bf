"""A reward run on several processes: the job launches `accelerate launch` (2 CPU processes, gloo) and follows it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotate.jobs import engine
from annotate.models import ModelVersion
from tests.annotate.test_jobs import work_off_queue
from tests.annotate.test_reward_job import banana_campaign, label_all
from tests.conftest import join, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_reward_run_on_two_processes_learns_and_reports_as_it_goes(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=64)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    params = {"base_model": "tiny-base", "learning_rate": 1e-3, "epochs": 4, "eval_fraction": 0.25, "batch_size": 4,
              "name": "fruit-rm-2p", "num_processes": 2}
    run = engine.start_run("reward", campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(name="fruit-rm-2p")
    assert version.metadata["metrics"]["eval/accuracy"] >= 0.9
    assert run.metrics.filter(name="loss").exists() and "launching 2 processes" in run.log_tail
    resolved = json.loads((Path(run.artifacts["model"]) / "reward_config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2


def test_num_processes_is_checked(campaign):
    with pytest.raises(engine.InvalidParams) as error:
        engine.start_run("reward", campaign=campaign, params={"num_processes": 0})
    assert error.value.field == "num_processes"
