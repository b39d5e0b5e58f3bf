"""Endpoints: model versions of kind `endpoint`, OpenAI-compatible servers that generate (vLLM, TGI, SGLang, a hosted API).

An endpoint keeps its settings in `metadata["endpoint"]`: base_url, model (the served name),
api_key_env (the NAME of the worker's environment variable holding the key: the key itself is
never stored), max_concurrency, requests_per_minute, timeout_seconds and default sampling params.
A `generate` run names an endpoint in `models` like any other version. A policy version can
name the endpoint that serves it (`metadata["served_by"]`): its generation then goes through
that server instead of the worker; `serve_commands` says how to start such a server.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from django.db import transaction

from annotate.core.errors import DomainError
from annotate.models import ModelVersion
from annotate.runs.registry import RegistryError, checkpoint_dir

ENDPOINT = ModelVersion.Kind.ENDPOINT
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
LIMITS = {"max_concurrency": (1, 1024), "requests_per_minute": (1, 1_000_000), "timeout_seconds": (1, 3600)}
SAMPLING = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "max_tokens": (1, 32768)}


class InvalidEndpoint(DomainError):
    code = "invalid_endpoint"


@transaction.atomic
def register_endpoint(name: str, base_url: str, model: str, *, api_key_env: str | None = None, max_concurrency: int = 8,
                      requests_per_minute: int | None = None, timeout_seconds: int = 120, sampling: dict | None = None) -> ModelVersion:
    """Register an OpenAI-compatible server as a model version; InvalidEndpoint names the first bad field."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidEndpoint("name must be a non-empty string of at most 200 characters.", field="name")
    if ModelVersion.objects.filter(name=name).exists():
        raise InvalidEndpoint(f"a model named {name!r} already exists.", field="name")
    settings = {
        "base_url": _base_url(base_url),
        "model": _text(model, "model"),
        "api_key_env": _env_name(api_key_env),
        "max_concurrency": _integer(max_concurrency, "max_concurrency"),
        "requests_per_minute": None if requests_per_minute is None else _integer(requests_per_minute, "requests_per_minute"),
        "timeout_seconds": _integer(timeout_seconds, "timeout_seconds"),
        "sampling": _sampling(sampling),
    }
    return ModelVersion.objects.create(name=name, kind=ENDPOINT, metadata={"endpoint": settings})


def _base_url(value) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 500:
        raise InvalidEndpoint("base_url must be an http:// or https:// URL with a host.", field="base_url")
    if parts.username or parts.password:
        raise InvalidEndpoint("base_url must not carry credentials: name the key's environment variable in api_key_env.", field="base_url")
    return value.rstrip("/")


