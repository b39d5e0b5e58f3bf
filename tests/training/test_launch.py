"""Training through `accelerate launch`: every entry point (`python -m training.<kind> --config run.json`) on 2 CPU
processes (gloo), as a child process, learning asserted; the launch command itself (ports, DeepSpeed)."""
from __future__ import annotations

import importlib.util
import json
import socket

import pytest
import torch

from tests.toy_policy import build_toy_policy
from tests.training.test_dpo import banana_judgements, implicit_rewards
from tests.training.test_ppo import PROMPTS, config_for
from tests.training.test_reward import marker_judgements
from tests.training.test_sft import colour_rows, mean_logprob
from training.dpo import DPOConfig
from training.launch import LaunchCancelled, free_port, launch_command, read_run_file, run_launched, write_run_file
from training.ppo import _prompt_indices, load_result
from training.preferences import PreferenceOptions, build_preference_dataset, write_jsonl
from training.reward_config import RewardConfig
from training.rloo import RLOOConfig
from training.sft import SFTConfig

ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
NO_DEEPSPEED = not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None
WHY = "DeepSpeed needs a CUDA GPU and the deepspeed package (requirements-gpu.txt); this machine lacks " + (
    "CUDA" if not torch.cuda.is_available() else "deepspeed")


@pytest.fixture(scope="module")
def marker_files(tmp_path_factory):
    dataset = build_preference_dataset(marker_judgements(48), PreferenceOptions(eval_fraction=0.25, seed=0))
    return dataset.write(tmp_path_factory.mktemp("data"))


def launched(module: str, config, data: dict, tmp_path, **launch) -> list[dict]:
    """Run the entry point on 2 CPU processes (or as `launch` says) from a run file; its JSON lines (log steps, then the result)."""
    lines: list[str] = []
    run_file = write_run_file(tmp_path / "run.json", config, data)
    command = launch_command(module, ["--config", str(run_file)], **{"num_processes": 2, "cpu": True, **launch})
    assert run_launched(command, lines.append, env=ENV) == 0, "\n".join(lines[-40:])
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_reward_model_trained_on_two_processes_learns(tiny_model_dir, marker_files, tmp_path):
    train, held_out = marker_files
    config = RewardConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "rm"), learning_rate=1e-3, num_train_epochs=3,
                          per_device_train_batch_size=4, logging_steps=1, use_cpu=True)
    records = launched("training.reward", config, {"train": train, "eval": held_out}, tmp_path)
    steps = [r for r in records if "step" in r]
    assert steps and steps[-1]["step"] > 0
    assert records[-1]["metrics"]["eval/accuracy"] >= 0.9
    resolved = json.loads((tmp_path / "rm" / "reward_config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2


def test_dpo_on_two_processes_raises_the_chosen_over_rejected_margin(tiny_model_dir, tmp_path):
    dataset = build_preference_dataset(banana_judgements(32), PreferenceOptions(eval_fraction=0.25, seed=0))
    train, held_out = dataset.write(tmp_path / "data")
    config = DPOConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "dpo"), learning_rate=1e-2, max_steps=6,
                       per_device_train_batch_size=4, logging_steps=3, use_cpu=True)  # 2 x 4: the single-process test's 8 a step
    records = launched("training.dpo", config, {"train": train, "eval": held_out}, tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [3, 6]
    chosen, rejected = implicit_rewards(tmp_path / "dpo" / "merged", tiny_model_dir, dataset.train)
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(chosen) >= 0.9
    assert sum(chosen) > 0 > sum(rejected)
    assert json.loads((tmp_path / "dpo" / "dpo_config.json").read_text())["resolved"]["world_size"] == 2


def test_sft_on_two_processes_makes_the_trained_answers_more_likely(tiny_model_dir, tmp_path):
    rows = colour_rows(16)
    config = SFTConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "sft"), learning_rate=1e-2, max_steps=8,
                       per_device_train_batch_size=4, logging_steps=2, use_cpu=True)
    records = launched("training.sft", config, {"rows": write_jsonl(rows, tmp_path / "rows.jsonl")}, tmp_path)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert mean_logprob(tmp_path / "sft" / "merged", rows) > mean_logprob(tiny_model_dir, rows) + 1.0
    assert records[-1]["global_step"] == 8


