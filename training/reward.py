"""Reward-model training on preference pairs: a thin wrapper around TRL's RewardTrainer.

Data in: rows in TRL's conversational preference format, as `training.preferences` writes them
({"prompt": [...messages], "chosen": [assistant message], "rejected": [assistant message],
"margin", "weight"}). Artifact out: a directory that `load_reward_model` reads back, with

    config.json, model.safetensors      the reward model (LlamaForSequenceClassification, num_labels=1),
                                        LoRA merged in; or adapter_config.json + adapter_model.safetensors
                                        when merge_lora=False (the base model is then needed to load it)
    tokenizer files, chat_template.jinja
    reward_config.json                  the resolved RewardConfig and library versions
    metrics.json                        held-out accuracy, margin, calibration, counts, dataset hash
    eval_scores.json                    rewards of the chosen and rejected eval responses

Scoring format. RewardTrainer renders conversational rows with the chat template and appends
nothing (for SmolLM2 every turn already ends with "<|im_end|>\\n"); the model reads its score at the
last non-pad token. `score` renders prompt + response the same way (`encode`), so a response must
be passed as plain text, without special tokens: the template adds the end of turn.

One device: `python -m training.reward --data train.jsonl --eval eval.jsonl --base PATH --out PATH`.
Several GPUs, the same entry point (the batch size is per device; only rank 0 writes):

    accelerate launch --multi_gpu --num_processes 8 -m training.reward \\
        --data train.jsonl --eval eval.jsonl --base PATH --out PATH

(`torchrun --nproc_per_node 2 -m training.reward ... --cpu` runs two processes over gloo on a CPU.)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn.functional as F
import transformers
import trl
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
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

from training.preferences import Row, content_hash, read_jsonl

Message = dict[str, str]


class RewardTrainingError(RuntimeError):
    """Reward-model training cannot start or finish (the message says why)."""


class TrainingCancelled(RuntimeError):
    """`should_stop()` returned True: training stopped cleanly and nothing was saved."""


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
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight", None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)  # TRL's loss and metrics
        if weight is not None:
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            loss = pairwise_loss(chosen, rejected, weight, inputs.get("margin"))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
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


def load_base_model(path: str | Path, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base checkpoint as a fp32 sequence classifier with one output, and its tokenizer.

    Raises RewardTrainingError if it does not load.
    """
    path = Path(path).resolve()  # an adapter-only reward model records this path to find its base
    if not (path / "config.json").is_file():
        raise RewardTrainingError(f"base model {path}: no checkpoint there (config.json missing)")
    set_seed(seed)  # the score head is initialised at random
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RewardTrainingError(f"base model {path} does not load: {exc}") from exc
    if tokenizer.pad_token is None:  # what RewardTrainer would do; set here so our collator pads alike
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def trl_reward_args(config: RewardConfig) -> TRLRewardConfig:
    """TRL's RewardConfig for our config: CPU-safe precision, no checkpoints mid-run, no reporting."""
    on_gpu = torch.cuda.is_available() and not config.use_cpu
    bf16 = config.bf16 if config.bf16 is not None else on_gpu and torch.cuda.is_bf16_supported()
    return TRLRewardConfig(
        output_dir=config.output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        weight_decay=config.weight_decay,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5 name; TRL's default is True
        bf16=bf16,  # TRL defaults to bf16=True, which fails on a CPU
        use_cpu=config.use_cpu,
        seed=config.seed,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if config.eval_steps else "no",
        eval_steps=config.eval_steps,
        save_strategy="no",  # we save once, at the end
        dataloader_pin_memory=on_gpu,
        report_to="none",
        disable_tqdm=True,
    )