def _text(value, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 300:
        raise InvalidEndpoint(f"{field} must be a non-empty string of at most 300 characters.", field=field)
    return value


def _env_name(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise InvalidEndpoint("api_key_env must be the NAME of an environment variable (letters, digits, _), not the key.", field="api_key_env")
    return value


def _integer(value, field: str) -> int:
    low, high = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidEndpoint(f"{field} must be an integer from {low} to {high}.", field=field)
    return value


def _sampling(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - set(SAMPLING):
        raise InvalidEndpoint(f"sampling must be an object with some of {sorted(SAMPLING)}.", field="sampling")
    for key, number in value.items():
        low, high = SAMPLING[key]
        integral = key == "max_tokens"
        ok = isinstance(number, int if integral else (int, float)) and not isinstance(number, bool) and low <= number <= high
        if not ok or (not integral and number == 0):
            raise InvalidEndpoint(f"sampling.{key} must be a number in {'[' if integral else '('}{low}, {high}].", field=f"sampling.{key}")
    return dict(value)


def endpoint_settings(version: ModelVersion) -> dict:
    return version.metadata.get("endpoint") or {}


def serving_endpoint(version: ModelVersion) -> ModelVersion | None:
    """The endpoint a version generates through: itself if it is one, the one named in served_by, else None."""
    if version.kind == ENDPOINT:
        return version
    served_by = version.metadata.get("served_by")
    if not served_by:
        return None
    endpoint = ModelVersion.objects.filter(name=served_by, kind=ENDPOINT).first()
    if endpoint is None:
        raise RegistryError(f"model {version.name!r} is served by {served_by!r}, which is not a registered endpoint.")
    return endpoint


def is_endpoint(name: str) -> bool:
    return ModelVersion.objects.filter(name=name, kind=ENDPOINT).exists()


def sampling_defaults(names: list[str]) -> dict:
    """The default sampling params the named endpoints agree on (a run's own params win over these)."""
    settings = [endpoint_settings(v).get("sampling", {}) for v in ModelVersion.objects.filter(name__in=names, kind=ENDPOINT)]
    if len(settings) != len(set(names)):
        return {}
    return {key: value for key, value in settings[0].items() if all(s.get(key) == value for s in settings)} if settings else {}


def served_model(version: ModelVersion, endpoint: ModelVersion) -> str:
    """The name the server knows `version` by: the endpoint's model, or the policy's own name once its adapter was loaded."""
    return version.metadata.get("served_model") or endpoint_settings(endpoint)["model"]


def client_endpoint(endpoint: ModelVersion, model: str | None = None):
    """The training.endpoint_client.Endpoint to call (for `model`, else the endpoint's), with the key read from the worker's environment now."""
    from training.endpoint_client import Endpoint

    settings = endpoint_settings(endpoint)
    variable, key = settings.get("api_key_env"), None
    if variable:
        key = os.environ.get(variable)
        if not key:
            raise RegistryError(f"endpoint {endpoint.name!r} takes its key from ${variable}, which is not set on this worker.")
    return Endpoint(base_url=settings["base_url"], model=model or settings["model"], api_key=key, max_concurrency=settings["max_concurrency"],
                    requests_per_minute=settings.get("requests_per_minute"), timeout=float(settings.get("timeout_seconds", 120)))


# SERVING A TRAINED POLICY


@transaction.atomic
def set_served_by(policy: ModelVersion, endpoint_name: str | None) -> ModelVersion:
    """Make `policy` generate through the named endpoint (None: back to the worker)."""
    policy = ModelVersion.objects.select_for_update().get(pk=policy.pk)
    if policy.kind == ENDPOINT:
        raise InvalidEndpoint("an endpoint is not served by another endpoint.", field="served_by")
    if endpoint_name is None:
        policy.metadata.pop("served_by", None)
    elif not is_endpoint(endpoint_name):
        raise InvalidEndpoint(f"{endpoint_name!r} is not a registered endpoint.", field="served_by")
    else:
        policy.metadata["served_by"] = endpoint_name
    policy.save(update_fields=["metadata"])
    return policy


def serve_through(policy: ModelVersion, endpoint_name: str) -> ModelVersion:
    """Load the policy's LoRA adapter into the endpoint's running vLLM server and generate through it from now on.

    What a round does with `served_by`: the policy it just trained is served by the team's server
    under its own name (vLLM's runtime LoRA loading; the server reads the adapter from a shared disk).
    """
    from training.endpoint_client import EndpointError, load_lora_adapter

    endpoint = ModelVersion.objects.filter(name=endpoint_name, kind=ENDPOINT).first()
    adapter = policy.metadata.get("adapter_dir")
    if endpoint is None:
        raise RegistryError(f"{endpoint_name!r} is not a registered endpoint.")
    if not adapter:
        raise RegistryError(f"policy {policy.name!r} has no LoRA adapter to load into a server; serve its checkpoint whole instead.")
    try:
        load_lora_adapter(client_endpoint(endpoint), policy.name, str(adapter))
    except EndpointError as exc:
        raise RegistryError(str(exc)) from exc
    policy.metadata.update(served_by=endpoint.name, served_model=policy.name)
    policy.save(update_fields=["metadata"])
    return policy


def serve_commands(version: ModelVersion) -> dict:
    """The shell commands that serve this checkpoint over the OpenAI protocol, with vLLM and with TGI.

    A LoRA policy is served as an adapter over its base (the base from adapter_config.json);
    a full checkpoint is served whole. The served model name is the version's name.
    """
    if version.kind == ENDPOINT:
        raise InvalidEndpoint("an endpoint is already a server.", field="model")
    try:
        return _serve_commands(version)
    except RegistryError as exc:  # no checkpoint (imported responses), or an adapter without its base
        raise InvalidEndpoint(str(exc), field="model") from exc


def serving_of_run(run) -> list[dict]:
    """The serve commands of each policy a run made (for its page): [{"policy", "vllm", "tgi", ...}]."""
    rows = []
    for policy in run.models_made.filter(kind=ModelVersion.Kind.POLICY).exclude(checkpoint_path="").select_related("parent"):
        try:
            rows.append({"policy": policy.name, **serve_commands(policy)})
        except InvalidEndpoint:
            continue
    return rows


def _serve_commands(version: ModelVersion) -> dict:
    path = checkpoint_dir(version)
    adapter = version.metadata.get("adapter_dir")
    name = shlex.quote(version.name)
    if adapter and (Path(adapter) / "adapter_config.json").exists():
        base = shlex.quote(_adapter_base(Path(adapter), version))
        adapter = shlex.quote(str(adapter))
        return {
            "kind": "lora", "served_model": version.name,
            "vllm": f"vllm serve {base} --enable-lora --lora-modules {name}={adapter}",
            "tgi": f"text-generation-launcher --model-id {base} --lora-adapters {name}={adapter}",
        }
    return {
        "kind": "full", "served_model": version.name,
        "vllm": f"vllm serve {shlex.quote(str(path))} --served-model-name {name}",
        "tgi": f"text-generation-launcher --model-id {shlex.quote(str(path))}",
    }


def _adapter_base(adapter: Path, version: ModelVersion) -> str:
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base:
        return str(base)
    if version.parent is not None:
        return str(checkpoint_dir(version.parent))
    raise RegistryError(f"the adapter of {version.name!r} does not say its base model.")
