"""Sample responses to chat prompts from a checkpoint, in left-padded batches.

    for batch in generate(model_dir, prompts, GenerationConfig(n_per_prompt=4)):
        store(batch)            # a list of Completion, as soon as the batch is done

The decode loop is our own rather than `model.generate`, for throughput on small machines:
a row leaves the batch when it samples EOS, the prefix every prompt of a batch shares (the
chat template's system turn) and each repeated prompt (n_per_prompt) are run through the
model once, and sampling draws from a private torch.Generator, so the caller's RNG is
untouched. Greedy output equals `model.generate(do_sample=False)` (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import BatchEncoding, DynamicCache, PreTrainedTokenizerBase

from training.models import default_device, load_causal_lm, load_tokenizer

Messages = list[dict[str, str]]


@dataclass
class GenerationConfig:
    """How to sample responses. Call validate() before use (generate() does)."""

    temperature: float = 0.7
    """Softmax temperature, in (0, 2]; ignored when greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; 1.0 samples from the whole distribution."""
    max_new_tokens: int = 128
    """Most tokens generated per response, the EOS included; a response cut here has no EOS."""
    n_per_prompt: int = 1
    """Responses sampled for each prompt."""
    batch_size: int | None = None
    """Sequences per generate() call; None picks 16 on a CPU and 128 on a GPU."""
    seed: int = 0
    """Sampling seed: the same seed, prompts and batch size give the same responses on a CPU."""
    greedy: bool = False
    """Take the most likely token at each step (temperature and top_p are ignored)."""
    device: str | None = None
    """"cpu" or "cuda"; None uses CUDA when available."""

    def validate(self) -> GenerationConfig:
        """Return self, or raise ValueError naming the first out-of-range field."""
        if not 0 < self.temperature <= 2:
            raise ValueError(f"temperature must be in (0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "n_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return self

    def to_dict(self) -> dict:
        """The fields as plain data, to store next to the responses."""
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    """One sampled response."""

    prompt_index: int
    """Position of its prompt in the list given to generate()."""
    sample_index: int
    """Which of the n_per_prompt responses to that prompt (0-based)."""
    text: str
    """The response alone, special tokens removed."""
    num_tokens: int
    """Tokens generated, up to and including the first EOS."""
    finished_with_eos: bool
    """False when the response was cut at max_new_tokens."""


def generate(
    model_dir: Path | str,
    prompts: list[Messages],
    config: GenerationConfig,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[list[Completion]]:
    """Sample config.n_per_prompt responses to each chat prompt, yielding one list per batch.

    Prompts get the checkpoint's chat template with the assistant turn opened. After each
    batch, on_batch(done, total) reports sequences finished so far; should_stop() is asked
    before each batch, and True ends the iteration early (what was yielded stays valid).
    """
    config.validate()
    device = torch.device(config.device) if config.device else default_device()
    model = load_causal_lm(model_dir, device=device)
    tokenizer = load_tokenizer(model_dir)
    batch_size = config.batch_size or (128 if device.type == "cuda" else 16)

    jobs = _jobs(_encode(tokenizer, prompts), config.n_per_prompt)
    done = 0
    for batch_index, start in enumerate(range(0, len(jobs), batch_size)):
        if should_stop is not None and should_stop():
            return
        batch = jobs[start : start + batch_size]
        yield _generate_batch(model, tokenizer, batch, config, _batch_seed(config.seed, batch_index))
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(jobs))


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: list[Messages]) -> list[list[int]]:
    ids = []
    for messages in prompts:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert isinstance(encoded, BatchEncoding)  # return_dict defaults to True
        ids.append(list(encoded["input_ids"]))
    return ids


def _jobs(prompt_ids: list[list[int]], n_per_prompt: int) -> list[tuple[int, int, list[int]]]:
    """(prompt index, sample index, token ids) for every response, shortest prompts first.

    Sorting by length keeps prompts of similar length together, so batches carry less padding.
    """
    jobs = [(p, s, ids) for p, ids in enumerate(prompt_ids) for s in range(n_per_prompt)]
    return sorted(jobs, key=lambda job: len(job[2]))


def _batch_seed(seed: int, batch_index: int) -> int:
    # one seed per batch: batch k's samples depend on (seed, k) alone, not on earlier batches
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def _generate_batch(model, tokenizer, batch, config: GenerationConfig, seed: int) -> list[Completion]:
    """Sample one batch of (prompt index, sample index, token ids) jobs into Completions."""
    prompts = [ids for _, _, ids in batch]
    generated = _sample(model, prompts, config, tokenizer.eos_token_id, tokenizer.pad_token_id, seed)
    return [
        Completion(
            prompt_index=prompt_index,
            sample_index=sample_index,
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            num_tokens=len(tokens),
            finished_with_eos=tokens[-1] == tokenizer.eos_token_id,
        )
        for (prompt_index, sample_index, _), tokens in zip(batch, generated)
    ]


@torch.inference_mode()
def _sample(model, prompts: list[list[int]], config: GenerationConfig, eos_id: int, pad_id: int, seed: int):
    """Token ids generated after each prompt, each list ending at its first EOS or at max_new_tokens.

    A row leaves the batch as soon as it samples EOS, so one long response does not make
    the finished ones pay for every remaining step.
    """
    device = model.device
    unique = list(dict.fromkeys(map(tuple, prompts)))
    cache, logits, mask = _prefill(model, [list(p) for p in unique], pad_id)
    # each distinct prompt is computed once and its cache copied to the rows that sample it
    rows = torch.tensor([unique.index(tuple(p)) for p in prompts], device=device)
    cache.batch_select_indices(rows)
    logits, mask = logits[rows], mask[rows]
    positions = mask.sum(dim=1)  # the next token's position: the prompt's real tokens so far
    generator = torch.Generator(device=device).manual_seed(seed)
    active = torch.arange(len(prompts), device=device)  # original row of each remaining row
    generated: list[list[int]] = [[] for _ in prompts]
    for step in range(config.max_new_tokens):
        tokens = _next_tokens(logits, config, generator)
        for row, token in zip(active.tolist(), tokens.tolist()):
            generated[row].append(token)
        keep = (tokens != eos_id).nonzero().squeeze(1)
        if len(keep) == 0 or step == config.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            cache.batch_select_indices(keep)
            active, tokens, mask, positions = active[keep], tokens[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        logits = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
            past_key_values=cache, use_cache=True,
        ).logits[:, -1]
        positions = positions + 1
    return generated


def _prefill(model, prompts: list[list[int]], pad_id: int):
    """(KV cache, next-token logits (B, V), attention mask (B, T)) for left-padded prompts.

    The token prefix all prompts share (the chat template's system turn, usually) is run
    once; the rest is padded on its left, so the padding sits between prefix and suffix and
    the attention mask and position ids (mask cumsum) make that invisible to the model.
    """
    device = model.device
    shared = _common_prefix_length(prompts)
    cache = DynamicCache(config=model.config)
    if shared:
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device), past_key_values=cache, use_cache=True)
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    suffixes = [p[shared:] for p in prompts]
    width = max(len(s) for s in suffixes)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions,
        past_key_values=cache, use_cache=True, logits_to_keep=1,
    )
    return cache, out.logits[:, -1], mask


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token of each to run in the batch."""
    length = min(len(p) for p in prompts) - 1
    for i in range(length):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return max(length, 0)


def _next_tokens(logits: Tensor, config: GenerationConfig, generator: torch.Generator) -> Tensor:
    """One token id per row of logits (B, V): argmax if greedy, else a tempered nucleus sample."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        probs = _top_p(probs, config.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _top_p(probs: Tensor, top_p: float) -> Tensor:
    """Keep the most likely tokens until their mass reaches top_p (Holtzman et al. 2019). (B, V), unnormalised."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p] = 0  # mass before it already enough
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
