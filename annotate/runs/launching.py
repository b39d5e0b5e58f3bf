"""Training runs on several processes: the job starts `accelerate launch` as a child and follows it.

    result = train_launched(ctx, "training.dpo", config, {"train": ..., "eval": ...}, processes, on_log, load_result)

The child is the training module's own entry point (`python -m training.dpo --config run.json`, the run file
written next to its output); it prints one JSON object per log step, which becomes the run's metrics and
progress, and its other lines go to the run's log. Cancelling the run ends every rank (training.launch); the
heartbeat goes on in the job's thread meanwhile. One follower serves reward, SFT, DPO, RLOO and PPO.

The run params it reads: `num_processes`, by default the worker's GPU count (one process, in the worker
itself, without GPUs), and `deepspeed` ("zero2" | "zero3" | "zero3_offload", through accelerate's DeepSpeed
plugin), refused where no live worker has deepspeed and CUDA, as `quantize` is where none has bitsandbytes.
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from annotate.jobs.engine import InvalidParams, RunCancelled, RunContext, RunFailed
from annotate.jobs.params import integer
from annotate.jobs.workers import capability_missing

LOGGED_LINES = 200  # of the child's plain output; the JSON log lines are metrics, not log
DEEPSPEED = ("zero2", "zero3", "zero3_offload")
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Unavailable|Cancelled): (.+)$")  # a traceback's last line: its message


# ---------------------------------------------------------------- params


def launch_params(params: dict) -> dict:
    """The clean `num_processes` and `deepspeed` of a reward, SFT, DPO, RLOO or PPO run (absent ones stay absent)."""
    clean: dict[str, Any] = {}
    if "num_processes" in params:  # absent: the worker's GPU count (process_count)
        clean["num_processes"] = integer(params, "num_processes", 1, 1, 64)
    value = params.get("deepspeed")
    if value is None:
        return clean
    if value not in DEEPSPEED:
        raise InvalidParams(f"deepspeed must be one of {list(DEEPSPEED)} (or absent).", field="deepspeed")
    if params.get("quantize"):
        raise InvalidParams("deepspeed and quantize do not combine here: ZeRO shards full-precision weights; "
                            "use one or the other.", field="deepspeed")
    if reason := deepspeed_unavailable():
        raise InvalidParams(f"deepspeed {value!r}: {reason}.", field="deepspeed")
    clean["deepspeed"] = value
    return clean


def deepspeed_unavailable(queue: str | None = None) -> str | None:
    """Why no worker can train with DeepSpeed (None: one can). The live workers say; without reports, this machine."""
    return capability_missing(queue or settings.ML_QUEUE, lambda worker: worker.deepspeed,
                              "DeepSpeed needs a CUDA GPU with the deepspeed package installed (requirements-gpu.txt)",
                              "train without deepspeed", deepspeed_unavailable_here)


def deepspeed_unavailable_here() -> str | None:
    """Why this machine cannot train with DeepSpeed, or None."""
    import torch

    if not torch.cuda.is_available():
        return "DeepSpeed needs a CUDA GPU and this machine has none"
    if importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed needs the deepspeed package (requirements-gpu.txt), which is not installed here"
    return None


def process_count(params: dict) -> int:
    """The run's num_processes, or the worker's GPU count (at least 1)."""
    if params.get("num_processes"):
        return params["num_processes"]
    import torch

    return max(torch.cuda.device_count(), 1)


def launches(params: dict) -> bool:
    """Whether the run trains through `accelerate launch`: several processes, or DeepSpeed."""
    return process_count(params) > 1 or bool(params.get("deepspeed"))


# ---------------------------------------------------------------- the follower


def train_launched(ctx: RunContext, module: str, config: Any, data: Mapping[str, Path | str], params: dict,
                   on_log: Callable[[int, dict], None], load_result: Callable[[Path], Any]) -> Any:
    """load_result(config.output_dir) after `python -m module --config run.json` ran to its end on the run's processes.

    RunCancelled when the run is cancelled (every rank ended), RunFailed when the child fails or leaves no result.
    """
    import torch

    from training.launch import LaunchCancelled, launch_command, run_launched, write_run_file

    deepspeed, processes, out = params.get("deepspeed"), process_count(params), Path(config.output_dir)
    if deepspeed and (reason := deepspeed_unavailable_here()):  # the worker owns the hardware and has the last word
        raise RunFailed(reason)
    run_file = write_run_file(out.parent / f"{out.name}.run.json", config, data)
    command = launch_command(module, ["--config", str(run_file)], num_processes=processes, cpu=not torch.cuda.is_available(),
                             deepspeed=deepspeed)
    ctx.log(f"launching {processes} processes{f' with DeepSpeed {deepspeed}' if deepspeed else ''}: accelerate launch ... -m {module} --config {run_file}")
    output = _ChildOutput(ctx, on_log)
    try:
        code = run_launched(command, output.take, should_stop=ctx.should_stop, env={"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    except LaunchCancelled as exc:
        raise RunCancelled() from exc
    if code != 0 or not (out / "metrics.json").exists():
        raise RunFailed(output.failure(code))
    return load_result(out)


class _ChildOutput:
    """The child's lines: JSON log steps go to on_log, the first LOGGED_LINES others to the run's log; and why it failed."""

    def __init__(self, ctx: RunContext, on_log: Callable[[int, dict], None]):
        self.ctx, self.on_log = ctx, on_log
        self.logged, self.cause = 0, ""
        self.last: deque[str] = deque(maxlen=5)  # when no exception line says why a child failed

    def take(self, line: str) -> None:
        record = _json(line)
        if record is not None and "step" in record:
            self.on_log(int(record.pop("step")), {k: v for k, v in record.items() if isinstance(v, (int, float))})
            return
        if record is not None or not line.strip():
            return
        self.last.append(line[:500])
        if (error := ERROR_LINE.match(line)) and "ChildFailedError" not in line:  # torchrun's own summary says nothing
            self.cause = error.group(1)[:500]
        if self.logged < LOGGED_LINES:
            self.logged += 1
            self.ctx.log(line[:500])

    def failure(self, code: int) -> str:
        if self.cause:
            return f"{self.cause} (the launched training exited with code {code})"
        return f"the launched training exited with code {code}: " + " | ".join(self.last)


def _json(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
