"""Fits or refuses: a training run whose memory estimate fits no live worker of its queue is refused before it queues.

    estimate_run("dpo", campaign, clean)      # MemoryEstimate from the model's shape (training.memory), or None
    check_fits(kind, queue, campaign, clean)  # an admission check of the job engine: InvalidParams naming both figures

The estimate counts weights, LoRA (or full) trainable state with AdamW's moments, and activations at the run's batch
and length: its campaign's longest prompt and response, generously counted in tokens, capped at the run's max length. Workers report their memory in their heartbeat
(annotate.jobs.workers); when none has reported (the demo before its worker starts, tests), nothing is refused.
Also here: the `quantize` run param (4/8-bit base loading for LoRA training, QLoRA), refused where no worker can do it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Max, TextField
from django.db.models.functions import Cast, Length

from annotate.jobs.engine import ADMISSION_CHECKS, InvalidParams, RunFailed
from annotate.jobs.workers import Capacity, capability_missing, capacity, live_workers
from annotate.models import Campaign, ModelVersion, Prompt, Response
from annotate.runs import registry

if TYPE_CHECKING:
    from training.memory import MemoryEstimate

logger = logging.getLogger(__name__)
GIB = 1024**3
TRAINING_KINDS = ("reward", "sft", "dpo", "rloo", "ppo", "round")
QUANTIZE = {"4bit": "4bit", "8bit": "int8"}  # the run param -> training.memory's weight dtype
LORA_R = 16  # training's default LoRA rank (RewardConfig, PolicyConfig, PPOConfig)
PROMPT_TOKENS = 256  # a campaign without prompts yet: a generous prompt length
CHARS_PER_TOKEN = 2  # texts are not tokenised at submission; English runs about 4 characters a token: generous
BATCH_FIELD = {"ppo": "minibatch_size", "round": "policy"}


# ---------------------------------------------------------------- the estimate


def estimate_run(kind: str, campaign: Campaign | None, params: dict, gpus: int = 1) -> MemoryEstimate | None:
    """The MemoryEstimate of a training run from its (clean) params, per GPU, or None where its model's shape cannot be read.

    gpus: the worker's GPU count, the processes a run with `deepspeed` but no `num_processes` shards across.
    """
    if kind == "reward":
        return _per_gpu(_reward_estimate(campaign, params), params, gpus)
    if kind in ("sft", "dpo", "rloo", "ppo"):
        return _per_gpu(_policy_estimate(kind, campaign, params), params, gpus)
    if kind == "round":  # its phases run one after the other: the larger one must fit
        reward, policy = params.get("reward", {}), params.get("policy", {})
        phases = [_per_gpu(_reward_estimate(campaign, reward), reward, gpus),
                  _per_gpu(_policy_estimate(params.get("method", "ppo"), campaign, policy), policy, gpus)]
        known = [e for e in phases if e is not None]
        return max(known, key=lambda e: e.total) if known else None
    return None


def _per_gpu(estimate: MemoryEstimate | None, p: dict, gpus: int) -> MemoryEstimate | None:
    """Under DeepSpeed, what one GPU holds: ZeRO-2 shards gradients and optimizer moments across the processes, ZeRO-3
    the weights too, and its offload variant keeps the moments in host RAM; activations stay whole on each GPU."""
    stage = p.get("deepspeed")
    if estimate is None or not stage:
        return estimate
    n = max(p.get("num_processes") or gpus, 1)
    return dataclasses.replace(estimate, weights=estimate.weights // n if stage.startswith("zero3") else estimate.weights,
                               trainable_state=0 if stage == "zero3_offload" else estimate.trainable_state // n)


def _reward_estimate(campaign: Campaign | None, p: dict) -> MemoryEstimate | None:
    shape = _shape(_model_dir(p.get("base_model", registry.DEFAULT_BASE_NAME)))
    if shape is None:
        return None
    # chosen and rejected both go through the backbone before the backward pass; a scalar head, no vocabulary logits
    prompt, response = _longest_texts(campaign)
    return _estimate(shape, batch=2 * p.get("batch_size", 8), length=min(p.get("max_length", 1024), prompt + response),
                     lora=p.get("use_lora", True), quantize=p.get("quantize"), logits=False)


def _policy_estimate(kind: str, campaign: Campaign | None, p: dict) -> MemoryEstimate | None:
    shape = _shape(_model_dir(p.get("policy") or _current_policy_name(campaign)))
    if shape is None:
        return None
    lora, quantize, checkpointing = p.get("use_lora", True), p.get("quantize"), p.get("gradient_checkpointing", False)
    prompt, response = _longest_texts(campaign)
    if kind == "ppo":  # a policy and a critic, each with LoRA; the reference is the policy with its adapters off
        return _estimate(shape, batch=p.get("minibatch_size", 4), length=prompt + p.get("max_new_tokens", 48), lora=True,
                         quantize=quantize, models=2)
    if kind == "rloo":  # training.rloo's max_prompt_length is 1024
        length = min(prompt, 1024) + p.get("max_completion_length", 128)
        return _estimate(shape, batch=p.get("batch_size", 8), length=length, lora=lora, quantize=quantize, checkpointing=checkpointing)
    batch = p.get("batch_size", 8) * (2 if kind == "dpo" else 1)  # DPO: chosen and rejected
    length = min(prompt + response, 1024)  # training.sft and training.dpo cut at max_length 1024
    estimate = _estimate(shape, batch=batch, length=length, lora=lora, quantize=quantize, checkpointing=checkpointing)
    if kind == "dpo" and not lora:  # a frozen reference copy (with LoRA it is the policy with its adapters off)
        estimate = dataclasses.replace(estimate, weights=estimate.weights * 2)
    return estimate


def _estimate(shape: dict, *, batch: int, length: int, lora: bool, quantize: str | None, models: int = 1, logits: bool = True,
              checkpointing: bool = False) -> MemoryEstimate:
    from training.memory import estimate_training_memory, lora_parameters

    trainable = lora_parameters(shape["hidden_size"], shape["intermediate_size"], shape["num_layers"], LORA_R) if lora else shape["parameters"]
    return estimate_training_memory(
        shape["parameters"], hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
        vocab_size=shape["vocab_size"] if logits else 1, batch_size=batch, sequence_length=length,
        weight_dtype=QUANTIZE.get(quantize or "", "float32"), trainable_parameters=trainable, gradient_checkpointing=checkpointing, models=models,
    )


def _longest_texts(campaign: Campaign | None) -> tuple[int, int]:
    """(longest prompt, longest response) of the campaign in tokens, generously counted; a long guess where there are none.

    A run trains on sequences as long as its data (up to its max length), not on max-length sequences: estimating at
    max length would refuse the demo's DPO on a laptop. Two aggregates over the campaign's rows, no text read here.
    """
    prompts = Prompt.objects.filter(campaign=campaign).aggregate(n=Max(Length(Cast("messages", TextField()))))["n"] if campaign else None
    responses = Response.objects.filter(prompt__campaign=campaign).aggregate(n=Max(Length("text")))["n"] if campaign else None
    return (prompts // CHARS_PER_TOKEN + 1 if prompts else PROMPT_TOKENS), (responses // CHARS_PER_TOKEN + 1 if responses else 1024)


def _current_policy_name(campaign: Campaign | None) -> str:
    """registry.current_policy's name, without converting the default base (slow) at submission."""
    latest = (ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=getattr(campaign, "slug", None))
              .exclude(checkpoint_path="").order_by("-round", "-created_at").first())
    return latest.name if latest else registry.DEFAULT_BASE_NAME


