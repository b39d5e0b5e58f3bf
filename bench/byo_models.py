"""A registered model at a real shape: Qwen2-0.5B's config with random weights, through check, generation, scoring and PPO.

    .venv/bin/python bench/byo_models.py                 # CPU, fp32, small batches
    .venv/bin/python bench/byo_models.py --device cuda --batch-size 32 --new-tokens 128

Each phase runs in its own process so that its peak memory (RSS on the CPU, torch's peak on CUDA) is its
own; the PPO peak is printed beside training.memory's estimate. The tokenizer is SmolLM2's (49k tokens)
under Qwen2-0.5B's 151,936-row embeddings, so the logits cost what the real model's do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import transformers

QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                 "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True}
PROMPTS = [[{"role": "user", "content": q}] for q in ("Why is the sky blue?", "Name a grey cat.", "What is 17 times 23?",
                                                        "A tip for sleeping better?", "Write a haiku about rain.", "Say hello.",
                                                        "List three fruits.", "What is a prime number?")]


def build(out: Path) -> Path:
    from training.models import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer()
    config = transformers.Qwen2Config(**QWEN2_05B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a phase would inherit its parent's peak
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def phase_check(args) -> dict:
    from training.model_check import check_checkpoint, write_registered_dir

    start = time.perf_counter()
    checked = check_checkpoint(Path(args.source), "policy")
    check_s = time.perf_counter() - start
    write_registered_dir(checked, Path(args.registered))
    return {"check_s": check_s, "parameters": checked.metadata["parameters"], "size_bytes": checked.metadata["size_bytes"]}


def phase_generate(args) -> dict:
    from training.generate import GenerationConfig, generate

    config = GenerationConfig(n_per_prompt=1, max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.batch_size, seed=0,
                              device=args.device)
    prompts = (PROMPTS * 64)[: args.batch_size]
    start = time.perf_counter()
    completions = [c for batch in generate(Path(args.registered), prompts, config) for c in batch]
    seconds = time.perf_counter() - start
    return {"tokens_per_s": sum(c.num_tokens for c in completions) / seconds, "sequences": len(completions)}


def phase_score(args) -> dict:
    from training.reward_scoring import forward_scores, load_reward_model

    model, tokenizer = load_reward_model(Path(args.registered), device=args.device)
    from training.reward_scoring import encode

    prompts = (PROMPTS * 64)[: args.batch_size]
    sequences = [encode(tokenizer, p, "Because of the way light scatters in the air, mostly.") for p in prompts for _ in range(2)]
    forward_scores(model, sequences[:2])  # warm up
    start = time.perf_counter()
    forward_scores(model, sequences, batch_size=args.batch_size)
    return {"pairs_per_s": len(sequences) / 2 / (time.perf_counter() - start)}


def phase_ppo(args) -> dict:
    from training.memory import estimate_training_memory, lora_parameters
    from training.ppo import PPOConfig, train_ppo

    config = PPOConfig(policy_path=args.registered, output_dir=str(Path(args.registered).parent / "ppo"), lora_r=16, lora_alpha=32,
                       total_iterations=1, rollout_batch_size=args.batch_size, minibatch_size=max(1, args.batch_size // 2), ppo_epochs=1,
                       max_new_tokens=args.new_tokens, normalize_scores=False, device=args.device, save_every=100)

    def length_rule(prompts, completions, completion_ids):
        return torch.tensor([len(ids) / args.new_tokens for ids in completion_ids])

    start = time.perf_counter()
    train_ppo(config, PROMPTS, length_rule)
    seconds = time.perf_counter() - start
    h, L = QWEN2_05B["hidden_size"], QWEN2_05B["num_hidden_layers"]
    lora = lora_parameters(h, QWEN2_05B["intermediate_size"], L, 16, kv_fraction=2 / 14)
    estimate = estimate_training_memory(
        args.parameters, hidden_size=h, num_layers=L, vocab_size=QWEN2_05B["vocab_size"], batch_size=config.minibatch_size,
        sequence_length=32 + args.new_tokens, weight_dtype="float32", trainable_parameters=lora, models=2,
    )
    return {"episodes_per_s": args.batch_size / seconds, "seconds": seconds, "estimate": estimate.as_dict()}


PHASES = {"check": phase_check, "generate": phase_generate, "score": phase_score, "ppo": phase_ppo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--source")
    parser.add_argument("--registered")
    parser.add_argument("--parameters", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.phase:
        result = PHASES[args.phase](args)
        print(json.dumps({**result, "peak_bytes": peak_bytes(args.device)}))
        return
    root = Path(tempfile.mkdtemp(prefix="byo-bench-"))
    start = time.perf_counter()
    source = build(root / "qwen2-0.5b")
    print(f"built and saved a random Qwen2-0.5B-shaped model in {time.perf_counter() - start:.0f} s", flush=True)
    common = ["--device", args.device, "--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens),
              "--source", str(source), "--registered", str(root / "registered")]
    results = {}
    for phase in ("check", "generate", "score", "ppo"):
        extra = ["--parameters", str(results["check"]["parameters"])] if phase == "ppo" else []
        out = subprocess.run([sys.executable, __file__, "--phase", phase, *common, *extra], capture_output=True, text=True, check=True)
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        print(phase, json.dumps(results[phase]), flush=True)
    gib = 1024**3
    ppo = results["ppo"]
    print(f"\n{results['check']['parameters'] / 1e6:.0f}M parameters, {results['check']['size_bytes'] / gib:.2f} GiB on disk; "
          f"check (headers only) {results['check']['check_s']:.2f} s")
    print(f"generation {results['generate']['tokens_per_s']:.1f} tokens/s, scoring {results['score']['pairs_per_s']:.2f} pairs/s, "
          f"PPO {ppo['episodes_per_s']:.3f} episodes/s")
    print(f"PPO peak {ppo['peak_bytes'] / gib:.2f} GiB, estimate {ppo['estimate']['total'] / gib:.2f} GiB {ppo['estimate']}")


if __name__ == "__main__":
    main()
