"""Reward-model training on preference pairs: a thin wrapper around TRL's RewardTrainer.

Data in: rows in TRL's conversational preference format, as `training.preferences` writes them
({"prompt": [...messages], "chosen": [assistant message], "rejected": [assistant message],
"margin", "weight"}). Artifact out: a directory that `training.reward_scoring.load_reward_model` reads back, with

    config.json, model.safetensors      the reward model (LlamaForSequenceClassification, num_labels=1),
                                        LoRA merged in; or adapter_config.json + adapter_model.safetensors
                                        when merge_lora=False (the base model is then needed to load it)
    tokenizer files, chat_template.jinja
    reward_config.json                  the resolved RewardConfig and library versions
    metrics.json                        held-out accuracy, margin, calibration, counts, dataset hash
    eval_scores.json                    rewards of the chosen and rejected eval responses

Scoring format. RewardTrainer renders conversational rows with the chat template and appends
nothing (for SmolLM2 every turn already ends with "<|im_end|>\\n"); the model reads its score at the
last non-pad token. `reward_scoring.score` renders prompt + response the same way (`encode`), so a response must
be passed as plain text, without special tokens: the template adds the end of turn.

One device: `python -m training.reward --data train.jsonl --eval eval.jsonl --base PATH --out PATH`,
or every setting from a run file (`training.launch.write_run_file`; data: "train", "eval"):
`python -m training.reward --config run.json`. Several GPUs, the same entry point (the batch size is
per device; only rank 0 writes):

    accelerate launch --multi_gpu --num_processes 8 -m training.reward --config run.json

(`torchrun --nproc_per_node 2 -m training.reward ... --cpu` runs two processes over gloo on a CPU.)

The parts live beside this module: `reward_config` (RewardConfig, RewardResult), `reward_trainer`
(TRL's trainer with pair weights, and how it is built), `reward_metrics` (accuracy, calibration),
`reward_scoring` (loading a saved model, scoring). This module runs a training; import the parts from where they live.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification, PreTrainedModel, TrainerCallback

from training import qlora
from training.launch import print_log, print_result, read_run_file
from training.preferences import Row, content_hash, read_jsonl
from training.reward_config import RewardConfig, RewardResult, RewardTrainingError
from training.reward_metrics import calibration, eval_scores, pairwise_accuracy
from training.reward_scoring import load_reward_model
from training.reward_trainer import WeightedRewardTrainer, build_trainer
from training.trl_common import TrainingCancelled, dataset_rows, is_sharded, resolved_settings

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
    chosen, rejected = eval_scores(model, trainer.eval_dataset, config.per_device_eval_batch_size)
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
        train_pairs=dataset_rows(trainer.train_dataset),
        eval_pairs=dataset_rows(trainer.eval_dataset),
        global_step=output.global_step,
    )


def _check_lengths(trainer: WeightedRewardTrainer, config: RewardConfig, n_train: int, n_eval: int) -> tuple[int, int]:
    """Pairs TRL dropped for exceeding max_length, per split; raises if a split lost them all."""
    kept_train, kept_eval = dataset_rows(trainer.train_dataset), dataset_rows(trainer.eval_dataset)
    for split, kept, total in (("training", kept_train, n_train), ("eval", kept_eval, n_eval)):
        if kept == 0:
            raise RewardTrainingError(
                f"no {split} pairs left: {total} given, all longer than max_length={config.max_length} tokens"
            )
    return n_train - kept_train, n_eval - kept_eval


def _final_model(trainer: WeightedRewardTrainer, config: RewardConfig) -> PreTrainedModel:
    """The trained model, unwrapped, LoRA merged when asked, in eval mode.

    Under DeepSpeed ZeRO-3 each rank holds a shard of every weight: the shards are gathered to disk
    (trainer.save_model, every rank) and each rank reads the whole model back, LoRA merged (one device
    holds the model for scoring; what did not fit was its training).
    """
    if is_sharded(trainer):
        gathered = Path(config.output_dir) / "gathered"
        trainer.save_model(str(gathered))
        trainer.accelerator.wait_for_everyone()
        model = load_reward_model(gathered, trainer.args.device)[0]
        trainer.accelerator.wait_for_everyone()  # every rank has read it before rank 0 removes it (_save)
        return model
    # drop accelerate's autocast wrapper: we evaluate in fp32, as load_reward_model will
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if config.use_lora and config.merge_lora and config.quantize:  # fold the adapter into the base reloaded in bf16
        model.save_pretrained(Path(config.output_dir) / "adapter")
        model = qlora.merged_from_adapter(config.base_model, Path(config.output_dir) / "adapter", AutoModelForSequenceClassification)
    elif config.use_lora and config.merge_lora:
        model = model.merge_and_unload()
    return model.eval()


def _save(model: PreTrainedModel, trainer: WeightedRewardTrainer, config: RewardConfig, result: RewardResult) -> None:
    out = Path(config.output_dir)
    model.save_pretrained(out)
    tokenizer = trainer.processing_class
    assert tokenizer is not None  # the reward trainer is given a tokenizer
    tokenizer.save_pretrained(out)
    _write_json(out / "reward_config.json", {**asdict(config), "resolved": resolved_settings(trainer.args)})
    summary = {k: v for k, v in asdict(result).items() if k not in ("chosen_scores", "rejected_scores")}
    _write_json(out / "metrics.json", {**summary, "output_dir": str(out)})
    _write_json(out / "eval_scores.json", {"chosen": result.chosen_scores, "rejected": result.rejected_scores})
    shutil.rmtree(out / "gathered", ignore_errors=True)  # ZeRO-3's gathered weights, now saved whole above


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


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


def load_result(output_dir: Path | str) -> RewardResult:
    """The RewardResult of a finished run, from the files it wrote in output_dir (metrics.json, eval_scores.json)."""
    out = Path(output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    scores = json.loads((out / "eval_scores.json").read_text())
    fields = RewardResult.__dataclass_fields__
    result = RewardResult(**{k: v for k, v in summary.items() if k in fields}, chosen_scores=scores["chosen"], rejected_scores=scores["rejected"])
    result.output_dir = out
    return result


def main(argv: Sequence[str] | None = None) -> None:
    if "--config" in (argv if argv is not None else sys.argv[1:]):
        run = read_run_file(argv, "python -m training.reward", __doc__.split("\n")[0])
        config, train_path, eval_path = RewardConfig(**run.config), Path(run.data["train"]), Path(run.data["eval"])
    else:
        config, train_path, eval_path = _parse_args(argv)
    result = train_reward_model(config, read_jsonl(train_path), read_jsonl(eval_path), on_log=print_log)
    print_result(result, leave_out=("chosen_scores", "rejected_scores"))


if __name__ == "__main__":
    main()