def _model_dir(name) -> Path | None:
    """The checkpoint directory whose shape the run trains (an adapter's base), or None where there is none yet."""
    version = ModelVersion.objects.filter(name=name).select_related("parent").first() if isinstance(name, str) else None
    if version is not None and version.metadata.get("adapter") and version.parent is not None:
        version = version.parent
    if version is None or not version.checkpoint_path:
        return None
    path = registry.stored_dir(version)
    return path if (path / "config.json").is_file() else None


def _shape(path: Path | None) -> dict | None:
    if path is None:
        return None
    from training.memory import checkpoint_shape
    from training.model_check import ModelCheckError

    try:
        return checkpoint_shape(path)
    except (OSError, ValueError, KeyError, TypeError, ModelCheckError) as exc:  # no estimate is not a reason to refuse
        logger.warning("cannot read the shape of %s for a memory estimate: %s", path, exc)
        return None


# ---------------------------------------------------------------- fits or refuses


def largest_worker(queue: str) -> Capacity | None:
    """The live worker of `queue` with the most memory for one run, or None when no worker has reported."""
    return max((capacity(w) for w in live_workers(queue)), key=lambda c: c.memory, default=None)


def check_fits(kind: str, queue: str, campaign: Campaign | None, clean: dict) -> None:
    """Refuse (InvalidParams) a training run whose estimate exceeds the memory of every live worker of its queue."""
    if kind not in TRAINING_KINDS:
        return
    best = largest_worker(queue)
    if best is None:
        logger.info("%s run: no worker of queue %r has reported its memory; accepted without checking that it fits", kind, queue)
        return
    estimate = estimate_run(kind, campaign, clean, gpus=best.gpus)
    if estimate is None:
        logger.info("%s run: its model's shape is not readable yet; accepted without a memory estimate", kind)
        return
    if estimate.total > best.memory:
        raise InvalidParams(
            f"this run needs about {size_text(estimate.total)} ({_parts(estimate)}) but the largest live worker of queue {queue!r} "
            f"has {size_text(best.memory)} free ({best.where}): lower the batch size or the length, train with LoRA, "
            "load the base in 4 or 8 bits (quantize, on a GPU), or start a larger worker.",
            field=BATCH_FIELD.get(kind, "batch_size"),
        )


