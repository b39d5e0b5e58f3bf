"""Training runs on several processes: the job starts `accelerate launch` as a child and follows it.

The child is the training module's own command line (`python -m training.reward ...`); it prints one
JSON object per log step, which becomes the run's metrics and progress, and its other lines go to
the run's log. Cancelling the run ends every rank (training.launch); the heartbeat goes on in the
job's thread meanwhile. The number of processes is the run's `num_processes`, by default the
worker's GPU count (one process, in the worker itself, without GPUs).
"""
from __future__ import annotations

import json
from pathlib import Path

from annotate.jobs.engine import RunCancelled, RunContext, RunFailed

LOGGED_LINES = 200  # of the child's plain output; the JSON log lines are metrics, not log


def process_count(params: dict) -> int:
    """The run's num_processes, or the worker's GPU count (at least 1)."""
    if params.get("num_processes"):
        return params["num_processes"]
    import torch

    return max(torch.cuda.device_count(), 1)


def train_reward_launched(ctx: RunContext, config, data_dir: Path, processes: int, on_log):
    """train_reward_model's result, from `processes` ranks under accelerate launch."""
    import torch

    from training.launch import LaunchCancelled, launch_command, run_launched
    from training.reward_config import RewardResult

    args = ["--data", str(data_dir / "train.jsonl"), "--eval", str(data_dir / "eval.jsonl"), "--base", config.base_model,
            "--out", config.output_dir, "--lr", str(config.learning_rate), "--epochs", str(config.num_train_epochs),
            "--batch-size", str(config.per_device_train_batch_size), "--max-length", str(config.max_length), "--seed", str(config.seed),
            "--center", str(config.center_rewards_coefficient or 0.0)]
    args += ["--full"] * (not config.use_lora) + ["--margin"] * config.use_margin + ["--cpu"] * (not torch.cuda.is_available())
    command = launch_command("training.reward", args, num_processes=processes, cpu=not torch.cuda.is_available())
    ctx.log(f"launching {processes} processes: accelerate launch ... -m training.reward")
    tail: list[str] = []

    def on_line(line: str) -> None:
        record = _json(line)
        if record is not None and "step" in record:
            on_log(int(record.pop("step")), {k: v for k, v in record.items() if isinstance(v, (int, float))})
        elif record is None and line.strip() and len(tail) < LOGGED_LINES:
            tail.append(line)
            ctx.log(line[:500])

    try:
        code = run_launched(command, on_line, should_stop=ctx.should_stop, env={"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    except LaunchCancelled as exc:
        raise RunCancelled() from exc
    out = Path(config.output_dir)
    if code != 0 or not (out / "metrics.json").exists():
        raise RunFailed(f"the launched training exited with code {code}: " + " | ".join(tail[-5:]))
    summary = json.loads((out / "metrics.json").read_text())
    scores = json.loads((out / "eval_scores.json").read_text())
    fields = RewardResult.__dataclass_fields__
    return RewardResult(**{k: v for k, v in summary.items() if k in fields}, chosen_scores=scores["chosen"], rejected_scores=scores["rejected"])


def _json(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
