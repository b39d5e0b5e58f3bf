"""Training through `accelerate launch`: the reward entry point on 2 CPU processes (gloo), as a child process."""
from __future__ import annotations

import json

import pytest

from tests.training.test_reward import marker_judgements
from training.launch import LaunchCancelled, launch_command, run_launched
from training.preferences import PreferenceOptions, build_preference_dataset


@pytest.fixture(scope="module")
def marker_files(tmp_path_factory):
    dataset = build_preference_dataset(marker_judgements(48), PreferenceOptions(eval_fraction=0.25, seed=0))
    return dataset.write(tmp_path_factory.mktemp("data"))


def reward_args(model_dir, data, out) -> list[str]:
    train, held_out = data
    return ["--data", str(train), "--eval", str(held_out), "--base", str(model_dir), "--out", str(out),
            "--lr", "1e-3", "--epochs", "3", "--batch-size", "4", "--seed", "0", "--cpu"]


def test_a_reward_model_trained_on_two_processes_learns(tiny_model_dir, marker_files, tmp_path):
    lines = []
    command = launch_command("training.reward", reward_args(tiny_model_dir, marker_files, tmp_path / "rm"), num_processes=2, cpu=True,
                             main_process_port=29531)
    assert run_launched(command, lines.append, env={"OMP_NUM_THREADS": "1"}) == 0, "\n".join(lines[-40:])
    records = [json.loads(line) for line in lines if line.startswith("{")]
    steps = [r for r in records if "step" in r]
    assert steps and steps[-1]["step"] > 0
    final = records[-1]
    assert final["metrics"]["eval/accuracy"] >= 0.9
    resolved = json.loads((tmp_path / "rm" / "reward_config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2


def test_stopping_ends_every_rank(tiny_model_dir, marker_files, tmp_path):
    lines = []
    command = launch_command("training.reward", reward_args(tiny_model_dir, marker_files, tmp_path / "rm"), num_processes=2, cpu=True,
                             main_process_port=29532)
    with pytest.raises(LaunchCancelled):
        run_launched(command, lines.append, should_stop=lambda: any(line.startswith('{"step"') for line in lines), env={"OMP_NUM_THREADS": "1"})
    assert not (tmp_path / "rm" / "reward_config.json").exists()
