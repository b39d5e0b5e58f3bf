"""Tokens/s of batched generation against one prompt at a time, same model, same prompts.

    .venv/bin/python bench/generation.py                   # SmolLM2-135M-Instruct on the CPU
    .venv/bin/python bench/generation.py --model tiny      # the tiny random test model
    .venv/bin/python bench/generation.py --device cuda --batch-size 64 --prompts 64   # on a GPU (bf16)

The SmolLM2 checkpoint is converted from the packaged GGUF into var/models/ on first use.
Only generated tokens count (each response up to and including its EOS); the time includes
loading the checkpoint (a fraction of a second, the same for both runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import transformers

from training.generate import GenerationConfig, generate
from training.models import build_tiny_model, convert_smollm2

SMOLLM2_DIR = Path(__file__).resolve().parents[1] / "var" / "models" / "smollm2-135m-instruct"

QUESTIONS = [
    "What is the capital of France?",
    "Give me a short tip for sleeping better.",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a ten-year-old.",
    "What is 17 times 23?",
    "Suggest a name for a grey cat.",
    "Why is the sky blue?",
    "List three uses for a paperclip.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Describe the smell of rain in one sentence.",
    "Recommend a book for a long train journey and say why.",
    "What is the difference between weather and climate?",
    "Write a friendly reminder to water the plants.",
    "How many legs does a spider have?",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', or a checkpoint directory")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16 on a GPU")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per run (cycling the built-in ones)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); 1 is steadier on a shared machine")
    return parser.parse_args()


def model_dir(name: str, scratch: Path) -> Path:
    if name == "smollm2":
        return convert_smollm2(SMOLLM2_DIR)
    if name == "tiny":
        return build_tiny_model(scratch / "tiny")
    return Path(name)


def run(path: Path, prompts: list, batch_size: int, args: argparse.Namespace) -> tuple[int, float, float]:
    """(generated tokens, wall seconds, CPU seconds of this process) for all prompts at one batch size."""
    config = GenerationConfig(
        temperature=0.7, max_new_tokens=args.max_new_tokens, batch_size=batch_size, seed=0, device=args.device
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    tokens = sum(c.num_tokens for batch in generate(path, prompts, config) for c in batch)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    prompts = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as scratch:
        path = model_dir(args.model, Path(scratch))
        run(path, prompts[:2], 2, args)  # warm-up: page cache, kernels, allocator
        sequential = run(path, prompts, 1, args)
        batched = run(path, prompts, args.batch_size, args)
    print(f"model {args.model}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{len(prompts)} prompts, max_new_tokens {args.max_new_tokens}")
    report("one at a time", *sequential)
    report(f"batch {args.batch_size}", *batched)
    print(f"{'speed-up':14}: {speed(*batched) / speed(*sequential):.1f}x wall-clock", end="")
    print(f", {speed(batched[0], batched[2]) / speed(sequential[0], sequential[2]):.1f}x per CPU second")


def speed(tokens: int, seconds: float, *_: float) -> float:
    return tokens / seconds


def report(label: str, tokens: int, wall: float, cpu: float) -> None:
    # CPU seconds say what the work cost when other processes share the cores (wall time
    # then mostly measures waiting); with several threads they include spin-waiting.
    print(f"{label:14}: {tokens:5d} tokens in {wall:7.2f} s = {tokens / wall:7.1f} tokens/s "
          f"({cpu:7.2f} CPU s = {tokens / cpu:7.1f} tokens per CPU s)")


if __name__ == "__main__":
    main()