def lora_config(config: RewardConfig) -> LoraConfig:
    """peft LoraConfig for a sequence classifier."""
    # SEQ_CLS puts the score head in modules_to_save: it trains in full next to the adapters
    return LoraConfig(
        task_type="SEQ_CLS",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
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
    model, tokenizer = load_base_model(config.base_model, config.seed)
    trainer = WeightedRewardTrainer(
        model=model,
        args=trl_reward_args(config),
        train_dataset=rows_to_dataset(train_rows, config),
        eval_dataset=rows_to_dataset(eval_rows, config),
        processing_class=tokenizer,
        data_collator=WeightedPreferenceCollator(pad_token_id=tokenizer.pad_token_id),
        peft_config=lora_config(config) if config.use_lora else None,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to on_log, not to stdout
    return trainer


# ---------------------------------------------------------------- training


class _StreamAndStop(TrainerCallback):
    """Forwards each log to on_log(step, metrics) and stops after a step when should_stop() is true."""

    def __init__(self, on_log: Callable[[int, dict], None] | None, should_stop: Callable[[], bool] | None):
        self.on_log_fn, self.should_stop = on_log, should_stop
        self.cancelled = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.on_log_fn is not None and state.is_world_process_zero and logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            self.on_log_fn(state.global_step, numbers)


def train_reward_model(
    config: RewardConfig,
    train_rows: Sequence[Row],
    eval_rows: Sequence[Row],
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RewardResult:
    """Train a reward model on the pairs, evaluate it on the held-out pairs, save it to config.output_dir.

    on_log(step, metrics) receives TRL's logs (loss, accuracy, margin, min/mean/max_reward,
    learning_rate, grad_norm, epoch) every config.logging_steps steps, on rank 0 only. should_stop()
    is asked after every step (on every rank: they must agree); if it returns True training stops,
    nothing is saved and TrainingCancelled is raised.
    Raises RewardTrainingError if the base model does not load or no pair fits max_length.
    """
    stream = _StreamAndStop(on_log, should_stop)
    trainer = build_trainer(config, train_rows, eval_rows, callbacks=[stream])
    dropped_train, dropped_eval = _check_lengths(trainer, config, len(train_rows), len(eval_rows))
    output = trainer.train()
    if stream.cancelled:
        raise TrainingCancelled(f"reward-model training stopped at step {output.global_step} on request")
    model = _final_model(trainer, config)
    result = _evaluate(model, trainer, output, config)
    result.dropped_train, result.dropped_eval = dropped_train, dropped_eval
    result.dataset_hash = content_hash(train_rows, eval_rows)
    if trainer.is_world_process_zero():
        _save(model, trainer, config, result)
    trainer.accelerator.wait_for_everyone()
    return result


def _evaluate(model: PreTrainedModel, trainer: WeightedRewardTrainer, output, config: RewardConfig) -> RewardResult:
    """Score the held-out pairs with the final model; accuracy, margin, calibration and training figures."""
    chosen, rejected = _eval_scores(model, trainer.eval_dataset, config.per_device_eval_batch_size)
    ece, bins = calibration(chosen, rejected, config.calibration_bins)
    return RewardResult(
        output_dir=Path(config.output_dir),
        metrics={
            "eval/accuracy": pairwise_accuracy(chosen, rejected),
            "eval/mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(chosen),
            "eval/ece": ece,
            "train/loss": output.training_loss,
            "train/runtime_s": output.metrics["train_runtime"],
            "train/pairs_per_s": output.metrics["train_samples_per_second"],
        },
        calibration=bins,
        chosen_scores=chosen,
        rejected_scores=rejected,
        train_pairs=len(trainer.train_dataset),
        eval_pairs=len(trainer.eval_dataset),
        global_step=output.global_step,
    )


def _check_lengths(trainer: WeightedRewardTrainer, config: RewardConfig, n_train: int, n_eval: int) -> tuple[int, int]:
    """Pairs TRL dropped for exceeding max_length, per split; raises if a split lost them all."""
    kept_train, kept_eval = len(trainer.train_dataset), len(trainer.eval_dataset)
    for split, kept, total in (("training", kept_train, n_train), ("eval", kept_eval, n_eval)):
        if kept == 0:
            raise RewardTrainingError(
                f"no {split} pairs left: {total} given, all longer than max_length={config.max_length} tokens"
            )
    return n_train - kept_train, n_eval - kept_eval


def _final_model(trainer: WeightedRewardTrainer, config: RewardConfig) -> PreTrainedModel:
    """The trained model, unwrapped, LoRA merged when asked, in eval mode."""
    # drop accelerate's autocast wrapper: we evaluate in fp32, as load_reward_model will
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if config.use_lora and config.merge_lora:
        model = model.merge_and_unload()
    return model.eval()


def _save(model: PreTrainedModel, trainer: WeightedRewardTrainer, config: RewardConfig, result: RewardResult) -> None:
    out = Path(config.output_dir)
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    _write_json(out / "reward_config.json", {**asdict(config), "resolved": _resolved(trainer.args)})
    summary = {k: v for k, v in asdict(result).items() if k not in ("chosen_scores", "rejected_scores")}
    _write_json(out / "metrics.json", {**summary, "output_dir": str(out)})
    _write_json(out / "eval_scores.json", {"chosen": result.chosen_scores, "rejected": result.rejected_scores})


def _resolved(args) -> dict[str, Any]:
    """What the defaults resolved to on this machine (TRL's args), and the library versions."""
    return {
        "bf16": args.bf16,
        "device": str(args.device),
        "world_size": args.world_size,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- evaluation


def _eval_scores(model: PreTrainedModel, dataset: Dataset, batch_size: int) -> tuple[list[float], list[float]]:
    """Rewards of the chosen and rejected sides of each (tokenized) eval pair."""
    chosen = _forward_scores(model, list(dataset["chosen_ids"]), batch_size)
    rejected = _forward_scores(model, list(dataset["rejected_ids"]), batch_size)
    return chosen, rejected


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen response scores strictly higher."""
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def calibration(
    chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the Bradley-Terry probability p = sigmoid(r_c - r_r).

    Each pair predicts its more likely order with confidence max(p, 1 - p), right when p > 0.5.
    Confidences fall in n_bins equal bins over [0.5, 1]; ECE = sum over bins of
    count / N * |accuracy - mean confidence| (Guo et al. 2017). Returns (ece, bins).
    """
    width = 0.5 / n_bins
    tallies = [[0, 0.0, 0] for _ in range(n_bins)]  # count, sum of confidence, right
    for c, r in zip(chosen, rejected):
        p = 1.0 / (1.0 + math.exp(-(c - r))) if c - r > -700 else 0.0
        confidence = max(p, 1.0 - p)
        tally = tallies[min(int((confidence - 0.5) / width), n_bins - 1)]
        tally[0] += 1
        tally[1] += confidence
        tally[2] += p > 0.5
    bins = [
        {"lower": round(0.5 + i * width, 6), "upper": round(0.5 + (i + 1) * width, 6), "count": n,
         "confidence": total / n if n else 0.0, "accuracy": right / n if n else 0.0}
        for i, (n, total, right) in enumerate(tallies)
    ]
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / max(len(chosen), 1)
    return ece, bins


# ---------------------------------------------------------------- scoring


def encode(tokenizer: PreTrainedTokenizerBase, prompt_messages: Sequence[Message], response: str) -> list[int]:
    """Token ids of prompt + response exactly as RewardTrainer tokenizes a conversational row.

    TRL renders `prompt + chosen` with the chat template and adds nothing, so the template's
    end-of-turn token (EOS for chat models) is in the sequence.
    """
    messages = [*prompt_messages, {"role": "assistant", "content": response}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@torch.no_grad()
def _forward_scores(model: PreTrainedModel, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
    """One reward per token sequence, padded on the right with the model's pad id as in training."""
    pad_id = model.config.get_text_config().pad_token_id
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = [torch.tensor(ids) for ids in sequences[start : start + batch_size]]
        input_ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(ids) for ids in batch], batch_first=True)
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        scores.extend(logits[:, 0].float().tolist())
    return scores


def score(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_messages: Sequence[Message],
    responses: Sequence[str],
    batch_size: int = 16,
) -> list[float]:
    """The reward of each response to the prompt, in the format the model was trained on.

    Responses are plain text without special tokens (decode with skip_special_tokens=True).
    """
    return _forward_scores(reward_model, [encode(tokenizer, prompt_messages, r) for r in responses], batch_size)


def load_reward_model(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved reward model (merged, or an adapter over its base) and its tokenizer, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise RewardTrainingError(f"no reward model at {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id  # where the score is read
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None = None) -> tuple[RewardConfig, Path, Path]:
    parser = argparse.ArgumentParser(prog="python -m training.reward", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training rows (JSONL)")
    parser.add_argument("--eval", type=Path, required=True, help="held-out rows (JSONL)")
    parser.add_argument("--base", required=True, help="base model checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--no-merge", action="store_true", help="save the LoRA adapter only")
    parser.add_argument("--lr", type=float, default=RewardConfig.learning_rate)
    parser.add_argument("--epochs", type=float, default=RewardConfig.num_train_epochs)
    parser.add_argument("--batch-size", type=int, default=RewardConfig.per_device_train_batch_size)
    parser.add_argument("--max-length", type=int, default=RewardConfig.max_length)
    parser.add_argument("--margin", action="store_true", help="use the margin column")
    parser.add_argument("--center", type=float, default=RewardConfig.center_rewards_coefficient)
    parser.add_argument("--seed", type=int, default=RewardConfig.seed)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (several processes: gloo)")
    args = parser.parse_args(argv)
    config = RewardConfig(
        base_model=args.base, output_dir=args.out, use_lora=not args.full, merge_lora=not args.no_merge,
        learning_rate=args.lr, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, use_margin=args.margin, center_rewards_coefficient=args.center, seed=args.seed,
        use_cpu=args.cpu,
    )
    return config, args.data, args.eval


def main(argv: Sequence[str] | None = None) -> None:
    config, train_path, eval_path = _parse_args(argv)
    result = train_reward_model(config, read_jsonl(train_path), read_jsonl(eval_path),
                                on_log=lambda step, logs: print(json.dumps({"step": step, **logs}), flush=True))
    if PartialState().is_main_process:
        print(json.dumps({k: v for k, v in asdict(result).items() if k not in ("chosen_scores", "rejected_scores")},
                     default=str))


if __name__ == "__main__":
    main()
