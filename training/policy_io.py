"""What SFT, DPO and RLOO share: the policy config, loading, streaming and saving a policy.

Every policy run writes the same directory:

    output_dir/adapter/        the LoRA adapter (adapter_config.json records the base checkpoint) + tokenizer;
                               absent after full fine-tuning
    output_dir/merged/         the full policy (adapters folded in), tokenizer and generation config:
                               loads with training.models.load_causal_lm / load_tokenizer, pad != EOS
    output_dir/<algo>_config.json   the resolved config and library versions
    output_dir/metrics.json         final figures, TRL's log history, global step

Only rank 0 writes. A cancelled or failed run writes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.trainer_callback import PrinterCallback

from training import qlora
from training.trl_common import TrainingCancelled, common_training_kwargs, is_sharded, resolved_settings

__all__ = [
    "PolicyConfig",
    "PolicyResult",
    "PolicyTrainingError",
    "load_policy",
    "load_result",
    "response_logprobs",
]

Message = dict[str, str]


class PolicyTrainingError(RuntimeError):
    """Policy training cannot start or finish (the message says why)."""


@dataclass
class PolicyConfig:
    """Settings every policy run shares; SFTConfig, DPOConfig and RLOOConfig add their own."""

    base_model: str
    """Checkpoint directory of the starting policy (a causal LM with its chat tokenizer, pad != EOS)."""
    output_dir: str
    """Where adapter/, merged/, the config and the metrics are written."""
    use_lora: bool = True
    """Train LoRA adapters on the frozen base; False trains every weight."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch (off: RLOO and DPO compare log-probs of two forward passes)."""
    lora_target_modules: str | list[str] = "all-linear"
    """Layers that get adapters: 'all-linear' (every linear but the LM head) or module names."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    num_train_epochs: float = 1.0
    """Passes over the data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to take; -1: as many as num_train_epochs gives."""
    per_device_train_batch_size: int = 8
    """Examples (SFT rows, DPO pairs, RLOO completions) per device per step."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before an update."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule (transformers name)."""
    warmup_ratio: float = 0.0
    """Share of the steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower); TRL's default is on."""
    quantize: str | None = None
    """Load the frozen base in "4bit" or "8bit" (QLoRA, bitsandbytes on a CUDA GPU; LoRA only); None: fp32."""
    bf16: bool | None = None
    """bf16 mixed precision; None: on when a bf16-capable GPU is used, off on the CPU."""
    use_cpu: bool = False
    """Train on the CPU even if a GPU is present."""
    seed: int = 0
    """Seed of the LoRA init, data order and sampling."""
    logging_steps: int = 5
    """Steps between two on_log calls."""


@dataclass
class PolicyResult:
    """What a finished policy run produced (also in output_dir/metrics.json)."""

    output_dir: Path
    """The run's directory."""
    merged_dir: Path
    """The full policy checkpoint (load_causal_lm reads it)."""
    adapter_dir: Path | None
    """The LoRA adapter over config.base_model; None after full fine-tuning."""
    metrics: dict[str, float]
    """train/loss, train/runtime_s, train/steps_per_s, and the last value of every figure TRL logged."""
    global_step: int
    """Optimizer steps taken."""


# ---------------------------------------------------------------- model and arguments


