"""QLoRA: a frozen base loaded in 4 or 8 bits (bitsandbytes, CUDA only) under trainable LoRA adapters.

Dettmers et al. 2023 ("QLoRA: Efficient Finetuning of Quantized LLMs"): NF4 weights with double quantisation,
bf16 compute. The adapters train in full precision; the merged checkpoint a run registers is the adapter folded
into the base reloaded in bf16 (folding into 4-bit weights would round the adapter away).

    kwargs = load_kwargs(config.quantize)                   # for from_pretrained; {} keeps today's fp32 load
    model = prepare(model, config.quantize, checkpointing)  # peft's prepare_model_for_kbit_training
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.quantized import bnb_unavailable

QUANTIZE_METHODS = {"4bit": "bnb4", "8bit": "bnb8"}


class QuantizeUnavailable(RuntimeError):
    """4/8-bit loading asked for where bitsandbytes cannot run (no CUDA, or the package is missing)."""


def unavailable(quantize: str | None) -> str | None:
    """Why this machine cannot load a base in `quantize` ("4bit" | "8bit"), or None (also for None: nothing asked)."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE_METHODS:
        return f"quantize must be one of {list(QUANTIZE_METHODS)}, got {quantize!r}"
    return bnb_unavailable(QUANTIZE_METHODS[quantize])


def quantization_config(quantize: str) -> Any:
    """transformers' BitsAndBytesConfig: NF4 with double quantisation and bf16 compute, or LLM.int8()."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_kwargs(quantize: str | None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """from_pretrained's keyword arguments: `dtype` as before, or the bitsandbytes config on this process's GPU."""
    if quantize is None:
        return {"dtype": dtype}
    if reason := unavailable(quantize):
        raise QuantizeUnavailable(reason)
    # bitsandbytes models are placed by device_map and never moved with .to(): each process on its own GPU
    # (under accelerate launch LOCAL_RANK names it, before the Trainer has set the current device)
    device = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    return {"quantization_config": quantization_config(quantize), "device_map": {"": device}, "dtype": torch.bfloat16}


def prepare(model: Any, quantize: str | None, gradient_checkpointing: bool = False) -> Any:
    """The quantised base made ready for LoRA training (norms in fp32, input gradients on); unchanged without quantize."""
    if quantize is None:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def merged_from_adapter(base_path: str | Path, adapter_dir: str | Path, auto_class: Any, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The adapter folded into its base reloaded in bf16 (a quantised base cannot hold the merged weights exactly), or in dtype."""
    from peft import PeftModel

    base = auto_class.from_pretrained(base_path, dtype=dtype, **({"num_labels": 1} if "Sequence" in auto_class.__name__ else {}))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
