"""Direct preference optimisation of the policy: a thin wrapper around TRL's DPOTrainer.

Data in: the preference rows of `training.preferences` ({"prompt": [...messages], "chosen":
[assistant message], "rejected": [assistant message], ...}); no reward model is needed. The
reference policy is the base checkpoint: with LoRA it is the same model with its adapters disabled
(no second copy), with full fine-tuning TRL loads a frozen copy. Loss: Rafailov et al. 2023,
-log sigmoid(beta * ((log pi - log ref)(chosen) - (log pi - log ref)(rejected))).
The rows' `margin` and `weight` are not used (TRL's DPO has no per-pair weights).
Artifact out: see `training.policy_io` (adapter/, merged/, dpo_config.json, metrics.json).

Command line, one process or several (the batch size is per process; only rank 0 writes):
`accelerate launch --multi_gpu --num_processes 8 -m training.dpo --config run.json`, the run file
holding the config's fields and the data's paths (`training.launch.write_run_file`; see `main`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from training.launch import print_log, print_result, read_run_file
from training.lora import lora_config
from training.policy_io import (
    PolicyConfig,
    PolicyResult,
    PolicyTrainingError,
    StreamAndStop,
    load_policy,
    run_trainer,
    save_policy,
    trl_common_args,
)
from training.preferences import Row, read_jsonl
from training.trl_common import dataset_rows

__all__ = ["DPOConfig", "build_trainer", "train_dpo"]


@dataclass
class DPOConfig(PolicyConfig):
    """One DPO run (the shared fields are documented on PolicyConfig)."""

    learning_rate: float = 5e-5
    """Peak AdamW learning rate (LoRA; TRL's default 1e-6 is for full fine-tuning)."""
    beta: float = 0.1
    """Strength of the pull toward the reference: the implicit reward is beta * log(pi / ref)."""
    loss_type: str = "sigmoid"
    """TRL loss name: 'sigmoid' (DPO), 'ipo', 'hinge', 'robust' ..."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels, for loss_type='robust' (cDPO)."""
    max_length: int | None = 1024
    """Prompt + response is cut to this many tokens (the end goes); pairs whose prompt fills it are dropped."""
    per_device_eval_batch_size: int = 8
    """Pairs per forward pass when evaluating."""
    eval_steps: int | None = None
    """Also evaluate on eval_rows every this many steps (logged as eval_*); None: only at the end."""


def rows_to_dataset(rows: Sequence[Row]) -> Dataset:
    """The columns DPOTrainer reads: prompt, chosen, rejected (conversational)."""
    for i, row in enumerate(rows):
        missing = {"prompt", "chosen", "rejected"} - set(row)
        if missing:
            raise PolicyTrainingError(f"preference row {i} lacks {sorted(missing)}")
    return Dataset.from_dict({key: [list(row[key]) for row in rows] for key in ("prompt", "chosen", "rejected")})


def build_trainer(
    config: DPOConfig,
    train_rows: Sequence[Row],
    eval_rows: Sequence[Row] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> DPOTrainer:
    """TRL's DPOTrainer on the base policy (LoRA unless config.use_lora is False), ready to train."""
    if not train_rows:
        raise PolicyTrainingError("no preference pairs to train on")
    train_dataset = rows_to_dataset(train_rows)  # bad rows fail before the model loads
    eval_dataset = rows_to_dataset(eval_rows) if eval_rows else None
    model, tokenizer = load_policy(config.base_model, config.quantize, config.gradient_checkpointing)
    args = TRLDPOConfig(
        **trl_common_args(config),
        beta=config.beta,
        loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing,
        max_length=config.max_length,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        eval_strategy="steps" if config.eval_steps and eval_rows else "no",
        eval_steps=config.eval_steps,
    )
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM") if config.use_lora else None,
        callbacks=list(callbacks),
    )


def train_dpo(
    config: DPOConfig,
    train_rows: Sequence[Row],
    eval_rows: Sequence[Row] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PolicyResult:
    """Optimise the base policy on the preference pairs with DPO and save it to config.output_dir.

    on_log(step, metrics) receives TRL's logs (loss, rewards/chosen, rewards/rejected, rewards/accuracies,
    rewards/margins, logps/chosen, logps/rejected, learning_rate, grad_norm) every config.logging_steps
    steps, on rank 0; with eval_rows the final evaluation arrives as eval_* figures and lands in
    result.metrics. should_stop() is asked after every step; if it returns True training stops, nothing
    is saved and TrainingCancelled is raised. Raises PolicyTrainingError on bad rows, an unloadable
    base, or a non-finite loss.
    """
    stream = StreamAndStop(on_log, should_stop)
    trainer = build_trainer(config, train_rows, eval_rows, callbacks=[stream])
    kept = dataset_rows(trainer.train_dataset)
    if kept == 0:
        raise PolicyTrainingError(f"no pairs left: all {len(train_rows)} prompts fill max_length={config.max_length}")
    output = run_trainer(trainer, stream, "DPO")
    if eval_rows:
        trainer.evaluate()  # logged through the stream: eval_loss, eval_rewards/accuracies ...
    data = {"train_pairs": len(train_rows), "dropped_train": len(train_rows) - kept,
            "eval_pairs": len(eval_rows or [])}
    return save_policy(trainer, config, "dpo", output, stream, data=data)


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.dpo --config run.json` (data: "train", optional "eval", preference rows as JSONL)."""
    run = read_run_file(argv, "python -m training.dpo", __doc__.split("\n")[0])
    eval_rows = read_jsonl(run.data["eval"]) if run.data.get("eval") else None
    print_result(train_dpo(DPOConfig(**run.config), read_jsonl(run.data["train"]), eval_rows, on_log=print_log))


if __name__ == "__main__":
    main()