def test_rloo_on_two_processes_scores_with_the_reward_model_on_every_rank(tiny_model_dir, marker_files, tmp_path):
    reward_config = RewardConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "rm"), num_train_epochs=1, use_cpu=True)
    train, held_out = marker_files
    launched("training.reward", reward_config, {"train": train, "eval": held_out}, tmp_path)
    prompts = [{"messages": [{"role": "user", "content": f"Name some colours ({i})."}]} for i in range(16)]
    config = RLOOConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "rloo"), max_steps=2, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=4, logging_steps=1, use_cpu=True)
    data = {"prompts": write_jsonl(prompts, tmp_path / "prompts.jsonl"), "reward_model": tmp_path / "rm"}
    records = launched("training.rloo", config, data, tmp_path / "rloo-run")
    logged = [r for r in records if "reward" in r]
    assert [r["step"] for r in logged] == [1, 2] and all(r["rewards/reward_model/mean"] != 0 for r in logged)
    assert (tmp_path / "rloo" / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "rloo" / "rloo_config.json").read_text())["resolved"]["world_size"] == 2


def test_ppo_on_two_processes_learns_from_different_prompts_on_each_rank(tiny_model_dir, tmp_path):
    policy_dir = build_toy_policy(tiny_model_dir, tmp_path / "toy", PROMPTS, steps=80)
    # each rank 8 prompts of an iteration in minibatches of 4: the single-process learning run's 16 in steps of 8
    config = config_for(policy_dir, tmp_path / "ppo", total_iterations=30, rollout_batch_size=8, minibatch_size=4, device="cpu",
                        seed=2)  # seed 0 shuffles the 4 prompts alike for both ranks
    data = {"prompts": write_jsonl([{"messages": p} for p in PROMPTS], tmp_path / "prompts.jsonl"),
            "reward_fn": "tests.training.test_ppo:yes_fraction"}
    records = launched("training.ppo", config, data, tmp_path)
    scores = [r["objective/scores"] for r in records if "step" in r]
    assert len(scores) == 30
    first, last = sum(scores[:5]) / 5, sum(scores[-10:]) / 10
    assert last > first + 0.1, f"mean score {first:.3f} over the first 5 iterations, {last:.3f} over the last 10"
    # rank 0 took the first 8 of the iteration's 16 shuffled prompts, rank 1 the other 8 (4 samples of each kept)
    seen = [s["prompt"] for s in json.loads((tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()[0])["samples"]]
    order = [PROMPTS[i][-1]["content"] for i in _prompt_indices(len(PROMPTS), 16, 0, config.seed)]
    assert order[:4] != order[8:12] and seen == order[:4] + order[8:12]
    result = load_result(tmp_path / "ppo")
    assert result.iterations == 30 and result.policy_dir is not None and (result.policy_dir / "config.json").is_file()
    assert records[-1]["iterations"] == 30


@pytest.mark.skipif(NO_DEEPSPEED, reason=WHY)
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_dpo_under_deepspeed_learns_and_saves_a_whole_policy_on_a_gpu(stage, tiny_model_dir, tmp_path):
    dataset = build_preference_dataset(banana_judgements(32), PreferenceOptions(eval_fraction=0.25, seed=0))
    train, held_out = dataset.write(tmp_path / "data")
    config = DPOConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "dpo"), learning_rate=1e-2, max_steps=6,
                       per_device_train_batch_size=8, logging_steps=3)
    launched("training.dpo", config, {"train": train, "eval": held_out}, tmp_path, num_processes=torch.cuda.device_count(),
             cpu=False, deepspeed=stage)
    chosen, rejected = implicit_rewards(tmp_path / "dpo" / "merged", tiny_model_dir, dataset.train)  # ZeRO-3: the shards gathered
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(chosen) >= 0.9


def test_stopping_ends_every_rank(tiny_model_dir, marker_files, tmp_path):
    train, held_out = marker_files
    lines: list[str] = []
    args = ["--data", str(train), "--eval", str(held_out), "--base", str(tiny_model_dir), "--out", str(tmp_path / "rm"),
            "--lr", "1e-3", "--epochs", "3", "--batch-size", "4", "--seed", "0", "--cpu"]  # the flags still work by hand
    command = launch_command("training.reward", args, num_processes=2, cpu=True)
    with pytest.raises(LaunchCancelled):
        run_launched(command, lines.append, should_stop=lambda: any(line.startswith('{"step"') for line in lines), env=ENV)
    assert not (tmp_path / "rm" / "reward_config.json").exists()