def load_policy(path: str | Path, quantize: str | None = None, gradient_checkpointing: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The checkpoint as a fp32 causal LM to train (or its base in 4/8 bits: training.qlora), and its tokenizer (pad token != EOS).

    Raises PolicyTrainingError if it does not load or pads with EOS.
    """
    path = Path(path).resolve()  # the adapter records this path to find its base
    if not (path / "config.json").is_file():
        raise PolicyTrainingError(f"base model {path}: no checkpoint there (config.json missing)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = qlora.prepare(AutoModelForCausalLM.from_pretrained(path, **qlora.load_kwargs(quantize)), quantize, gradient_checkpointing)
    except qlora.QuantizeUnavailable as exc:
        raise PolicyTrainingError(str(exc)) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PolicyTrainingError(f"base model {path} does not load: {exc}") from exc
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # padding with EOS hides where a response ends (RLHF-NOTES, PPO checklist 1)
        raise PolicyTrainingError(f"tokenizer in {path} has no pad token distinct from EOS")
    return model, tokenizer


def trl_common_args(config: PolicyConfig) -> dict[str, Any]:
    """Keyword arguments for any TRL policy config: the shared ones plus step limit, clipping and data seed."""
    return dict(
        **common_training_kwargs(config),
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        data_seed=config.seed,
    )


# ---------------------------------------------------------------- streaming, stopping, running


class StreamAndStop(TrainerCallback):
    """Forwards each log to on_log(step, metrics), keeps the history, stops when should_stop() or the loss is NaN."""

    def __init__(self, on_log: Callable[[int, dict], None] | None, should_stop: Callable[[], bool] | None):
        self.on_log_fn, self.should_stop = on_log, should_stop
        self.cancelled = False
        self.bad_loss: tuple[int, float] | None = None
        self.history: list[dict[str, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        loss = numbers.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_loss = (state.global_step, loss)
            control.should_training_stop = True
        if numbers:
            self.history.append({"step": state.global_step, **numbers})
        if self.on_log_fn is not None and state.is_world_process_zero and numbers:
            self.on_log_fn(state.global_step, numbers)


def run_trainer(trainer: Trainer, stream: StreamAndStop, name: str) -> Any:
    """trainer.train(), then TrainingCancelled if should_stop() asked, PolicyTrainingError on a non-finite loss."""
    trainer.remove_callback(PrinterCallback)  # metrics go to on_log, not to stdout
    output = trainer.train()
    if stream.cancelled:
        raise TrainingCancelled(f"{name} training stopped at step {output.global_step} on request")
    if stream.bad_loss is not None or not math.isfinite(output.training_loss):
        step, loss = stream.bad_loss or (output.global_step, output.training_loss)
        raise PolicyTrainingError(
            f"{name} training diverged: loss {loss} at step {step}; lower the learning rate, "
            "or check the data for empty responses; nothing was saved"
        )
    return output


# the Trainer's end-of-training log, reported below under train/*
_TRAINER_SUMMARY = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def summary_metrics(output: Any, stream: StreamAndStop, data: Mapping[str, float] | None = None) -> dict[str, float]:
    """The last value of each logged figure, the Trainer's loss and throughput, and data/* counts."""
    last: dict[str, float] = {}
    for entry in stream.history:
        last.update({k: v for k, v in entry.items() if k != "step" and k not in _TRAINER_SUMMARY})
    return {
        **last,
        "train/loss": float(output.training_loss),
        "train/runtime_s": float(output.metrics["train_runtime"]),
        "train/steps_per_s": float(output.metrics["train_steps_per_second"]),
        **{f"data/{k}": float(v) for k, v in (data or {}).items()},
    }


# ---------------------------------------------------------------- saving


def save_policy(
    trainer: Trainer,
    config: PolicyConfig,
    name: str,
    output: Any,
    stream: StreamAndStop,
    data: Mapping[str, float] | None = None,
) -> PolicyResult:
    """Write adapter/, merged/, <name>_config.json and metrics.json (rank 0); return the result on every rank.

    `data` holds counts about the input (rows, dropped ...), recorded as data/* metrics.
    """
    out = Path(config.output_dir)
    result = PolicyResult(
        output_dir=out,
        merged_dir=out / "merged",
        adapter_dir=out / "adapter" if config.use_lora else None,
        metrics=summary_metrics(output, stream, data),
        global_step=output.global_step,
    )
    if is_sharded(trainer):  # ZeRO-3: every rank takes part in gathering the shards; rank 0 writes the adapter (or the whole)
        trainer.save_model(str(result.adapter_dir or result.merged_dir))
    if trainer.is_world_process_zero():
        tokenizer = trainer.processing_class
        assert isinstance(tokenizer, PreTrainedTokenizerBase)  # these trainers are given a tokenizer
        model = _reloaded(config, result) if is_sharded(trainer) else _unwrapped(trainer, config, result, tokenizer)
        _save_merged(model, tokenizer, result.merged_dir)
        _write_json(out / f"{name}_config.json", {**asdict(config), "resolved": resolved_settings(trainer.args)})
        _write_json(out / "metrics.json", {**asdict(result), "log_history": stream.history})
    trainer.accelerator.wait_for_everyone()
    return result


def _unwrapped(trainer: Trainer, config: PolicyConfig, result: PolicyResult, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The trained model off its wrappers, the adapter saved and folded in (LoRA)."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if not is_peft_model(model):
        return model
    assert result.adapter_dir is not None  # set when config.use_lora, which is what made the model a PEFT one
    model.save_pretrained(result.adapter_dir)
    tokenizer.save_pretrained(result.adapter_dir)
    if config.quantize:  # the base is in 4/8 bits: fold the adapter into the base reloaded in bf16
        return qlora.merged_from_adapter(config.base_model, result.adapter_dir, AutoModelForCausalLM)
    return model.merge_and_unload()  # folds the adapters into the base weights, in place


def _reloaded(config: PolicyConfig, result: PolicyResult) -> PreTrainedModel:
    """After ZeRO-3: the gathered weights read back whole from disk (one device holds the model, not its training)."""
    if result.adapter_dir is not None:
        return qlora.merged_from_adapter(config.base_model, result.adapter_dir, AutoModelForCausalLM, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(result.merged_dir)


def load_result(output_dir: Path | str) -> PolicyResult:
    """The PolicyResult of a finished run, from the metrics.json it wrote in output_dir."""
    saved = json.loads((Path(output_dir) / "metrics.json").read_text())
    return PolicyResult(output_dir=Path(saved["output_dir"]), merged_dir=Path(saved["merged_dir"]),
                        adapter_dir=Path(saved["adapter_dir"]) if saved["adapter_dir"] else None,
                        metrics=saved["metrics"], global_step=saved["global_step"])


def _save_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, merged_dir: Path) -> None:
    model.config.use_cache = True  # trainers switch it off for training; generation wants it
    for cfg in (model.config.get_text_config(), model.generation_config):
        cfg.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None:  # generation must stop at the end of turn
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval().save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def response_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message], response: str
) -> torch.Tensor:
    """log p(token | before) of each of the response's tokens (its end of turn included), shape (T,), on the CPU.

    Tokenized as the trainers do: the prompt with the generation prompt, then the chat-templated
    prompt + response; the response tokens are those after the common prefix. Their sum is
    log p(response | prompt).
    """
    prompt_encoded = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)
    full = [*prompt, {"role": "assistant", "content": response}]
    full_encoded = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)
    assert isinstance(prompt_encoded, BatchEncoding) and isinstance(full_encoded, BatchEncoding)  # what return_dict=True returns
    prompt_ids, ids = prompt_encoded["input_ids"], full_encoded["input_ids"]
    start = _common_prefix(prompt_ids, ids)
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    logprobs = model(input_ids=input_ids, use_cache=False).logits[0, :-1].float().log_softmax(-1)
    return logprobs.gather(-1, input_ids[0, 1:, None])[start - 1 :, 0].cpu()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

