"""Checking a checkpoint someone brings before it is registered: plain functions, no Django.

`check_checkpoint` (a transformers directory) and `check_adapter` (a PEFT adapter over a checked
base) read the config, the safetensors headers and the tokenizer; no weight is loaded: the
expected shapes come from the model built on the meta device. They return a `CheckedModel` whose
tokenizer carries the pad token and chat template every job will use, and `write_registered_dir`
lays the version's directory out: the tokenizer (fixed once, so every loader — ours, TRL's,
`AutoTokenizer` — sees the same pad choice), a config, and the weights linked (or copied).
Any problem raises `ModelCheckError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

KINDS = ("base", "policy", "reward")
ADDED_PAD_TOKEN = "<|pad|>"
# Files linked (or copied) from the source; the tokenizer is written anew, everything else is left out.
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
LINKED_FILES = ("generation_config.json",)
_SAMPLE_CHAT = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]


class ModelCheckError(ValueError):
    """The checkpoint cannot be registered; the message names the problem."""


@dataclass
class CheckedModel:
    source: Path
    """The directory that was checked (resolved)."""
    config: PretrainedConfig | None
    """The config to write beside the weights (None for an adapter: its adapter_config is written)."""
    tokenizer: PreTrainedTokenizerBase
    """The tokenizer with the pad token and chat template every job uses."""
    metadata: dict = field(default_factory=dict)
    """What is recorded on the ModelVersion."""
    adapter_config: dict | None = None
    """For an adapter: its adapter_config.json, pointed at the registered base."""


# ---------------------------------------------------------------- where the checkpoint is


def resolve_source(path_or_id: str, allowed_roots: list[Path]) -> Path:
    """The checkpoint directory for a local path or a Hugging Face id (local cache only), inside allowed_roots."""
    path = Path(path_or_id).expanduser()
    if not path.exists() and not path.is_absolute() and path_or_id.count("/") == 1:
        path = _from_hf_cache(path_or_id)
    if not path.is_dir():
        raise ModelCheckError(f"path {path_or_id!r}: no such directory (Hugging Face ids resolve from the local cache only).")
    real = path.resolve()
    roots = [Path(root).resolve() for root in allowed_roots]
    if not any(real.is_relative_to(root) for root in roots):
        raise ModelCheckError(f"path {path_or_id!r} is outside the allowed model roots (MODEL_ROOTS: {[str(r) for r in roots]}).")
    # a link inside an allowed directory must not lead out of them either
    for file in path.iterdir():
        if not any(file.resolve().is_relative_to(root) for root in roots):
            raise ModelCheckError(f"{file.name} in {path_or_id!r} links outside the allowed model roots.")
    return path.absolute()  # not resolved: an HF snapshot's files are links into its blobs


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))  # never downloads
    except Exception as exc:  # not cached, bad id: huggingface_hub raises several kinds
        raise ModelCheckError(f"{repo_id!r} is not in the local Hugging Face cache: {exc}") from exc


def revision_of(path: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot (…/snapshots/<commit>), else None."""
    return path.name if path.parent.name == "snapshots" else None


# ---------------------------------------------------------------- full checkpoints


def check_checkpoint(path: Path, kind: str, chat_template: str | None = None) -> CheckedModel:
    """Check a transformers directory as a model of `kind` (base, policy or reward); raise ModelCheckError."""
    if kind not in KINDS:
        raise ModelCheckError(f"kind {kind!r} must be one of {list(KINDS)}.")
    path = Path(path)
    config = _load_config(path)
    reward_head = None
    model_class: type[AutoModelForSequenceClassification] | type[AutoModelForCausalLM]
    if kind == "reward":
        reward_head = _reward_head(config)
        model_class = AutoModelForSequenceClassification
    else:
        model_class = AutoModelForCausalLM
    meta_model = _build_on_meta(model_class, config)
    weights = weight_shapes(path)
    _compare_shapes(meta_model, weights.shapes)
    tokenizer = _checked_tokenizer(path, config, chat_template)
    config.get_text_config().pad_token_id = tokenizer.pad_token_id  # where a sequence classifier reads its score
    metadata = {
        "architecture": type(meta_model).__name__,
        "model_type": config.model_type,
        "parameters": _count_parameters(meta_model),
        "dtype": weights.dtype,
        "context_length": _context_length(config),
        "vocab_size": config.get_text_config().vocab_size,
        "size_bytes": weights.size_bytes,
        "source": str(path),
        "revision": revision_of(path),
        **tokenizer_metadata(tokenizer),
    }
    if reward_head:
        metadata["reward_head"] = reward_head
    return CheckedModel(source=path, config=config, tokenizer=tokenizer, metadata=metadata)


