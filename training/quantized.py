"""Load the quantised checkpoints that training.optimize writes (int8 for the CPU, bitsandbytes for a GPU).

`training.models.load_causal_lm` comes here when a checkpoint holds a quantization.json; the
writing (and the why of each format) is in training.optimize, which builds on this module.
int8: the integers and per-channel scales in `model.int8.safetensors`, rebuilt into torch's dynamic
int8 linears on the CPU (the same outputs as the model that was saved), dequantised elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers import GenerationConfig as HFGenerationConfig

from training.checkpoints import QUANTIZED_MARKER, CheckpointError

GPU_METHODS = ("bnb8", "bnb4")
INT8_WEIGHTS = "model.int8.safetensors"


def bnb_unavailable(method: str) -> str | None:
    """Why this machine cannot run the bitsandbytes `method` (bnb8 | bnb4), or None if it can."""
    bits = 4 if method == "bnb4" else 8
    if not torch.cuda.is_available():
        return f"{method} (bitsandbytes {bits}-bit) needs a CUDA GPU and this machine has none; on the CPU use int8"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"{method} needs the bitsandbytes package, which is not installed"
    return None


def load_quantized(path: Path | str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A checkpoint written by training.optimize (int8 or bitsandbytes), in eval mode (load_causal_lm calls this)."""
    path = Path(path)
    try:
        marker = json.loads((path / QUANTIZED_MARKER).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable {QUANTIZED_MARKER} in {path}: {exc}") from exc
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if marker.get("method") in GPU_METHODS:
        return _load_bnb(path, marker["method"], device)
    if marker.get("method") != "int8" or marker.get("format") != 1:
        raise CheckpointError(f"{path}: unknown quantisation {marker.get('method')!r} (format {marker.get('format')})")
    try:
        return _load_int8(path, marker["quantized"], device, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the int8 model in {path}: {exc}") from exc


def _load_int8(path: Path, targets: list[str], device: torch.device, dtype: torch.dtype | None) -> PreTrainedModel:
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is overwritten below: skip the random init (seconds on 135M)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    tensors = load_file(path / INT8_WEIGHTS)
    integers = {name: [tensors.pop(f"{name}.weight_{part}") for part in ("int8", "scale", "zero_point")] for name in targets}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected = {f"{name}.weight" for name in targets} | ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    if set(missing) - expected or unexpected:
        raise CheckpointError(f"int8 weights do not fit the model: missing {sorted(set(missing) - expected)}, unexpected {unexpected}")
    if model.config.tie_word_embeddings:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    with _quiet_quantization():
        for name, (q, scale, zp) in integers.items():
            # re-quantising (q - zero point) * scale with the stored scales gives back the stored integers (tested)
            weight = (q.float() - zp[:, None]) * scale[:, None].float()
            if device.type == "cpu":
                _set_dynamic_int8(model, name, torch.quantize_per_channel(weight, scale, zp, 0, torch.qint8))
            else:
                model.get_submodule(name).weight.data = weight
    if device.type != "cpu":  # no int8 kernels off the CPU: the int8-rounded weights, dequantised
        model = model.to(device=device, dtype=dtype or torch.bfloat16)
    if (path / "generation_config.json").is_file():
        model.generation_config = HFGenerationConfig.from_pretrained(path)
    return model.eval()


def _set_dynamic_int8(model: nn.Module, name: str, qweight: torch.Tensor) -> None:
    """Replace the linear layer `name` by torch's dynamic int8 linear holding `qweight` (what quantize_dynamic makes)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    parent, _, child = name.rpartition(".")
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)  # the int8 targets are linear layers (training.optimize.int8_targets)
    quantized = DynamicInt8Linear(layer.in_features, layer.out_features, bias_=layer.bias is not None, dtype=torch.qint8)
    quantized.set_weight_bias(qweight, layer.bias.detach() if layer.bias is not None else None)
    setattr(model.get_submodule(parent) if parent else model, child, quantized)


def _load_bnb(path: Path, method: str, device: torch.device) -> PreTrainedModel:
    if device.type != "cuda":
        raise CheckpointError(f"{path} is a bitsandbytes ({method}) checkpoint: it loads on a CUDA GPU only")
    if reason := bnb_unavailable(method):
        raise CheckpointError(reason)
    # the quantisation config is in config.json; bitsandbytes models are placed by device_map, never moved with .to()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return AutoModelForCausalLM.from_pretrained(path, device_map={"": index}).eval()


# ---------------------------------------------------------------- int8


def quantize_dynamic_int8(model: nn.Module, targets: Sequence[str]) -> nn.Module:
    """The model with `targets` replaced in place by torch's dynamic int8 linears (per-channel weight scales)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with _quiet_quantization():
        return quantize_dynamic(model, dict.fromkeys(targets, per_channel_dynamic_qconfig), dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def _quiet_quantization():
    # torch 2.13 warns on every use that torch.ao.quantization and quantised tensors will move to
    # torchao; they are what this torch has (torchao is not a dependency), so the warnings are noise here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(quantiz|deprecated).*", category=UserWarning)
        yield