def refuse_if_it_cannot_fit_here(kind: str, campaign: Campaign | None, params: dict) -> None:
    """On the worker, before anything loads: RunFailed with the estimate and the memory here if the run cannot fit.

    The submission check lets a run through when no worker had reported; this one owns the hardware and has the last word.
    """
    import torch

    from training.memory import refusal

    estimate = estimate_run(kind, campaign, params, gpus=torch.cuda.device_count())
    if estimate is None:
        return
    if reason := refusal(estimate, "cuda" if torch.cuda.is_available() else "cpu"):
        raise RunFailed(reason)


def fit_summary(kind: str, campaign: Campaign | None, params: dict, queue: str | None = None) -> str:
    """One line for a run form: "needs about 2.1 GiB; largest live worker: 15.6 GiB free (...)"."""
    queue = queue or settings.ML_QUEUE
    try:
        estimate = estimate_run(kind, campaign, params)
    except InvalidParams:
        estimate = None
    best = largest_worker(queue)
    needs = f"needs about {size_text(estimate.total)}" if estimate else "memory estimate not available (the model is not on disk yet)"
    offers = f"largest live worker: {size_text(best.memory)} free ({best.where})" if best else f"no live worker of queue {queue!r} has reported"
    return f"{needs}; {offers}"


def size_text(value: int) -> str:
    """Bytes as people read them: "2.1 GiB", or "37 MiB" below a GiB (a tiny model's estimate is not "0.0 GiB")."""
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / 1024**2:.0f} MiB"


def _parts(estimate: MemoryEstimate) -> str:
    return ", ".join(f"{name} {size_text(value)}" for name, value in estimate.as_dict().items() if name != "total")


# ---------------------------------------------------------------- quantize (QLoRA)


def quantize_param(params: dict, *, use_lora: bool = True) -> str | None:
    """The `quantize` run param ("4bit" | "8bit" | absent), refused where no worker of the ML queue can load in 4/8 bits."""
    value = params.get("quantize")
    if value is None:
        return None
    if value not in QUANTIZE:
        raise InvalidParams(f"quantize must be one of {list(QUANTIZE)} (or absent).", field="quantize")
    if not use_lora:
        raise InvalidParams("quantize loads the base in 4 or 8 bits, which only LoRA can train: keep use_lora on.", field="quantize")
    if reason := quantize_unavailable(value):
        raise InvalidParams(f"quantize {value!r}: {reason}.", field="quantize")
    return value


def quantize_unavailable(value: str, queue: str | None = None) -> str | None:
    """Why no worker can load a base in `value` bits (None: one can). The live workers say; without reports, this machine."""
    from training.quantized import bnb_unavailable

    return capability_missing(queue or settings.ML_QUEUE, lambda worker: worker.bitsandbytes,
                              f"bitsandbytes {value} loading needs a CUDA GPU with bitsandbytes installed",
                              "train without quantize (LoRA in full precision)", lambda: bnb_unavailable("bnb4" if value == "4bit" else "bnb8"))


ADMISSION_CHECKS.append(check_fits)
