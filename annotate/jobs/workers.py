"""Worker heartbeats: each `db_worker` process says which queues it serves and how much memory it offers.

    stop = start_beating(worker_id, queues, busy=lambda: worker.running_task)   # in the worker
    live_workers("gpu")                                                           # anywhere: the rows seen lately

A row per worker process (WorkerHeartbeat), stamped every HEARTBEAT_SECONDS and deleted when the
worker stops; a row older than STALE_AFTER belongs to a worker that died. The memory figures are
refreshed only while the worker is idle: a run in progress uses the memory it would offer the next
one, and the free memory it leaves is not what the queue can take (annotate.runs.fit decides with them).
"""
from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections, connection
from django.utils import timezone

from annotate.core.db import DISCONNECTS, reconnect
from annotate.jobs.engine import HEARTBEAT_SECONDS, STALE_AFTER
from annotate.models import WorkerHeartbeat

logger = logging.getLogger(__name__)


@dataclass
class Capacity:
    """What one worker process offers a run: its largest memory (a GPU's free memory, else host RAM available)."""

    worker_id: str
    memory: int
    """Bytes: the largest free memory of its CUDA devices, or the host's available RAM when it has none."""
    where: str
    """What that memory is: "NVIDIA H100 80GB HBM3 (cuda:0)" or "host RAM (no GPU)"."""
    bitsandbytes: bool
    gpus: int = 0
    """Its CUDA devices: the processes a run there gets by default (DeepSpeed shards across them)."""


def machine_figures() -> dict:
    """This process's devices and memory, as a WorkerHeartbeat stores them."""
    from training.memory import available_bytes  # no torch at import

    devices = []
    try:
        import torch

        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": torch.cuda.get_device_name(index), "index": index, "total": total, "free": free})
    except (ImportError, RuntimeError) as exc:  # a broken driver is a worker without GPUs, not a dead worker
        logger.warning("cannot read the CUDA devices (%s); reporting none", exc)
    import psutil

    return {"devices": devices, "host_total": psutil.virtual_memory().total, "host_available": available_bytes("cpu"),
            "bitsandbytes": bool(devices) and importlib.util.find_spec("bitsandbytes") is not None,
            "deepspeed": bool(devices) and importlib.util.find_spec("deepspeed") is not None}


def beat(worker_id: str, queues: list[str], *, busy: bool = False) -> None:
    """Stamp this worker's row; its figures too unless it is busy with a run (see the module docstring)."""
    now = timezone.now()
    if busy and WorkerHeartbeat.objects.filter(worker_id=worker_id).update(seen_at=now, queues=queues):
        return
    WorkerHeartbeat.objects.update_or_create(worker_id=worker_id, defaults={"queues": queues, "seen_at": now, **machine_figures()})


def start_beating(worker_id: str, queues: list[str], busy: Callable[[], bool] = lambda: False) -> Callable[[], None]:
    """Beat now (the row exists when this returns) and every HEARTBEAT_SECONDS in a thread; the returned function stops
    the thread and removes the row."""
    stop = threading.Event()

    def beat_once() -> None:
        try:
            beat(worker_id, queues, busy=busy())
        except DISCONNECTS as exc:  # a lost connection must not stop the worker: the next beat reconnects
            logger.warning("worker %s: heartbeat lost its database connection (%s); reconnecting", worker_id, exc)
            reconnect()

    def loop() -> None:
        try:
            while not stop.wait(HEARTBEAT_SECONDS):
                beat_once()
        finally:
            close_old_connections()
            connection.close()

    beat_once()

    thread = threading.Thread(target=loop, name=f"heartbeat-worker-{worker_id}", daemon=True)
    thread.start()

    def stop_beating() -> None:
        stop.set()
        thread.join(timeout=HEARTBEAT_SECONDS + 5)
        try:
            WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()
        except DISCONNECTS:  # the row goes stale on its own
            pass

    return stop_beating


def live_workers(queue: str, now=None) -> list[WorkerHeartbeat]:
    """The workers seen within STALE_AFTER that take tasks from `queue`."""
    now = now or timezone.now()
    rows = WorkerHeartbeat.objects.filter(seen_at__gte=now - STALE_AFTER).order_by("worker_id")
    return [row for row in rows if queue in row.queues or "*" in row.queues]


def capability_missing(queue: str, has: Callable[[WorkerHeartbeat], bool], needs: str, instead: str,
                       here: Callable[[], str | None]) -> str | None:
    """Why no worker of `queue` can do something (None: one can), e.g. load in 4 bits or train with DeepSpeed.

    The live workers' heartbeats say. With none reporting, a `gpu` queue's workers are elsewhere and not
    up yet (None: the worker checks again when it starts the run); any other queue runs here: `here()`.
    """
    if workers := live_workers(queue):
        if any(has(worker) for worker in workers):
            return None
        return f"{needs}, and none of the {len(workers)} live worker(s) of queue {queue!r} has one; {instead}"
    if queue == "gpu":
        return None
    return here()


def forget_dead_workers(now=None) -> int:
    """Delete the rows of workers that died without saying so (killed, machine lost): unseen for ten STALE_AFTERs."""
    now = now or timezone.now()
    return WorkerHeartbeat.objects.filter(seen_at__lt=now - 10 * STALE_AFTER).delete()[0]


def capacity(worker: WorkerHeartbeat) -> Capacity:
    """The most memory one run can have on this worker: its roomiest GPU, or the host's RAM without a GPU."""
    if worker.devices:
        device = max(worker.devices, key=lambda d: d["free"])
        return Capacity(worker.worker_id, int(device["free"]), f"{device['name']} (cuda:{device.get('index', 0)}) on {worker.worker_id}",
                        worker.bitsandbytes, len(worker.devices))
    return Capacity(worker.worker_id, int(worker.host_available), f"host RAM (no GPU) on {worker.worker_id}", False)
