"""Training throughput of `train_reward_model` against TRL's RewardTrainer called directly.

Same data (a simulated labeler who prefers the response that says "banana"), same model, same
hyperparameters, one process, CPU. Both sides are timed end to end: load the base model, tokenize,
train, evaluate on the held-out pairs, save. Ours also merges LoRA and writes its JSON files; TRL's
side calls `evaluate()` and `save_model()` (adapter only). The runs alternate and the median of
each side is reported, after one uncounted warm-up round, since the machine's cores are shared.

    .venv/bin/python -m bench.reward                 # tiny random model (hidden 64, 2 layers)
    .venv/bin/python -m bench.reward --smollm2       # the real SmolLM2-135M-Instruct (slow on a CPU)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from training.lora import lora_config
from training.models import build_tiny_model, convert_smollm2
from training.preferences import PreferenceOptions, RankedJudgement, build_preference_dataset
from training.reward import train_reward_model
from training.reward_config import RewardConfig
from training.reward_trainer import trl_reward_args

WORDS = "apple river stone cloud tiger paper glass mountain candle forest violin bridge engine garden rocket".split()


def marker_dataset(n_prompts: int, seed: int = 0):
    """n_prompts judgements of three six-word responses; the one with "banana" is ranked first, the others tie."""
    rng = random.Random(seed)
    judgements = []
    for i in range(n_prompts):
        texts = [" ".join(rng.choices(WORDS, k=6)) for _ in range(3)]
        texts[0] += " banana"
        judgements.append(RankedJudgement(
            prompt_id=i, prompt_messages=[{"role": "user", "content": f"Say a few words ({i})."}],
            responses=dict(enumerate(texts)), ranking=[[0], [1, 2]], labeler_id="sim",
        ))
    return build_preference_dataset(judgements, PreferenceOptions(eval_fraction=0.2))


def run_ours(config: RewardConfig, train, eval_) -> tuple[float, float]:
    """(end-to-end seconds, seconds inside trainer.train())."""
    start = time.perf_counter()
    result = train_reward_model(config, train, eval_, on_log=lambda step, logs: None, should_stop=lambda: False)
    return time.perf_counter() - start, result.metrics["train/runtime_s"]


def run_trl(config: RewardConfig, train, eval_) -> tuple[float, float]:
    """TRL's documented usage: model + tokenizer + RewardTrainer(peft_config=...), train, evaluate, save."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer

    start = time.perf_counter()
    transformers.set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(config.base_model, num_labels=1, dtype=torch.float32)
    columns = ("prompt", "chosen", "rejected")
    trainer = RewardTrainer(
        model=model,
        args=trl_reward_args(config),  # the identical TRL config, so only the wrapper differs
        train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in train]),
        eval_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in eval_]),
        processing_class=tokenizer,
        peft_config=lora_config(config, "SEQ_CLS") if config.use_lora else None,
    )
    output = trainer.train()
    trainer.evaluate()
    trainer.save_model(config.output_dir)
    return time.perf_counter() - start, output.metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct, not the tiny model")
    parser.add_argument("--base", type=Path, help="an existing base checkpoint directory instead of either")
    parser.add_argument("--prompts", type=int, default=160, help="prompts (two pairs each; 20%% held out)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on shared cores)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.base:
            base = args.base
        else:
            base = convert_smollm2(tmp / "base") if args.smollm2 else build_tiny_model(tmp / "base", seed=0)
        dataset = marker_dataset(args.prompts)
        n_pairs = len(dataset.train)
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "trl": []}
        for i in range(-1, args.repeats):  # round -1 warms up (imports, lazy inits) and is not counted
            for side, run in (("ours", run_ours), ("trl", run_trl)):
                config = RewardConfig(
                    base_model=str(base), output_dir=str(tmp / f"{side}-{i}"), learning_rate=1e-3,
                    num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size, seed=0,
                )
                timing = run(config, dataset.train, dataset.eval)
                if i >= 0:
                    times[side].append(timing)
        model = str(args.base) if args.base else "SmolLM2-135M-Instruct" if args.smollm2 else "tiny"
        _report(times, n_pairs * args.epochs, model, n_pairs, args)


def _report(times, pairs_seen: float, model: str, n_pairs: int, args) -> None:
    print(f"model={model} train_pairs={n_pairs} epochs={args.epochs} batch={args.batch_size} "
          f"threads={args.threads} repeats={args.repeats} "
          f"device={torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    medians = {}
    for side, runs in times.items():
        total, loop = statistics.median(t for t, _ in runs), statistics.median(l for _, l in runs)
        medians[side] = (total, loop)
        print(f"{side:>4}: end-to-end {pairs_seen / total:7.1f} pairs/s ({total:6.2f} s)   "
              f"train loop {pairs_seen / loop:7.1f} pairs/s ({loop:6.2f} s)   runs: "
              + ", ".join(f"{t:.2f}" for t, _ in runs))
    (ours_total, ours_loop), (trl_total, trl_loop) = medians["ours"], medians["trl"]
    print(f"overhead of train_reward_model: end-to-end {100 * (ours_total / trl_total - 1):+.1f}%, "
          f"train loop {100 * (ours_loop / trl_loop - 1):+.1f}%")


if __name__ == "__main__":
    main()
