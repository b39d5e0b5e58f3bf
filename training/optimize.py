"""Make a policy smaller and faster to serve, and measure what that costs in quality.

    details = optimize(source_dir, out_dir, OptimizeConfig(method="int8"))
    figures = compare(source_dir, {"int8": out_dir}, prompts, pairs, MeasureConfig())

Every method writes a checkpoint directory that `training.models.load_causal_lm` loads, so an
optimised version generates responses into the queue like any other, plus `optimize_config.json`
(the resolved config, what was done, library versions):

- merge: a LoRA adapter folded into its base weights (peft `merge_and_unload`); an ordinary checkpoint.
- int8: torch's dynamic quantisation (`torch.ao.quantization.quantize_dynamic`): int8 weights, one
  scale per output channel; activations quantised per batch at run time; CPU kernels (fbgemm/x86).
  A quantised torch model has no safetensors form, so the int8 weights and their scales are stored
  as plain tensors in `model.int8.safetensors` next to the ordinary config and tokenizer, and
  `quantization.json` (the marker `load_causal_lm` looks for) lists the quantised layers. Loading
  rebuilds those layers from the stored integers: no re-quantisation, the same outputs as the model
  that was saved. On a GPU the int8 weights are dequantised (int8 rounding kept, float activations).
  `lm_head` (tied to the embeddings) and every `mlp.down_proj` stay in fp32: down_proj's inputs carry
  the outlier activations of LLMs (Dettmers et al. 2022, LLM.int8()) that one int8 scale per
  tensor destroys; on SmolLM2-135M quantising them too took the mean per-token KL to the fp32
  model on three chat turns from 0.40 to 2.2 nats. (torch 2.13 marks torch.ao.quantization as
  deprecated in favour of torchao, which is not a dependency here.)
- prune: magnitude pruning with `torch.nn.utils.prune` on the decoder's linear layers (embeddings
  and the tied LM head untouched). Unstructured: `l1_unstructured` zeroes the `sparsity` share of
  smallest |w| in each layer; stored dense (safetensors has no sparse format, so the same size on
  disk: the gain needs sparse kernels). Structured: `LnStructured` (L2 norm) picks the `sparsity`
  share of MLP channels per layer, scored on everything the channel touches (its gate and up rows
  and its down column), and the layers are cut down: a smaller, faster ordinary checkpoint.
- bnb8 / bnb4: bitsandbytes LLM.int8() or NF4 through transformers; needs a CUDA GPU and the
  bitsandbytes package (`check_hardware` says why not).

`compare` measures the source and each optimised checkpoint on the same prompts: size on disk,
load time, decoding tokens/s, perplexity on the source's own samples, mean reward-model score,
and how often it orders a set of response pairs as the source does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from training.checkpoints import QUANTIZED_MARKER, atomic_dir
from training.generate import GenerationConfig, generate
from training.models import load_causal_lm, load_tokenizer
from training.policy_io import response_logprobs
from training.quantized import GPU_METHODS, INT8_WEIGHTS, bnb_unavailable, quantize_dynamic_int8

Messages = list[dict[str, str]]

METHODS = ("merge", "int8", "prune", "bnb8", "bnb4")
INT8_KEEP_FLOAT = ("lm_head", "mlp.down_proj")  # module-name suffixes left in fp32 (see the module docstring)
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class OptimizationError(RuntimeError):
    """A method cannot run on this machine, or its input is unusable (the message says why)."""


@dataclass
class OptimizeConfig:
    """One optimisation of one checkpoint."""

    method: str
    """merge | int8 | prune | bnb8 | bnb4."""
    sparsity: float = 0.5
    """prune: the share of weights (unstructured) or of MLP channels (structured) removed, in (0, 1)."""
    structured: bool = False
    """prune: remove whole MLP channels (a smaller dense model) instead of single weights."""
    adapter_dir: str | None = None
    """merge: the LoRA adapter directory; its adapter_config.json names the base checkpoint."""

    def validate(self) -> OptimizeConfig:
        """Return self, or raise OptimizationError naming the bad field."""
        if self.method not in METHODS:
            raise OptimizationError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "prune" and not 0 < self.sparsity < 1:
            raise OptimizationError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.method == "merge" and not self.adapter_dir:
            raise OptimizationError("merge needs adapter_dir, the LoRA adapter to fold in")
        return self


def check_hardware(method: str) -> None:
    """Raise OptimizationError if this machine cannot run `method` (bitsandbytes: CUDA and the package)."""
    if method in GPU_METHODS and (reason := bnb_unavailable(method)):
        raise OptimizationError(reason)
    if method == "int8" and set(torch.backends.quantized.supported_engines) <= {"none"}:
        raise OptimizationError("int8: this torch build has no quantised CPU kernels (fbgemm, x86 or qnnpack)")


def optimize(source_dir: Path | str, out_dir: Path | str, config: OptimizeConfig) -> dict[str, Any]:
    """Write the optimised checkpoint of `source_dir` to `out_dir`; returns what was done (also in optimize_config.json).

    A crash leaves no partial out_dir. Raises OptimizationError (bad config, hardware) or CheckpointError.
    """
    config.validate()
    check_hardware(config.method)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if config.method == "merge":
            assert config.adapter_dir  # config.validate() refuses a merge without one
            details = merge_lora(Path(config.adapter_dir), tmp)
        elif config.method == "int8":
            details = quantize_int8(source_dir, tmp)
        elif config.method == "prune":
            details = prune(source_dir, tmp, config.sparsity, structured=config.structured)
        else:
            details = quantize_bnb(source_dir, tmp, bits=4 if config.method == "bnb4" else 8)
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        record = {**asdict(config), "source": str(source_dir), "details": details, "versions": versions}
        (tmp / "optimize_config.json").write_text(json.dumps(record, indent=2) + "\n")
    return details


# ---------------------------------------------------------------- merge


def merge_lora(adapter_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Fold the LoRA adapter into its base (named in adapter_config.json) and save the full model."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise OptimizationError(f"no LoRA adapter at {adapter_dir} (adapter_config.json missing)")
    base_dir = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_causal_lm(base_dir, device="cpu", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_dir)
    _save(merged, AutoTokenizer.from_pretrained(tokenizer_dir), out_dir)
    return {"base": str(base_dir), "adapter": str(adapter_dir)}


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    model.config.use_cache = True
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- int8 (CPU)


def int8_targets(model: nn.Module) -> list[str]:
    """Names of the linear layers that int8 quantises: all but the LM head and the MLP down projections."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith(INT8_KEEP_FLOAT)]


