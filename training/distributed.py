"""Rank helpers for our own training loops (training.ppo) under `accelerate launch`: all no-ops on one process.

Under several processes (torch.distributed initialised, e.g. by accelerate's PartialState), every rank runs
the same loop on its own share of the data; these average what must agree (gradients, logged figures) and
gather what rank 0 writes.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn


def join_ranks(cpu: bool = False) -> torch.device:
    """Join the process group `accelerate launch` (torchrun) set up in the environment, if any; this rank's device.

    NCCL and one GPU per rank (LOCAL_RANK) where there is CUDA (and not cpu), else gloo on the CPU. (accelerate's PartialState
    reports a CUDA-less multi-process launch as one process, so the ranks are read here from torch.distributed.)
    """
    import os

    cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def broadcast_parameters(module: nn.Module) -> None:
    """Every rank starts from rank 0's weights (as DistributedDataParallel does when it wraps a module)."""
    if world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks, in one all-reduce: what DDP does, by hand.

    Our loop calls the backbones' submodules directly (the logits of response positions only, the critic's head on
    every position), not a wrapped module's forward, so a DistributedDataParallel wrapper would not see the passes.
    A parameter no rank's loss reached keeps a zero gradient.
    """
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def mean(value: float) -> float:
    """The mean of a figure over the ranks (the figure itself on one process)."""
    if world_size() == 1:
        return value
    return mean_figures({"v": value})["v"]


def mean_figures(figures: Mapping[str, float]) -> dict[str, float]:
    """Each figure averaged over the ranks, in one all-reduce; every rank gets the same numbers."""
    if world_size() == 1:
        return dict(figures)
    values = torch.tensor([float(v) for v in figures.values()], dtype=torch.float64, device=_device())
    dist.all_reduce(values)
    return dict(zip(figures, (values / world_size()).tolist()))


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (a decision that must stop them all together)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(items: list) -> list:
    """Every rank's items, rank 0's first (the items themselves on one process)."""
    if world_size() == 1:
        return items
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _device() -> torch.device:
    """Where the backend reduces: NCCL only on the GPU, gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
