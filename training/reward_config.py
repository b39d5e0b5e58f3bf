"""The settings of a reward-model run and what it produces (see `training.reward`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RewardTrainingError(RuntimeError):
    """Reward-model training cannot start or finish (the message says why)."""


@dataclass
class RewardConfig:
    """One reward-model training run."""

    base_model: str
    """Checkpoint directory of the base model (a causal LM; a score head is added)."""
    output_dir: str
    """Where the reward model, its config and its metrics are written."""
    use_lora: bool = True
    """Train LoRA adapters plus the score head; False trains every weight."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_target_modules: str | list[str] = "all-linear"
    """Layers that get adapters: 'all-linear' or a list of module names."""
    merge_lora: bool = True
    """Save LoRA merged into a full model (loads without peft); False saves only the adapter."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (about 1e-5 for full fine-tuning)."""
    num_train_epochs: float = 1.0
    """Passes over the training pairs."""
    per_device_train_batch_size: int = 8
    """Pairs per device per step (the model sees twice as many sequences)."""
    per_device_eval_batch_size: int = 16
    """Pairs per forward pass when evaluating."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before an update."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule (transformers name)."""
    warmup_ratio: float = 0.0
    """Share of the steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int | None = 1024
    """Pairs with a side longer than this many tokens are dropped (not truncated) and counted."""
    use_margin: bool = False
    """Use the rows' `margin` column: loss -log sigmoid(r_c - r_r - margin)."""
    use_weights: bool = True
    """Weight each pair's loss by its `weight` column (normalised to mean 1)."""
    center_rewards_coefficient: float | None = 0.01
    """Weight of mean((r_c + r_r)^2) in the loss, keeping rewards near 0; None turns it off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    quantize: str | None = None
    """Load the frozen base in "4bit" or "8bit" (QLoRA, bitsandbytes on a CUDA GPU; LoRA only); None: fp32."""
    bf16: bool | None = None
    """bf16 mixed precision; None: on when a bf16-capable GPU is used, off on the CPU."""
    use_cpu: bool = False
    """Train on the CPU even if a GPU is present."""
    seed: int = 0
    """Seed of the score-head init, LoRA init and data order."""
    logging_steps: int = 5
    """Steps between two on_log calls."""
    eval_steps: int | None = None
    """Also evaluate on the eval rows every this many steps (logged as eval_*); None: only at the end."""
    calibration_bins: int = 10
    """Equal-width confidence bins over [0.5, 1] for the expected calibration error."""


@dataclass
class RewardResult:
    """What a finished run produced (also written to output_dir/metrics.json)."""

    output_dir: Path
    """The saved reward model."""
    metrics: dict[str, float]
    """eval/accuracy, eval/mean_margin, eval/ece, train/loss, train/runtime_s, train/pairs_per_s."""
    calibration: list[dict[str, float]]
    """Per bin: lower, upper, count, confidence (mean), accuracy."""
    chosen_scores: list[float]
    """Reward of each eval pair's chosen response."""
    rejected_scores: list[float]
    """Reward of each eval pair's rejected response (same order)."""
    train_pairs: int
    """Training pairs used (after dropping the over-long)."""
    eval_pairs: int
    """Eval pairs used."""
    global_step: int
    """Optimizer steps taken."""
    dropped_train: int = 0
    """Training pairs dropped for exceeding max_length."""
    dropped_eval: int = 0
    """Eval pairs dropped for exceeding max_length."""
    dataset_hash: str = ""
    """content_hash(train_rows, eval_rows) of the rows given."""
