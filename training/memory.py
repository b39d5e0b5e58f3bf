"""How much memory a model job needs, estimated from a registered model's shape before anything loads.

Weights, trainable state (gradients and AdamW's two moments, fp32) and activations at the run's batch
and length. Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models"): about 34·s·b·h values of 2 bytes per layer with fused attention (the 5·a·s²·b
attention-score term is gone under SDPA/flash attention); with gradient checkpointing only each layer's
input (s·b·h) is kept plus one layer's full set. The vocabulary-sized logits and their log-softmax (fp32)
are counted apart: on a small model with a large vocabulary they dominate.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1, "4bit": 0.5}
ADAMW_STATE_BYTES = 4 + 4 + 4  # fp32 gradient, first and second moments per trainable parameter


@dataclass
class MemoryEstimate:
    weights: int
    """Bytes of the frozen and trainable weights of every model the job holds."""
    trainable_state: int
    """Gradients and optimiser moments."""
    activations: int
    """Saved activations of one forward pass at the job's batch and length, logits included."""

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "trainable_state": self.trainable_state, "activations": self.activations, "total": self.total}


def lora_parameters(hidden_size: int, intermediate_size: int, num_layers: int, r: int, kv_fraction: float = 1.0) -> int:
    """LoRA parameters on every linear layer of a Llama-style block: r·(in + out) per layer."""
    attention = 2 * (hidden_size + hidden_size) + 2 * (hidden_size + int(hidden_size * kv_fraction))  # q, o; k, v
    mlp = 3 * (hidden_size + intermediate_size)  # gate, up, down
    return r * (attention + mlp) * num_layers


def estimate_training_memory(
    parameters: int,
    *,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    batch_size: int,
    sequence_length: int,
    weight_dtype: str = "float32",
    trainable_parameters: int,
    gradient_checkpointing: bool = False,
    models: int = 1,
) -> MemoryEstimate:
    """Bytes a training job needs: `models` backbones (PPO holds a policy and a critic) of `parameters` each."""
    weight_bytes = DTYPE_BYTES[weight_dtype]
    activation_bytes = 2 if weight_dtype != "float32" else 4  # autocast keeps activations in the compute dtype
    tokens = batch_size * sequence_length
    per_layer = tokens * hidden_size * 34 * activation_bytes // 2
    if gradient_checkpointing:
        layers = tokens * hidden_size * activation_bytes * num_layers + per_layer
    else:
        layers = per_layer * num_layers
    logits = tokens * vocab_size * (activation_bytes + 4 + 4)  # the logits, their fp32 log-softmax and its gradient
    return MemoryEstimate(
        weights=int(parameters * weight_bytes * models),
        trainable_state=int(trainable_parameters * ADAMW_STATE_BYTES * models),
        activations=int(layers * models + logits),
    )


# ---------------------------------------------------------------- fits or refuses


def checkpoint_shape(path: Path | str) -> dict[str, int]:
    """Parameters (from the safetensors headers, no weight read), hidden size, layers, vocabulary of a checkpoint."""
    from training.model_check import weight_shapes  # headers only

    config = json.loads((Path(path) / "config.json").read_text())
    config = config.get("text_config", config)
    shapes = weight_shapes(Path(path)).shapes
    return {
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
        "hidden_size": config.get("hidden_size") or config.get("n_embd"),
        "num_layers": config.get("num_hidden_layers") or config.get("n_layer"),
        "intermediate_size": config.get("intermediate_size") or config.get("n_inner") or 4 * (config.get("hidden_size") or config.get("n_embd")),
        "vocab_size": config["vocab_size"],
    }


def available_bytes(device: str) -> int:
    """Free memory where the job will run: CUDA's free memory, or the kernel's MemAvailable on the CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def ppo_estimate(policy_path: Path | str, *, minibatch_size: int, sequence_length: int, lora_r: int, weight_dtype: str = "float32") -> MemoryEstimate:
    """PPO holds two backbones (the policy, the critic; the reference is the policy with adapters off), each with LoRA."""
    shape = checkpoint_shape(policy_path)
    lora = lora_parameters(shape["hidden_size"], shape["intermediate_size"], shape["num_layers"], lora_r)
    return estimate_training_memory(shape["parameters"], hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                                    vocab_size=shape["vocab_size"], batch_size=minibatch_size, sequence_length=sequence_length,
                                    weight_dtype=weight_dtype, trainable_parameters=lora, models=2)


def refusal(estimate: MemoryEstimate, device: str) -> str | None:
    """Why the job cannot fit on this device (None: it can), with the estimate and the memory there is."""
    free = available_bytes(device)
    if estimate.total <= free:
        return None
    gib = 1024**3
    parts = ", ".join(f"{name} {value / gib:.1f}" for name, value in estimate.as_dict().items() if name != "total")
    return (f"this run needs about {estimate.total / gib:.1f} GiB ({parts}) but the {device} here has {free / gib:.1f} GiB free: "
            "lower the batch size or the response length, or run it on a larger worker.")
