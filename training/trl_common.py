"""What every TRL run here shares (reward model, SFT, DPO, RLOO): the training arguments common to
all of them, the cancellation error, and the record of what the arguments resolved to."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Protocol

import peft
import torch
import transformers
import trl


class TrainingCancelled(RuntimeError):
    """`should_stop()` returned True: training stopped cleanly and nothing was saved."""


class TrainingSettings(Protocol):
    """The fields of RewardConfig and PolicyConfig that common_training_kwargs reads."""

    output_dir: str
    learning_rate: float
    num_train_epochs: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    lr_scheduler_type: str
    warmup_ratio: float
    weight_decay: float
    gradient_checkpointing: bool
    bf16: bool | None
    use_cpu: bool
    seed: int
    logging_steps: int


def uses_gpu(settings: TrainingSettings) -> bool:
    return torch.cuda.is_available() and not settings.use_cpu


def resolve_bf16(settings: TrainingSettings) -> bool:
    """settings.bf16, or when None: on exactly when a bf16-capable GPU is used."""
    if settings.bf16 is not None:
        return settings.bf16
    return uses_gpu(settings) and torch.cuda.is_bf16_supported()


def common_training_kwargs(settings: TrainingSettings) -> dict[str, Any]:
    """Keyword arguments for any TRL config: CPU-safe precision, no mid-run checkpoints, no reporting.

    Callers add their trainer's own arguments; anything not here keeps TRL's default unless they do.
    """
    return {
        "output_dir": settings.output_dir,
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.num_train_epochs,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "warmup_steps": settings.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        "weight_decay": settings.weight_decay,
        "activation_checkpointing": settings.gradient_checkpointing,  # transformers 5 name; TRL's default is True
        "bf16": resolve_bf16(settings),  # TRL defaults to bf16=True, which fails on a CPU
        "use_cpu": settings.use_cpu,
        "seed": settings.seed,
        "logging_steps": settings.logging_steps,
        "save_strategy": "no",  # we save once, at the end
        "dataloader_pin_memory": uses_gpu(settings),
        "report_to": "none",
        "disable_tqdm": True,
    }


def resolved_settings(args) -> dict[str, Any]:
    """What the defaults resolved to on this machine (TRL's args), and the library versions."""
    return {
        "bf16": args.bf16,
        "device": str(args.device),
        "world_size": args.world_size,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }


def is_sharded(trainer) -> bool:
    """Whether the trainer runs under DeepSpeed ZeRO-3: each rank holds a shard of every weight, so saving must gather
    them (trainer.save_model, on every rank) rather than save the unwrapped model from rank 0."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def dataset_rows(dataset: object) -> int:
    """Rows of a split given to a Trainer (a datasets.Dataset; the Trainer types its datasets loosely)."""
    assert isinstance(dataset, Sized), type(dataset)
    return len(dataset)
