"""PPO's files: resumable checkpoints (adapters, critic, optimiser, RNG, progress), the final
policy (adapter and merged model), and the metrics/samples logs, kept in step with a resume."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch
from peft import PeftModel, load_peft_weights, set_peft_model_state_dict
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TrainerState(TypedDict):
    """PPO's progress, saved with every checkpoint."""

    iteration: int
    kl_coef: float
    score_offset: float
    score_offset_samples: NotRequired[int]  # absent from checkpoints written before it was kept
    history: list[dict[str, float]]

Messages = list[dict]


def sample_row(iteration: int, prompts: list[Messages], completions: list[str], scores: Tensor, n: int = 4) -> dict:
    """A few completions of one iteration, for people to read beside the curves."""
    rows = [
        {"prompt": p[-1]["content"], "completion": c, "score": s}
        for p, c, s in zip(prompts[:n], completions[:n], scores[:n].tolist())
    ]
    return {"iteration": iteration, "samples": rows}


def truncate_jsonl(path: Path, iterations: int) -> None:
    """Keep only the rows of the first `iterations` iterations."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["iteration"] < iterations]
        path.write_text("".join(row + "\n" for row in rows))


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def save_checkpoint(
    checkpoint_dir: Path, policy: PeftModel, critic: PeftModel, optimizer: torch.optim.Optimizer, state: TrainerState
) -> None:
    """Adapters, critic head, optimizer, RNG and progress; written beside the old one, then swapped in.

    The swap never leaves the run without a checkpoint: the old one is renamed aside (`.old`)
    before the new one is renamed into place, and removed only after; `resumable_checkpoint`
    finds whichever a crash left behind.
    """
    tmp = checkpoint_dir.with_name(checkpoint_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(str(tmp / "policy_adapter"))
    critic.save_pretrained(str(tmp / "critic_adapter"))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "optimizer": optimizer.state_dict(), "rng": rng}, tmp / "trainer_state.pt")
    old = checkpoint_dir.with_name(checkpoint_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint_dir.exists():
        checkpoint_dir.rename(old)
    tmp.rename(checkpoint_dir)
    shutil.rmtree(old, ignore_errors=True)


def resumable_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint to resume from: the current one, or the previous one a crash mid-swap left aside."""
    for candidate in (checkpoint_dir, checkpoint_dir.with_name(checkpoint_dir.name + ".old")):
        if (candidate / "trainer_state.pt").is_file():
            return candidate
    return None


def load_checkpoint(
    checkpoint_dir: Path, policy: PeftModel, critic: PeftModel, optimizer: torch.optim.Optimizer
) -> TrainerState:
    """Restore what save_checkpoint wrote into freshly built models; returns the progress state."""
    device = policy.device
    set_peft_model_state_dict(policy, load_peft_weights(str(checkpoint_dir / "policy_adapter"), device=str(device)))
    set_peft_model_state_dict(critic, load_peft_weights(str(checkpoint_dir / "critic_adapter"), device=str(device)))
    saved = torch.load(checkpoint_dir / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(saved.pop("optimizer"))
    rng = saved.pop("rng")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return saved


def save_final_policy(policy: PeftModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path) -> tuple[Path, Path]:
    """Write the LoRA adapter to output_dir/adapter and the merged model to output_dir/policy."""
    adapter_dir, policy_dir = output_dir / "adapter", output_dir / "policy"
    policy.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(adapter_dir)
    merged: PreTrainedModel = policy.merge_and_unload()  # folds the adapters into the base weights, in place
    merged.save_pretrained(policy_dir, safe_serialization=True)
    tokenizer.save_pretrained(policy_dir)
    return adapter_dir, policy_dir