def quantize_int8(source_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Quantise the source's linear layers to int8 and store integers, scales and the float rest."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model = load_causal_lm(source_dir, device="cpu", dtype=torch.float32)
    dense = {k: v for k, v in model.state_dict().items() if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    targets = int8_targets(model)
    quantize_dynamic_int8(model, targets)
    quantized = {f"{name}.weight" for name in targets}
    tensors = {k: v for k, v in dense.items() if k not in quantized}
    for name in targets:
        layer = model.get_submodule(name)
        assert isinstance(layer, DynamicInt8Linear)  # quantize_dynamic_int8 just swapped it in
        weight = layer.weight()
        tensors[f"{name}.weight_int8"] = weight.int_repr()
        tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales()
        tensors[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points()
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / INT8_WEIGHTS)
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(out_dir)
    floats = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    (out_dir / QUANTIZED_MARKER).write_text(json.dumps({"method": "int8", "format": 1, "quantized": targets, "float": floats}, indent=2) + "\n")
    return {"quantized_layers": len(targets), "float_layers": len(floats)}


# ---------------------------------------------------------------- bitsandbytes (GPU)


def quantize_bnb(source_dir: Path, out_dir: Path, bits: int) -> dict[str, Any]:
    """bitsandbytes LLM.int8() (bits=8) or NF4 with double quantisation (bits=4), saved by transformers."""
    from transformers import BitsAndBytesConfig

    if bits == 4:
        qconfig = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        qconfig = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(source_dir, quantization_config=qconfig, device_map={"": 0}, dtype=torch.bfloat16)
    _save(model, AutoTokenizer.from_pretrained(source_dir), out_dir)
    (out_dir / QUANTIZED_MARKER).write_text(json.dumps({"method": f"bnb{bits}", "format": 1}) + "\n")
    return {"bits": bits, "quant_type": "nf4" if bits == 4 else "llm.int8"}


# ---------------------------------------------------------------- pruning


def decoder_linears(model: PreTrainedModel) -> list[tuple[str, nn.Linear]]:
    """The attention and MLP projections of every decoder layer (what pruning touches)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.endswith(DECODER_LINEARS)]


def weight_sparsity(model: PreTrainedModel) -> float:
    """Share of exact zeros among the decoder layers' linear weights."""
    zeros = total = 0
    for _, layer in decoder_linears(model):
        zeros += int((layer.weight == 0).sum())
        total += layer.weight.numel()
    return zeros / total


def mlp_parameters(model: PreTrainedModel) -> int:
    """Weights in the decoder layers' MLPs (what structured pruning removes)."""
    return sum(m.weight.numel() for n, m in decoder_linears(model) if n.endswith(("gate_proj", "up_proj", "down_proj")))


def prune(source_dir: Path, out_dir: Path, sparsity: float, *, structured: bool = False) -> dict[str, Any]:
    """Magnitude-prune the source's decoder layers and save the result as an ordinary checkpoint."""
    model = load_causal_lm(source_dir, device="cpu", dtype=torch.float32)
    if structured:
        before = mlp_parameters(model)
        channels = prune_mlp_channels(model, sparsity)
        details = {"structured": True, "mlp_channels": channels, "sparsity": 1 - mlp_parameters(model) / before}
    else:
        prune_unstructured(model, sparsity)
        details = {"structured": False, "sparsity": weight_sparsity(model)}
    _save(model, AutoTokenizer.from_pretrained(source_dir), out_dir)
    return details


def prune_unstructured(model: PreTrainedModel, sparsity: float) -> None:
    """Zero the `sparsity` share of smallest-magnitude weights in each decoder linear layer, permanently."""
    for _, layer in decoder_linears(model):
        torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
        torch_prune.remove(layer, "weight")  # fold the mask into the weight: a plain parameter again


def prune_mlp_channels(model: PreTrainedModel, sparsity: float) -> int:
    """Remove the `sparsity` share of each MLP's channels with the smallest L2 norm; returns the channels kept per layer.

    Channel j is row j of gate_proj and up_proj and column j of down_proj; it is scored on all three.
    Every layer keeps the same number, so config.intermediate_size stays one number.
    """
    kept = None
    for index, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            raise OptimizationError(f"layer {index}: structured pruning needs a gated MLP (gate_proj, up_proj, down_proj)")
        channels = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T], dim=1)  # (I, 3H)
        mask = torch_prune.LnStructured(sparsity, n=2, dim=0).compute_mask(channels, torch.ones_like(channels))
        keep = mask[:, 0].nonzero().squeeze(1)
        if len(keep) == 0:
            raise OptimizationError(f"sparsity {sparsity} removes every MLP channel")
        mlp.gate_proj, mlp.up_proj = _take(mlp.gate_proj, keep, dim=0), _take(mlp.up_proj, keep, dim=0)
        mlp.down_proj = _take(mlp.down_proj, keep, dim=1)
        kept = len(keep)
    if kept is None:
        raise OptimizationError("the model has no layers to prune")
    model.config.intermediate_size = kept
    return kept