def _load_config(path: Path) -> PretrainedConfig:
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise ModelCheckError(f"{path} is a PEFT adapter: register it over its registered base (base=...).")
        raise ModelCheckError(f"{path}: config.json missing, not a transformers checkpoint.")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # unknown model_type, bad json: no common base class
        raise ModelCheckError(f"config in {path} does not load: {exc}") from exc


def _reward_head(config: PretrainedConfig) -> str:
    """'trained' for a one-label sequence classifier; 'created' for a causal LM (the scalar head starts random)."""
    architectures = config.architectures or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        if config.num_labels != 1:
            raise ModelCheckError(f"a reward model needs one label; this sequence classifier has {config.num_labels}.")
        return "trained"
    config.num_labels = 1  # written into the registered config: every loader builds a scalar head
    return "created"


def _build_on_meta(model_class, config: PretrainedConfig) -> PreTrainedModel:
    """The architecture with its parameters on the meta device (shapes only, no memory)."""
    try:
        with torch.device("meta"):
            return model_class.from_config(config)
    except Exception as exc:  # unsupported architecture for this head, bad sizes
        head = "sequence classifier" if model_class is AutoModelForSequenceClassification else "causal LM"
        raise ModelCheckError(f"transformers cannot build {config.model_type!r} as a {head}: {exc}") from exc


@dataclass
class WeightsHeader:
    shapes: dict[str, tuple[int, ...]]
    dtype: str
    size_bytes: int


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: model.safetensors, or those a sharded index names."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise ModelCheckError(f"{index.name} is not a safetensors index: {exc}") from exc
        files = [path / name for name in names]
    else:
        files = [path / "model.safetensors"]
    if missing := [f.name for f in files if not f.is_file()]:
        raise ModelCheckError(f"weights missing in {path}: {missing} (safetensors only; .bin is not accepted).")
    return files


def weight_shapes(path: Path) -> WeightsHeader:
    """Every tensor's name and shape, the dtypes and the bytes on disk of a checkpoint's safetensors (headers only)."""
    return _checkpoint_shapes_of(weight_files(path))


def _checkpoint_shapes_of(files: list[Path]) -> WeightsHeader:
    """Tensor names and shapes from the safetensors headers (no tensor is read)."""
    shapes, dtypes, size = {}, set(), 0
    for file in files:
        size += file.stat().st_size
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    shapes[key] = tuple(piece.get_shape())
                    dtypes.add(piece.get_dtype())
        except Exception as exc:  # a truncated or foreign file
            raise ModelCheckError(f"{file.name} is not a readable safetensors file: {exc}") from exc
    return WeightsHeader(shapes, "/".join(sorted(dtypes)), size)


def _compare_shapes(model: PreTrainedModel, found: dict[str, tuple[int, ...]]) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = _align_prefix(model, expected, found)
    tied = {name for name in expected if name not in found and _is_tied(model, name)}
    if missing := sorted(set(expected) - set(found) - tied - _optional_heads(model)):
        raise ModelCheckError(f"weights missing for {len(missing)} tensors of the config's architecture, e.g. {missing[:3]}.")
    if wrong := [f"{n}: {found[n]} in the file, {expected[n]} in the config" for n in sorted(expected) if n in found and found[n] != expected[n]]:
        raise ModelCheckError(f"weight shapes do not match the config ({len(wrong)} tensors), e.g. {wrong[:2]}.")


def _align_prefix(model: PreTrainedModel, expected: dict, found: dict) -> dict:
    """Checkpoints of a bare backbone (no `model.` prefix) or of another head share the backbone's names."""
    prefix = model.base_model_prefix + "."
    if set(found) & set(expected):
        return found
    return {prefix + name: shape for name, shape in found.items()}


def _is_tied(model: PreTrainedModel, name: str) -> bool:
    output = model.get_output_embeddings()
    return bool(model.config.get_text_config().tie_word_embeddings) and output is not None and name.startswith(
        next(n for n, m in model.named_modules() if m is output)
    )


