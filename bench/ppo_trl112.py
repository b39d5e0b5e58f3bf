"""TRL 1.12 side of bench/ppo.py: runs `trl.experimental.ppo.PPOTrainer`, one request at a time.

Not part of the product and never imported by it: it runs under the python of a separate virtual
environment that holds trl==1.12.0 (TRL removed its PPOTrainer in 1.13), started by bench/ppo.py:

    python3.11 -m venv /tmp/trl112-venv
    /tmp/trl112-venv/bin/pip install torch==2.13.0        # the same torch as the product's venv
    /tmp/trl112-venv/bin/pip install -c <(echo torch==2.13.0) trl==1.12.0 transformers==5.23.0 \
        peft==0.21.2 accelerate==1.15.0 datasets==5.2.0

Protocol: one JSON request per line on stdin, one JSON answer per line on the stdout it was
started with (everything the libraries print goes to stderr). A request names the checkpoints
and settings; the answer holds the wall time of every PPO iteration (rollout, reward, advantages
and all PPO epochs: one `update` of TRL's loop) and the response tokens each one generated (and the CPU time of the process over each iteration).
This file uses only the standard library, torch, transformers, datasets, peft and trl: it must
not import anything from the product.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# Answers go to the original stdout; whatever the libraries print goes to stderr.
_PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trl.experimental.ppo import ppo_trainer as trl_ppo  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


class _IterationClock(TrainerCallback):
    """Timestamps the start of TRL's loop and the end of each of its PPO iterations ("updates")."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.stamps: list[float] = []
        self.cpu: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.sync()
        self.stamps = [time.perf_counter()]
        self.cpu = [time.process_time()]

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())


def _count_response_tokens(eos_token_id: int, counts: list[int]):
    """Wrap TRL's batch_generation to count each rollout's response tokens (up to and including EOS)."""
    original = trl_ppo.batch_generation

    def batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = original(model, queries, *args, **kwargs)
        responses = query_responses[:, queries.shape[1] :]
        is_eos = responses == eos_token_id
        after_first_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
        counts.append(int((~after_first_eos).sum().item()))
        return query_responses, logits

    trl_ppo.batch_generation = batch_generation
    return original


def run(request: dict) -> dict:
    torch.set_num_threads(request["threads"])
    device = request["device"]
    B, minibatch = request["rollout_batch_size"], request["minibatch_size"]
    tokenizer = AutoTokenizer.from_pretrained(request["policy_path"])
    tokenizer.padding_side = "left"
    prompt_ids = [
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for messages in request["prompts"]
    ]
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids})
    dtype = torch.float32  # weights in fp32; on a GPU bf16=True runs the passes under autocast (TRL's default)
    policy = AutoModelForCausalLM.from_pretrained(request["policy_path"], dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(request["reward_model_path"], num_labels=1, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(request["reward_model_path"], num_labels=1, dtype=dtype)
    for model in (value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    with tempfile.TemporaryDirectory(prefix="trl112-ppo-") as output_dir:
        args = PPOConfig(
            output_dir=output_dir,
            # one rollout batch of B prompts per iteration, split into B / minibatch minibatches of
            # `minibatch` sequences, one optimizer step each (gradient_accumulation_steps=1)
            per_device_train_batch_size=B,
            gradient_accumulation_steps=1,
            num_mini_batches=B // minibatch,
            local_rollout_forward_batch_size=B,  # generate the whole batch at once, as ours does
            num_ppo_epochs=request["ppo_epochs"],
            total_episodes=B * request["iterations"],
            response_length=request["max_new_tokens"],
            temperature=request["temperature"],
            stop_token="eos",
            missing_eos_penalty=request["missing_eos_penalty"],
            kl_coef=request["kl_coef"],
            learning_rate=request["learning_rate"],
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            gamma=1.0,
            lam=0.95,
            seed=request["seed"],
            # TRL's config defaults to gradient checkpointing and bf16; ours uses neither on the CPU
            gradient_checkpointing=False,
            bf16=request["bf16"],
            use_cpu=device == "cpu",
            num_sample_generations=0,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=request["lora_r"],
            lora_alpha=request["lora_alpha"],
            target_modules=request["lora_target_modules"],
            lora_dropout=0.0,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # with peft: the policy with its adapter disabled
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=train_dataset,
            eval_dataset=train_dataset.select(range(B)),
            peft_config=peft_config,
        )
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        clock = _IterationClock(sync)
        trainer.add_callback(clock)
        counts: list[int] = []
        original = _count_response_tokens(tokenizer.eos_token_id, counts)
        try:
            trainer.train()
        finally:
            trl_ppo.batch_generation = original
    iteration_s = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    cpu_s = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]
    return {"iteration_s": iteration_s, "cpu_s": cpu_s, "response_tokens": counts, "episodes_per_iteration": B, "trl": trl.__version__}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = run(json.loads(line))
        except Exception as exc:  # report it to the parent instead of dying silently
            traceback.print_exc()
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _PROTOCOL.write(json.dumps(answer) + "\n")
        _PROTOCOL.flush()


if __name__ == "__main__":
    main()