def test_two_launches_at_once_on_one_machine_both_finish(tiny_model_dir, marker_files, tmp_path):
    """Each takes its own rendezvous port. (accelerate 1.15 also moves to a free port when the one it is given is taken
    when it checks, so this passes on a shared port too, unless both check before either binds: the race the own port closes.)"""
    from concurrent.futures import ThreadPoolExecutor

    train, held_out = marker_files
    commands, outputs = [], []
    for name in ("a", "b"):
        config = RewardConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / name), num_train_epochs=1,
                              per_device_train_batch_size=8, use_cpu=True)
        run_file = write_run_file(tmp_path / f"{name}.json", config, {"train": train, "eval": held_out})
        commands.append(launch_command("training.reward", ["--config", str(run_file)], num_processes=2, cpu=True))
        outputs.append([])
    assert port_of(commands[0]) != port_of(commands[1])
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda i: run_launched(commands[i], outputs[i].append, env=ENV), (0, 1)))
    assert codes == [0, 0], "\n".join(outputs[0][-20:] + outputs[1][-20:])
    assert all((tmp_path / name / "metrics.json").is_file() for name in ("a", "b"))


# ---------------------------------------------------------------- the command


def port_of(command: list[str]) -> int:
    return int(command[command.index("--main_process_port") + 1])


def test_each_launch_gets_a_rendezvous_port_nobody_holds():
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        ports = {port_of(launch_command("training.sft", [], num_processes=2)) for _ in range(5)}
        assert held.getsockname()[1] not in ports and 29500 not in ports
        for port in ports:  # each is free to bind
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
    finally:
        held.close()
    assert port_of(launch_command("training.sft", [], num_processes=2, main_process_port=29533)) == 29533
    assert 1024 < free_port() < 65536


@pytest.mark.parametrize(("stage", "flags"), [
    ("zero2", ["--zero_stage", "2", "--offload_optimizer_device", "none", "--offload_param_device", "none"]),
    ("zero3", ["--zero_stage", "3", "--offload_optimizer_device", "none", "--offload_param_device", "none",
               "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"]),
    ("zero3_offload", ["--zero_stage", "3", "--offload_optimizer_device", "cpu", "--offload_param_device", "cpu",
                       "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"]),
])
def test_deepspeed_launches_through_accelerates_deepspeed_plugin(stage, flags):
    command = launch_command("training.dpo", ["--config", "run.json"], num_processes=4, deepspeed=stage)
    launcher = command[: command.index("-m", 3)]
    assert launcher[launcher.index("--use_deepspeed") + 1: launcher.index("--use_deepspeed") + 1 + len(flags)] == flags
    assert "--multi_gpu" not in launcher and launcher[launcher.index("--num_processes") + 1] == "4"
    assert command[-4:] == ["-m", "training.dpo", "--config", "run.json"]


def test_the_run_file_carries_every_setting_to_the_entry_point(tmp_path):
    config = RewardConfig(base_model="/models/base", output_dir="/out", quantize="4bit", use_lora=True, seed=7)
    path = write_run_file(tmp_path / "run.json", config, {"train": tmp_path / "train.jsonl"})
    run = read_run_file(["--config", str(path)], "test", "")
    assert RewardConfig(**run.config) == config  # quantize too: a multi-process QLoRA run loads its base in 4 bits
    assert run.data == {"train": str(tmp_path / "train.jsonl")}


def test_sft_reads_a_pairs_snapshot_and_trains_on_its_winners(tiny_model_dir, tmp_path, capsys):
    from training.sft import main

    pairs = build_preference_dataset(banana_judgements(16), PreferenceOptions(eval_fraction=0.25, seed=0)).train
    config = SFTConfig(base_model=str(tiny_model_dir), output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2,
                       logging_steps=1, use_cpu=True)
    main(["--config", str(write_run_file(tmp_path / "run.json", config, {"pairs": write_jsonl(pairs, tmp_path / "pairs.jsonl")}))])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["global_step"] == 2 and result["metrics"]["data/rows"] == len(pairs)  # one winner per two-response prompt
