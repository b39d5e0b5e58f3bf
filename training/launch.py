"""Run a training entry point on several processes through `accelerate launch`, as a child process.

    write_run_file(out / "run.json", config, {"train": "train.jsonl", "eval": "eval.jsonl"})
    code = run_launched(launch_command("training.dpo", ["--config", str(out / "run.json")], num_processes=2, cpu=True),
                        on_line=print, should_stop=lambda: False)

Every training entry point (`python -m training.reward|sft|dpo|rloo|ppo --config run.json`) reads one run file:
its dataclass config and the paths of its data (`write_run_file`, `read_run_file`). It prints one JSON object
per log step on rank 0 ({"step": n, ...figures}), the result last, and rank 0 writes the result files.

The child's output comes back line by line (the entry points print one JSON object per log step,
and the result last); should_stop() is asked between lines and at least every poll seconds, and
True ends the whole process group (SIGTERM, then SIGKILL), so every rank stops. On one machine
with several GPUs, accelerate starts one process per GPU (NCCL); with cpu=True, processes on the
CPU talk over gloo. The same command runs outside the app, on several machines, with
`--num_machines N --machine_rank R --main_process_ip HOST` added.

Each launch gets a free rendezvous port (`free_port`): two runs on one machine must not race for
accelerate's default 29500 (it moves off a taken port, but two launches checking at once both find it free). `deepspeed="zero2" | "zero3" | "zero3_offload"` launches through accelerate's
DeepSpeed plugin (ZeRO stage 2 or 3; the offload variant keeps parameters and optimizer states in host RAM),
for models whose training does not fit one GPU; it needs the deepspeed package and CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# the ZeRO choices of a run's `deepspeed` param -> accelerate launch's DeepSpeed flags
DEEPSPEED_FLAGS = {
    "zero2": ["--zero_stage", "2", "--offload_optimizer_device", "none", "--offload_param_device", "none"],
    "zero3": ["--zero_stage", "3", "--offload_optimizer_device", "none", "--offload_param_device", "none",
              "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"],  # 16-bit weights gathered on save
    "zero3_offload": ["--zero_stage", "3", "--offload_optimizer_device", "cpu", "--offload_param_device", "cpu",
                      "--zero3_init_flag", "true", "--zero3_save_16bit_model", "true"],
}


class LaunchCancelled(RuntimeError):
    """should_stop() asked for it; the processes were ended."""


def launch_command(module: str, args: Sequence[str], *, num_processes: int, cpu: bool = False, main_process_port: int | None = None,
                   deepspeed: str | None = None) -> list[str]:
    """The `accelerate launch` argv that runs `python -m module args` on num_processes processes of this machine.

    cpu=True is for machines without GPUs (the tests): the entry point is told by its own config (use_cpu).
    The rendezvous port is main_process_port, or a free one. deepspeed: a key of DEEPSPEED_FLAGS, or None.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    if deepspeed is not None:
        command += ["--use_deepspeed", *DEEPSPEED_FLAGS[deepspeed]]  # accelerate's DeepSpeed launcher starts every rank itself
    elif num_processes > 1:
        # torchrun's launcher: one process per rank. (accelerate's --cpu would take its single-process
        # launcher unless MPI is set up; without CUDA the ranks talk over gloo anyway.)
        command.append("--multi_gpu")
    elif cpu:
        command.append("--cpu")
    command += ["--main_process_port", str(main_process_port or free_port())]
    return [*command, "-m", module, *args]


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick for port 0), for one launch's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the run file


@dataclass
class RunFile:
    """What an entry point reads from its --config file."""

    config: dict[str, Any]
    """The fields of its dataclass config (RewardConfig, SFTConfig, DPOConfig, RLOOConfig)."""
    data: dict[str, str]
    """Paths of its inputs, by name ("train", "eval", "rows", "prompts", "reward_model")."""


def write_run_file(path: Path | str, config: Any, data: Mapping[str, Path | str]) -> Path:
    """Write the run file an entry point reads: {"config": the dataclass's fields, "data": {name: path}}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": asdict(config), "data": {k: str(v) for k, v in data.items()}}, indent=2) + "\n")
    return path


def read_run_file(argv: Sequence[str] | None, prog: str, description: str) -> RunFile:
    """Parse `--config run.json` from argv (sys.argv without it) and read the file."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help="run file: {\"config\": {...dataclass fields}, \"data\": {name: path}}")
    raw = json.loads(parser.parse_args(argv).config.read_text())
    return RunFile(config=raw["config"], data=raw.get("data", {}))


def print_log(step: int, metrics: Mapping[str, float]) -> None:
    """One log step as a JSON line: what the launching job turns into metrics (call it on rank 0 only)."""
    print(json.dumps({"step": step, **metrics}), flush=True)


def print_result(result: Any, leave_out: Sequence[str] = ()) -> None:
    """The finished run's result dataclass as the last JSON line, from the main process only."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({k: v for k, v in asdict(result).items() if k not in leave_out}, default=str), flush=True)


def run_launched(command: Sequence[str], on_line: Callable[[str], None], should_stop: Callable[[], bool] | None = None,
                 poll: float = 0.5, env: dict | None = None) -> int:
    """Run the command to its end, passing each output line to on_line; its exit code, or LaunchCancelled."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True, env={**os.environ, **(env or {})})  # its own group: stop ends every rank
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        while True:
            try:
                line = lines.get(timeout=poll)
            except queue.Empty:
                line = ""
            if line is None:
                return process.wait()
            if line:
                on_line(line.rstrip("\n"))
            if should_stop is not None and should_stop():
                raise LaunchCancelled()
    finally:
        if process.poll() is None:
            _end(process)
        reader.join(timeout=5)


def _read(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM to the whole group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
