"""Supervised fine-tuning of the policy on chat transcripts: a thin wrapper around TRL's SFTTrainer.

Data in: conversational rows {"messages": [...]} whose last message is the assistant's response,
for example the labelers' chosen responses appended to their prompts (`chosen_to_sft_rows`) or
imported demonstrations. By default the loss covers that last message only (its end-of-turn
token included), not the prompt. Artifact out: see `training.policy_io` (adapter/, merged/,
sft_config.json, metrics.json).

Command line, one process or several (the batch size is per process; only rank 0 writes):
`accelerate launch --multi_gpu --num_processes 8 -m training.sft --config run.json`, the run file
holding the config's fields and the data's paths (`training.launch.write_run_file`; see `main`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

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

__all__ = ["SFTConfig", "build_trainer", "chosen_to_sft_rows", "train_sft"]


@dataclass
class SFTConfig(PolicyConfig):
    """One supervised fine-tuning run (the shared fields are documented on PolicyConfig)."""

    learning_rate: float = 2e-4
    """Peak AdamW learning rate (LoRA; about 2e-5 for full fine-tuning)."""
    max_length: int | None = 1024
    """Conversations are cut to this many tokens (the end goes); rows left with no response token are dropped."""
    completion_only_loss: bool = True
    """Loss on the last (assistant) message only; False: on every token of the conversation."""


# ---------------------------------------------------------------- data


def chosen_to_sft_rows(preference_rows: Sequence[Row], best_only: bool = True) -> list[Row]:
    """SFT rows {"messages": prompt + [chosen]} from preference rows, one per distinct (prompt, response).

    best_only keeps a response only if it never lost a pair on its prompt (the winners of each
    ranking); False keeps every response that won at least one pair.
    """
    lost = {(_key(r["prompt"]), _key(r["rejected"])) for r in preference_rows} if best_only else set()
    seen: set[tuple[str, str]] = set()
    rows = []
    for row in preference_rows:
        key = (_key(row["prompt"]), _key(row["chosen"]))
        if key in seen or key in lost:
            continue
        seen.add(key)
        rows.append({"messages": [*row["prompt"], *row["chosen"]]})
    return rows


def _key(messages: Sequence[dict]) -> str:
    return json.dumps(list(messages), sort_keys=True, ensure_ascii=False)


def rows_to_dataset(rows: Sequence[Row], config: SFTConfig) -> Dataset:
    """TRL's conversational columns: prompt/completion (loss on the response) or messages (loss on all)."""
    for i, row in enumerate(rows):
        messages = row.get("messages")
        if not messages or messages[-1].get("role") != "assistant" or not messages[-1].get("content"):
            raise PolicyTrainingError(f"SFT row {i} must hold messages ending with a non-empty assistant message")
    if not config.completion_only_loss:
        return Dataset.from_dict({"messages": [list(row["messages"]) for row in rows]})
    return Dataset.from_dict({
        "prompt": [list(row["messages"][:-1]) for row in rows],
        "completion": [[row["messages"][-1]] for row in rows],
    })


# ---------------------------------------------------------------- training


def build_trainer(config: SFTConfig, rows: Sequence[Row], callbacks: Sequence[TrainerCallback] = ()) -> SFTTrainer:
    """TRL's SFTTrainer on the base policy (LoRA unless config.use_lora is False), ready to train."""
    if not rows:
        raise PolicyTrainingError("no SFT rows to train on")
    dataset = rows_to_dataset(rows, config)  # bad rows fail before the model loads
    model, tokenizer = load_policy(config.base_model, config.quantize, config.gradient_checkpointing)
    args = TRLSFTConfig(
        **trl_common_args(config),
        max_length=config.max_length,
        completion_only_loss=config.completion_only_loss,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM") if config.use_lora else None,
        callbacks=list(callbacks),
    )


def train_sft(
    config: SFTConfig,
    rows: Sequence[Row],
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PolicyResult:
    """Fine-tune the base policy on the rows' last messages and save it to config.output_dir.

    on_log(step, metrics) receives TRL's logs (loss, mean_token_accuracy, entropy, num_tokens,
    learning_rate, grad_norm) every config.logging_steps steps, on rank 0. should_stop() is asked after
    every step; if it returns True training stops, nothing is saved and TrainingCancelled is raised.
    Raises PolicyTrainingError on bad rows, an unloadable base, or a non-finite loss.
    """
    stream = StreamAndStop(on_log, should_stop)
    trainer = build_trainer(config, rows, callbacks=[stream])
    kept = dataset_rows(trainer.train_dataset)
    if kept == 0:
        raise PolicyTrainingError(f"no SFT rows left: all {len(rows)} lose every response token to max_length")
    output = run_trainer(trainer, stream, "SFT")
    return save_policy(trainer, config, "sft", output, stream, data={"rows": len(rows), "dropped": len(rows) - kept})


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.sft --config run.json`; under accelerate launch on every rank.

    Data: "rows" (SFT rows as JSONL), or "pairs" (preference pairs, e.g. a pairs snapshot: their winners become the rows).
    """
    run = read_run_file(argv, "python -m training.sft", __doc__.split("\n")[0])
    rows = read_jsonl(run.data["rows"]) if "rows" in run.data else chosen_to_sft_rows(read_jsonl(run.data["pairs"]))
    print_result(train_sft(SFTConfig(**run.config), rows, on_log=print_log))


if __name__ == "__main__":
    main()
