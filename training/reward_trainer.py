"""TRL's RewardTrainer as reward-model runs use it: per-pair weights in the loss and the collator,
the base model with a score head, and TRL's arguments for a RewardConfig."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback
from trl import RewardConfig as TRLRewardConfig
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from training import qlora
from training.lora import lora_config
from training.preferences import Row
from training.reward_config import RewardConfig, RewardTrainingError
from training.trl_common import common_training_kwargs

# ---------------------------------------------------------------- loss


def pairwise_loss(
    chosen: Tensor, rejected: Tensor, weight: Tensor | None = None, margin: Tensor | None = None
) -> Tensor:
    """Bradley-Terry: mean over the batch of weight * -log sigmoid(r_c - r_r - margin). Shapes: (B,).

    Margin as in Llama 2 (Touvron et al. 2023, eq. 2); weight 1 and margin 0 when not given.
    """
    diff = chosen - rejected if margin is None else chosen - rejected - margin
    losses = -F.logsigmoid(diff)
    return losses.mean() if weight is None else (weight * losses).mean()


class WeightedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with a per-pair `weight` in the loss (TRL's has no per-example weights)."""

    def _set_signature_columns_if_needed(self):
        # keep `weight` when the Trainer drops the columns the collator does not need
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight"]  # type: ignore[assignment]  # transformers declares it by its None initial value

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight", None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)  # TRL's loss and metrics
        if weight is not None:
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            loss = pairwise_loss(chosen, rejected, weight, inputs.get("margin"))
            args = self.args
            assert isinstance(args, TRLRewardConfig)  # build_trainer passes TRL's RewardConfig
            if args.center_rewards_coefficient is not None:
                loss = loss + args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's collator (right padding, chosen half then rejected half) plus a `weight` tensor."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        if "weight" in examples[0]:
            batch["weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float)
        return batch


# ---------------------------------------------------------------- data and model


def rows_to_dataset(rows: Sequence[Row], config: RewardConfig) -> Dataset:
    """The columns RewardTrainer reads: prompt, chosen, rejected, plus margin and weight if used."""
    for i, row in enumerate(rows):
        missing = {"prompt", "chosen", "rejected"} - set(row)
        if missing:
            raise RewardTrainingError(f"preference row {i} lacks {sorted(missing)}")
    columns: dict[str, list] = {key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")}
    if config.use_margin:
        columns["margin"] = [float(row.get("margin", 0.0)) for row in rows]
    if config.use_weights:
        weights = [float(row.get("weight", 1.0)) for row in rows]
        mean = sum(weights) / len(weights) if weights else 1.0
        if mean <= 0:
            raise RewardTrainingError("preference weights must be positive on average")
        columns["weight"] = [w / mean for w in weights]
    return Dataset.from_dict(columns)


def load_base_model(path: str | Path, seed: int = 0, quantize: str | None = None, gradient_checkpointing: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base checkpoint as a fp32 sequence classifier with one output (or in 4/8 bits: training.qlora), and its tokenizer.

    Raises RewardTrainingError if it does not load.
    """
    path = Path(path).resolve()  # an adapter-only reward model records this path to find its base
    if not (path / "config.json").is_file():
        raise RewardTrainingError(f"base model {path}: no checkpoint there (config.json missing)")
    set_seed(seed)  # the score head is initialised at random
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **qlora.load_kwargs(quantize))
        model = qlora.prepare(model, quantize, gradient_checkpointing)
    except qlora.QuantizeUnavailable as exc:
        raise RewardTrainingError(str(exc)) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RewardTrainingError(f"base model {path} does not load: {exc}") from exc
    if tokenizer.pad_token is None:  # what RewardTrainer would do; set here so our collator pads alike
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def trl_reward_args(config: RewardConfig) -> TRLRewardConfig:
    """TRL's RewardConfig for our config: the shared arguments plus evaluation, length cut and centring."""
    return TRLRewardConfig(
        **common_training_kwargs(config),
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        eval_strategy="steps" if config.eval_steps else "no",
        eval_steps=config.eval_steps,
    )


def build_trainer(
    config: RewardConfig,
    train_rows: Sequence[Row],
    eval_rows: Sequence[Row],
    callbacks: Sequence[TrainerCallback] = (),
) -> WeightedRewardTrainer:
    """TRL's RewardTrainer (with pair weights) on the base model, ready to train.

    Its train_dataset / eval_dataset hold the token ids TRL trains on (`chosen_ids`, `rejected_ids`),
    over-long pairs already dropped.
    """
    if not train_rows or not eval_rows:
        raise RewardTrainingError(f"need training and eval pairs, got {len(train_rows)} and {len(eval_rows)}")
    model, tokenizer = load_base_model(config.base_model, config.seed, config.quantize, config.gradient_checkpointing)
    trainer = WeightedRewardTrainer(
        model=model,
        args=trl_reward_args(config),
        train_dataset=rows_to_dataset(train_rows, config),
        eval_dataset=rows_to_dataset(eval_rows, config),
        processing_class=tokenizer,
        data_collator=WeightedPreferenceCollator(pad_token_id=tokenizer.pad_token_id),
        peft_config=lora_config(config, "SEQ_CLS") if config.use_lora else None,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to on_log, not to stdout
    return trainer