def _optional_heads(model: PreTrainedModel) -> set[str]:
    """A causal LM's checkpoint has no classification head: transformers creates it (recorded as reward_head=created)."""
    if not model.config.architectures or any("ForSequenceClassification" in a for a in model.config.architectures):
        return set()
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    return {f"{n}.{p}" for n, m in model.named_modules() if m is head for p, _ in m.named_parameters()} if head else set()


def _count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _context_length(config: PretrainedConfig) -> int | None:
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(getattr(text, name, None), int):
            return getattr(text, name)
    return None


# ---------------------------------------------------------------- tokenizer


def _checked_tokenizer(path: Path, config: PretrainedConfig, chat_template: str | None) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # missing files, bad json, sentencepiece absent
        raise ModelCheckError(f"tokenizer in {path} does not load: {exc}") from exc
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ModelCheckError("the tokenizer has no chat template: give one (chat_template / --chat-template FILE).")
    try:
        tokenizer.apply_chat_template(_SAMPLE_CHAT, tokenize=False)
        tokenizer.apply_chat_template(_SAMPLE_CHAT[:1], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja errors
        raise ModelCheckError(f"the chat template does not render a conversation: {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise ModelCheckError("the tokenizer has no EOS token: a response's end could not be seen.")
    tokenizer.init_kwargs["pad_source"] = apply_pad_choice(tokenizer, path)  # recorded in the metadata, saved with the tokenizer
    vocab_size = config.get_text_config().vocab_size
    if len(tokenizer) > vocab_size:
        raise ModelCheckError(
            f"the tokenizer has {len(tokenizer)} tokens but the embeddings only {vocab_size} rows"
            + (f" (after adding the pad token {ADDED_PAD_TOKEN}: give the tokenizer a pad token)." if tokenizer.pad_token == ADDED_PAD_TOKEN else ".")
        )
    tokenizer.padding_side = "left"
    return tokenizer


def choose_pad_token(tokenizer: PreTrainedTokenizerBase, stop_ids: frozenset[int] = frozenset()) -> tuple[str, str]:
    """(token, how): the pad token to use and 'own' (the tokenizer's), 'existing' (an unused special token) or 'added'.

    Padding with EOS hides where a response ends (RLHF-NOTES, PPO checklist 1). An existing special
    token the chat template never writes and generation never stops at (stop_ids) is taken first (the
    vocabulary keeps its size), then UNK, else a new token is added (it must fit in the embeddings' spare rows).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token, "own"
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(tokenizer.chat_template)
    taken = {tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token}
    specials = sorted((token_id, added.content) for token_id, added in tokenizer.added_tokens_decoder.items() if added.special)
    for token_id, token in specials:
        if token not in taken and token not in (template or "") and token_id not in stop_ids:
            return token, "existing"
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        return tokenizer.unk_token, "existing"
    return ADDED_PAD_TOKEN, "added"


def apply_pad_choice(tokenizer: PreTrainedTokenizerBase, checkpoint: Path | str | None = None) -> str:
    """Give the tokenizer its pad token (see choose_pad_token), in place; returns how it was chosen.

    The checkpoint's config and generation config name the ids generation stops at (several, for
    Llama 3 instruct models): none of them may pad.
    """
    token, how = choose_pad_token(tokenizer, stop_token_ids(checkpoint) if checkpoint else frozenset())
    if how == "added":
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    return how


def stop_token_ids(checkpoint: Path | str) -> frozenset[int]:
    """EOS ids from the checkpoint's config.json and generation_config.json (an int or a list in each)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        try:
            value = json.loads((Path(checkpoint) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    return frozenset(ids)


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the vocabulary, special tokens and chat template: equal hashes tokenize the same way."""
    payload = json.dumps(
        [sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens, tokenizer.chat_template], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def tokenizer_metadata(tokenizer: PreTrainedTokenizerBase) -> dict:
    how = tokenizer.init_kwargs.get("pad_source") or choose_pad_token(tokenizer)[1]
    return {
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "pad": {"token": tokenizer.pad_token, "id": tokenizer.pad_token_id, "source": how},
        "eos": {"token": tokenizer.eos_token, "id": tokenizer.eos_token_id},
    }


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether the two tokenize (and chat-format) text identically: then token ids can be shared."""
    return a is b or tokenizer_hash(a) == tokenizer_hash(b)


# ---------------------------------------------------------------- adapters


def check_adapter(path: Path, kind: str, base_dir: Path) -> CheckedModel:
    """Check a PEFT adapter directory over the registered base checkpoint in base_dir; raise ModelCheckError."""
    if kind not in ("policy", "reward"):
        raise ModelCheckError("an adapter is registered as a policy or a reward model.")
    path, base_dir = Path(path), Path(base_dir)
    try:
        adapter_config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelCheckError(f"{path}: adapter_config.json missing or unreadable: {exc}") from exc
    expected_task = "SEQ_CLS" if kind == "reward" else "CAUSAL_LM"
    if adapter_config.get("task_type") not in (expected_task, None):
        raise ModelCheckError(f"the adapter's task_type is {adapter_config.get('task_type')!r}; a {kind} adapter needs {expected_task!r}.")
    config = _load_config(base_dir)
    if kind == "reward":
        config.num_labels = 1
    model_class = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    base_model = _build_on_meta(model_class, config)
    files = [path / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise ModelCheckError(f"{path}: adapter_model.safetensors missing (safetensors only).")
    weights = _checkpoint_shapes_of(files)
    _compare_adapter_shapes(base_model, weights.shapes)
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_dir
    tokenizer = _checked_tokenizer(tokenizer_dir, config, None)
    metadata = {
        "architecture": type(base_model).__name__,
        "model_type": config.model_type,
        "adapter": {"peft_type": adapter_config.get("peft_type"), "r": adapter_config.get("r"),
                    "parameters": sum(_numel(s) for s in weights.shapes.values())},
        "parameters": _count_parameters(base_model),
        "dtype": weights.dtype,
        "context_length": _context_length(config),
        "vocab_size": config.get_text_config().vocab_size,
        "size_bytes": weights.size_bytes,
        "source": str(path),
        "revision": revision_of(path),
        **tokenizer_metadata(tokenizer),
    }
    adapter_config["base_model_name_or_path"] = str(base_dir)
    return CheckedModel(source=path, config=None, tokenizer=tokenizer, metadata=metadata, adapter_config=adapter_config)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _compare_adapter_shapes(base: PreTrainedModel, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every lora_A (r, in) and lora_B (out, r) must sit on a linear layer of the base with those sizes."""
    modules = dict(base.named_modules())
    for key, shape in shapes.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue  # modules_to_save (a reward head) and other extras
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        layer = modules.get(name)
        if layer is None or not hasattr(layer, "weight"):
            raise ModelCheckError(f"the adapter targets {name!r}, which the base model does not have.")
        out_features, in_features = _linear_sizes(layer)
        size = shape[1] if ".lora_A." in key else shape[0]
        if size != (in_features if ".lora_A." in key else out_features):
            raise ModelCheckError(f"adapter tensor {key} has shape {shape}, which does not fit {name} ({in_features} -> {out_features}).")


def _linear_sizes(layer) -> tuple[int, int]:
    weight = layer.weight
    if type(layer).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        return weight.shape[1], weight.shape[0]
    return weight.shape[0], weight.shape[-1]


# ---------------------------------------------------------------- the registered directory


def write_registered_dir(checked: CheckedModel, out_dir: Path, *, copy: bool = False) -> Path:
    """Lay out the registered version: tokenizer (with its pad and template), config, weights linked or copied.

    Written beside out_dir and renamed into place: a crash leaves nothing half-written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelCheckError(f"{out_dir} already exists.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        checked.tokenizer.save_pretrained(tmp)
        if checked.adapter_config is not None:
            (tmp / "adapter_config.json").write_text(json.dumps(checked.adapter_config, indent=2))
            _place(checked.source / "adapter_model.safetensors", tmp, copy)
        else:
            assert checked.config is not None  # only an adapter has none, and it took the branch above
            checked.config.save_pretrained(tmp)
            for file in _weight_and_generation_files(checked.source):
                _place(file, tmp, copy)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _weight_and_generation_files(source: Path) -> list[Path]:
    index = source / "model.safetensors.index.json"
    files = weight_files(source) + ([index] if index.is_file() else [])
    return files + [source / name for name in LINKED_FILES if (source / name).is_file()]


def _place(file: Path, out_dir: Path, copy: bool) -> None:
    target = out_dir / file.name
    if copy:
        shutil.copyfile(file.resolve(), target)
    else:
        os.symlink(file.absolute(), target)


def merge_adapter(adapter_dir: Path, out_dir: Path, kind: str) -> Path:
    """Fold a registered adapter into its base and save the full checkpoint to out_dir (once; atomic)."""
    from peft import PeftModel

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    base_dir = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if kind == "reward":
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    merged.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process merged it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