def _take(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new linear layer with only the given output rows (dim=0) or input columns (dim=1)."""
    weight = layer.weight.detach().index_select(dim, index)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, dtype=weight.dtype)
    out.weight.data.copy_(weight)
    if layer.bias is not None:
        out.bias.data.copy_(layer.bias.detach().index_select(0, index) if dim == 0 else layer.bias.detach())
    return out


# ---------------------------------------------------------------- measuring


@dataclass
class MeasureConfig:
    """How the source and its optimised versions are compared."""

    max_new_tokens: int = 48
    """Tokens generated per prompt for the throughput, reward and perplexity samples."""
    batch_size: int = 8
    """Prompts per generation batch."""
    temperature: float = 0.7
    """Sampling temperature (the generation job's default)."""
    seed: int = 0
    """Sampling seed: every model samples with the same one."""
    device: str = "cpu"
    """Where every model is measured (int8 is a CPU method)."""


@dataclass
class Measurement:
    """One model measured: its figures, its own samples and how it orders each pair."""

    figures: dict[str, float | None]
    """size_mb, load_s, tokens_per_s, tokens_per_cpu_s, tokens, reward, perplexity, agreement (see compare)."""
    samples: list[tuple[Messages, str]]
    """(prompt, response) it sampled, one per prompt."""
    prefers_a: list[bool]
    """Per pair: it gives a higher mean log-probability per token to response a than to b."""


def compare(
    source_dir: Path | str,
    candidates: Mapping[str, Path | str],
    prompts: Sequence[Messages],
    pairs: Sequence[tuple[Messages, str, str]],
    config: MeasureConfig,
    reward_model: Path | str | None = None,
    on_model: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Figures of the source (key "source") and of each candidate, measured the same way on the same prompts.

    Each model's figures: size_mb (all files), load_s, tokens_per_s and tokens_per_cpu_s (greedy
    decoding of max_new_tokens for the first batch_size prompts: decode_speed), tokens (generated
    in its samples: one response per prompt, sampled as the generation job does), reward (mean
    reward-model score of its samples; None without reward_model), perplexity (on the source's
    samples) and agreement (share of the (prompt, a, b) `pairs` it orders as the source does;
    None without pairs).
    on_model(name) is called before each model.
    """
    scorer = _reward_scorer(reward_model, config.device)
    if on_model:
        on_model("source")
    source = measure(source_dir, prompts, pairs, config, scorer=scorer)
    figures = {"source": source.figures}
    for name, path in candidates.items():
        if on_model:
            on_model(name)
        figures[name] = measure(path, prompts, pairs, config, scorer=scorer, reference=source).figures
    return figures


def measure(
    model_dir: Path | str,
    prompts: Sequence[Messages],
    pairs: Sequence[tuple[Messages, str, str]],
    config: MeasureConfig,
    *,
    scorer: Callable[[Messages, list[str]], list[float]] | None = None,
    reference: Measurement | None = None,
) -> Measurement:
    """One model's figures; perplexity and agreement against `reference` (None: against itself, as the source)."""
    model_dir = Path(model_dir)
    start = time.perf_counter()
    model = load_causal_lm(model_dir, device=config.device)
    load_s = time.perf_counter() - start
    tokenizer = load_tokenizer(model_dir)
    tokens_per_s, tokens_per_cpu_s = decode_speed(model, tokenizer, prompts[: config.batch_size], config.max_new_tokens)
    samples, tokens = _sample(model_dir, prompts, config)
    prefers_a = _prefers_a(model, tokenizer, pairs)
    reference = reference or Measurement({}, samples, prefers_a)
    same = sum(a == b for a, b in zip(prefers_a, reference.prefers_a))
    figures = {
        "size_mb": directory_size(model_dir) / 1e6,
        "load_s": load_s,
        "tokens_per_s": tokens_per_s,
        "tokens_per_cpu_s": tokens_per_cpu_s,
        "tokens": tokens,
        "reward": _mean_reward(scorer, samples),
        "perplexity": perplexity(model, tokenizer, reference.samples),
        "agreement": same / len(pairs) if pairs else None,
    }
    return Measurement(figures, samples, prefers_a)


@torch.inference_mode()
def decode_speed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Messages], steps: int) -> tuple[float, float]:
    """(tokens/s, tokens per CPU second) of greedy decoding `steps` tokens for the batch of prompts, prefill included.

    EOS is ignored, so every model does the same work: timing generate() instead would favour a
    model whose rows never finish (a full batch to the end costs less per token).
    """
    encoded = tokenizer.apply_chat_template(list(prompts), add_generation_prompt=True, tokenize=True, padding=True,
                                            return_dict=True, return_tensors="pt")
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns
    ids, mask = encoded["input_ids"].to(model.device), encoded["attention_mask"].to(model.device)
    model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits.tolist()  # warm-up: kernels, allocator
    start, start_cpu = time.perf_counter(), time.process_time()
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    for _ in range(steps - 1):
        mask = torch.cat([mask, mask.new_ones(len(ids), 1)], dim=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
    out.logits[:, -1].argmax(-1).tolist()  # waits for the device
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return len(ids) * steps / seconds, len(ids) * steps / max(cpu_seconds, 1e-9)


def directory_size(path: Path) -> int:
    """Bytes of all files under path."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _sample(model_dir: Path, prompts: Sequence[Messages], config: MeasureConfig) -> tuple[list[tuple[Messages, str]], int]:
    """(prompt, response) per prompt, sampled as the generation job does, and the tokens generated."""
    gen = GenerationConfig(temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                           batch_size=config.batch_size, seed=config.seed, device=config.device)
    completions = sorted((c for batch in generate(model_dir, list(prompts), gen) for c in batch), key=lambda c: c.prompt_index)
    return [(prompts[c.prompt_index], c.text) for c in completions], sum(c.num_tokens for c in completions)


def _reward_scorer(path: Path | str | None, device: str):
    if path is None:
        return None
    from training.reward_scoring import load_reward_model, score

    model, tokenizer = load_reward_model(path, device=device)
    return lambda prompt, texts: score(model, tokenizer, prompt, texts)


def _mean_reward(scorer, samples: list[tuple[Messages, str]]) -> float | None:
    if scorer is None or not samples:
        return None
    scores = [s for prompt, text in samples for s in scorer(prompt, [text])]
    return sum(scores) / len(scores)


def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, samples: Sequence[tuple[Messages, str]]) -> float:
    """exp of the mean negative log-likelihood per token of the responses (all samples pooled)."""
    logprobs = [response_logprobs(model, tokenizer, prompt, text) for prompt, text in samples]
    count = sum(len(lp) for lp in logprobs)
    return math.exp(-sum(float(lp.sum()) for lp in logprobs) / count) if count else float("nan")


def _prefers_a(model, tokenizer, pairs: Sequence[tuple[Messages, str, str]]) -> list[bool]:
    """Per pair, whether the model gives a higher mean log-probability per token to a (length-fair) than to b."""
    return [float(response_logprobs(model, tokenizer, p, a).mean()) > float(response_logprobs(model, tokenizer, p, b).mean())
            for p, a, b in pairs]
