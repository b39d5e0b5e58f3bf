"""Run a training entry point on several processes through `accelerate launch`, as a child process.

    code = run_launched(launch_command("training.reward", ["--data", ...], num_processes=2, cpu=True),
                        on_line=print, should_stop=lambda: False)

The child's output comes back line by line (the entry points print one JSON object per log step,
and the result last); should_stop() is asked between lines and at least every poll seconds, and
True ends the whole process group (SIGTERM, then SIGKILL), so every rank stops. On one machine
with several GPUs, accelerate starts one process per GPU (NCCL); with cpu=True, processes on the
CPU talk over gloo. The same command runs outside the app, on several machines, with
`--num_machines N --machine_rank R --main_process_ip HOST` added.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence


class LaunchCancelled(RuntimeError):
    """should_stop() asked for it; the processes were ended."""


def launch_command(module: str, args: Sequence[str], *, num_processes: int, cpu: bool = False, main_process_port: int | None = None) -> list[str]:
    """The `accelerate launch` argv that runs `python -m module args` on num_processes processes of this machine.

    cpu=True is for machines without GPUs (the tests): the entry point is told by its own flag (--cpu).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        # torchrun's launcher: one process per rank. (accelerate's --cpu would take its single-process
        # launcher unless MPI is set up; without CUDA the ranks talk over gloo anyway.)
        command.append("--multi_gpu")
    elif cpu:
        command.append("--cpu")
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    return [*command, "-m", module, *args]


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
