"""What optimising SmolLM2-135M-Instruct costs and buys on the CPU: the source against its merged, int8 and pruned versions.

    .venv/bin/python bench/optimize.py                                  # 16 prompts, 48 new tokens, 1 thread
    .venv/bin/python bench/optimize.py --reward-model var/artifacts/runs/12/model   # adds the mean reward score
    .venv/bin/python bench/optimize.py --model tiny --prompts 4                    # the tiny random model (smoke run)

Each version is made by training.optimize.optimize and measured by training.optimize.compare, the
optimize job's own path: size on disk, load time, decoding tokens/s (greedy, batch --batch-size,
--max-new-tokens steps with EOS ignored so that every version does the same work; wall, and per
CPU second, steadier on shared cores), perplexity on the source's own samples, mean reward-model
score, and the share of response pairs (two source samples per prompt) each version orders as the
source does.
"merged" folds a random LoRA adapter (r=16, B ~ N(0, 0.02)) into the source: SmolLM2 ships none.
The SmolLM2 checkpoint is converted from the packaged GGUF into var/models/ on first use.
"""

from __future__ import annotations

import argparse
import json
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
from training.models import build_tiny_model, convert_smollm2, load_causal_lm
from training.optimize import MeasureConfig, OptimizeConfig, compare, optimize

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
sys.path.insert(0, str(ROOT / "bench"))
from generation import QUESTIONS  # noqa: E402

VERSIONS = {
    "merged": lambda args: OptimizeConfig("merge"),
    "int8": lambda args: OptimizeConfig("int8"),
    "pruned": lambda args: OptimizeConfig("prune", sparsity=args.sparsity),
    "pruned-structured": lambda args: OptimizeConfig("prune", sparsity=args.sparsity, structured=True),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', or a checkpoint directory")
    parser.add_argument("--versions", default=",".join(VERSIONS), help=f"comma-separated, from {list(VERSIONS)}")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reward-model", default=None, help="a reward model directory (training.reward output)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 1 is steadier on a shared machine")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def source_dir(name: str, scratch: Path) -> Path:
    if name == "smollm2":
        return convert_smollm2(SMOLLM2_DIR)
    if name == "tiny":
        return build_tiny_model(scratch / "tiny")
    return Path(name)


def random_adapter(source: Path, out: Path) -> Path:
    """A LoRA adapter over `source` whose B matrices are not zero, so merging it changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(0)  # peft draws the A matrices from the global generator
    model = get_peft_model(load_causal_lm(source, device="cpu"), LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                                            target_modules="all-linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def source_pairs(source: Path, prompts: list, args: argparse.Namespace) -> list:
    """Two source samples per prompt (another seed than the measured samples): the pairs to order."""
    config = GenerationConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, n_per_prompt=2,
                              batch_size=args.batch_size, seed=1, device="cpu")
    texts: dict[int, list[str]] = {}
    for batch in generate(source, prompts, config):
        for c in batch:
            texts.setdefault(c.prompt_index, []).append(c.text)
    return [(prompts[i], *texts[i]) for i in sorted(texts)]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    prompts = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.prompts)]
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as scratch:
        scratch = Path(scratch)
        source = source_dir(args.model, scratch)
        made, seconds = {}, {}
        for name in args.versions.split(","):
            config = VERSIONS[name](args)
            if config.method == "merge":
                config.adapter_dir = str(random_adapter(source, scratch / "adapter"))
            start = time.perf_counter()
            optimize(source, scratch / name, config)
            made[name], seconds[name] = scratch / name, time.perf_counter() - start
        pairs = source_pairs(source, prompts, args)  # also the warm-up: page cache, kernels, allocator
        figures = compare(source, made, prompts, pairs, MeasureConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
                          reward_model=args.reward_model, on_model=lambda n: print(f"measuring {n} ...", file=sys.stderr, flush=True))
    print(f"model {args.model}, threads {torch.get_num_threads()}, {len(prompts)} prompts, {len(pairs)} pairs, "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, torch {torch.__version__}")
    report(figures, seconds)
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "optimize_s": seconds}, indent=2) + "\n")


def report(figures: dict, seconds: dict) -> None:
    source = figures["source"]
    print("| version | size (MB) | load (s) | decode tokens/s | tokens/CPU s | perplexity on source samples | mean reward | pair agreement | made in (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        speed = f"{f['tokens_per_s']:.1f}" + ("" if name == "source" else f" ({f['tokens_per_s'] / source['tokens_per_s']:.2f}×)")
        cpu = f"{f['tokens_per_cpu_s']:.1f}" + ("" if name == "source" else f" ({f['tokens_per_cpu_s'] / source['tokens_per_cpu_s']:.2f}×)")
        reward = "—" if f["reward"] is None else f"{f['reward']:.3f}"
        print(f"| {name} | {f['size_mb']:.0f} | {f['load_s']:.2f} | {speed} | {cpu} | {f['perplexity']:.2f} | "
              f"{reward} | {f['agreement']:.2f} | {seconds.get(name, 0):.0f} |")


if __name__ == "__main__":
    main()
