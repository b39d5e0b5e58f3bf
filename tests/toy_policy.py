"""A toy chat policy for loop tests: the tiny random model, taught briefly to answer any prompt
with 1-5 words of WORDS, then EOS. A random tiny model spreads its mass over 49k tokens and never
ends a reply; this one ends its replies and says "yes" about one word in eight: room for a rule
to reward it."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from training.models import load_tokenizer

WORDS = ("yes", "no", "cat", "dog", "red", "blue", "one", "two")


def build_toy_policy(tiny_model_dir: Path, out_dir: Path, prompts: list[list[dict]], steps: int = 80, seed: int = 0) -> Path:
    tokenizer = load_tokenizer(tiny_model_dir)  # left padding: the replies line up at the end
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"] for p in prompts]
    for _step in range(steps):
        replies = [
            tokenizer("".join(" " + rng.choice(WORDS) for _ in range(rng.randint(1, 5))), add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id]
            for _ in range(16)
        ]
        batch = tokenizer.pad({"input_ids": [rng.choice(prompt_ids) + r for r in replies]}, return_tensors="pt")
        longest = max(map(len, replies))
        targets = torch.tensor([[-100] * (longest - len(r)) + r for r in replies])
        positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=positions, logits_to_keep=longest + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def yes_fraction(text: str) -> float:
    """The hidden rule of the simulated labelers: the share of the reply's words that are "yes"."""
    words = text.split()
    return words.count("yes") / max(len(words), 1)
