"""Tiny random checkpoints of several architectures, each with a tokenizer of its own (bring-your-own-model tests).

- llama: byte-level BPE, EOS `</s>`, no pad token (the pad is chosen at registration), a chat template
- qwen2: another vocabulary, ChatML template, its own pad token
- gpt2: `<|endoftext|>` is BOS, EOS and UNK, no pad and no chat template (both given at registration);
  its embeddings have spare rows so that an added pad token fits
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CORPUS = [
    "Question 0? Answer 1 to 0. Yes no maybe sure, the quick brown fox jumps over the lazy dog.",
    "Hello! Hi. How are you? Fine, thanks: short answers are best.",
    "user assistant system [INST] [/INST] <<SYS>> im_start im_end",
] * 4

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GPT2_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _bpe(vocab_size: int, specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def llama_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(300, ["<unk>", "<s>", "</s>", "<reserved_0>"]),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<reserved_0>"]})
    tokenizer.chat_template = LLAMA_TEMPLATE
    return tokenizer


def qwen2_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(320, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=_bpe(280, ["<|endoftext|>"]),
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _config(arch: str, tokenizer, vocab_size: int):
    # initializer_range 0.3, not 0.02: with 32-wide embeddings that small every logit is near 0, and no LoRA
    # update on top of a layer norm could move the next-token distribution far enough for PPO to show learning
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "initializer_range": 0.3}
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **ids)
    return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)


TOKENIZERS = {"llama": llama_tokenizer, "qwen2": qwen2_tokenizer, "gpt2": gpt2_tokenizer}


def build_model(out_dir: Path, arch: str, *, reward: bool = False, seed: int = 0, spare_rows: int = 8) -> Path:
    """Save a tiny random `arch` causal LM (or one-label sequence classifier) with its own tokenizer to out_dir."""
    tokenizer = TOKENIZERS[arch]()
    config = _config(arch, tokenizer, len(tokenizer) + spare_rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if reward:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
