"""Scoring with a reward model: loading a saved one and reading rewards in the format it was trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from training.reward_config import RewardTrainingError

Message = dict[str, str]


def encode(tokenizer: PreTrainedTokenizerBase, prompt_messages: Sequence[Message], response: str) -> list[int]:
    """Token ids of prompt + response exactly as RewardTrainer tokenizes a conversational row.

    TRL renders `prompt + chosen` with the chat template and adds nothing, so the template's
    end-of-turn token (EOS for chat models) is in the sequence.
    """
    messages = [*prompt_messages, {"role": "assistant", "content": response}]
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns
    return list(encoded["input_ids"])


@torch.no_grad()
def forward_scores(model: PreTrainedModel, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
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
    return forward_scores(reward_model, [encode(tokenizer, prompt_messages, r) for r in responses], batch_size)


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
