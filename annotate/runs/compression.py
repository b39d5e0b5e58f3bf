"""The optimisation job (kind `optimize`): merge, quantise or prune a policy, measure the cost, register the results.

    start_run("optimize", campaign=c, params={"model": "helpful-ppo-r1-7", "methods": ["int8", "prune"], "sparsity": 0.5})

Params: model (a policy or base version), methods (merge | int8 | prune | bnb8 | bnb4), sparsity
(prune, in (0, 1)), structured (prune whole MLP channels), reward_model (default: the campaign's
latest), limit (prompts measured on), max_new_tokens, seed.

The figures (training.optimize.compare) are measured on the campaign's newest `limit` prompts
(the training jobs take theirs from the front) and on the response pairs of its newest tasks.
Each result is registered only once every method has run and been measured (a failure
registers nothing): a ModelVersion of the source's kind and round, parent = the source, with
metadata {method, optimization, figures, source_figures, optimized_in}. It has no "campaign"
key on purpose: the campaign's current policy and its rounds table stay the trained policies.
The run's result holds the comparison table (`rows`), which the comparison page and API show.
"""
from __future__ import annotations

import math
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register
from annotate.jobs.params import flag, integer
from annotate.models import Campaign, ModelVersion, Run, TaskResponse
from annotate.runs import registry
from annotate.runs.registry import latest_reward_model

METHODS = ("merge", "int8", "prune", "bnb8", "bnb4")
GPU_METHODS = ("bnb8", "bnb4")
QUANTIZED = ("int8", "bnb8", "bnb4")
ALLOWED = {"model", "methods", "sparsity", "structured", "reward_model", "limit", "max_new_tokens", "seed"}
FIGURES = ("size_mb", "load_s", "tokens_per_s", "tokens_per_cpu_s", "perplexity", "reward", "agreement")


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    """Checked, complete params; InvalidParams names the first bad field."""
    if campaign is None:
        raise InvalidParams("an optimize run belongs to a campaign (its prompts measure the cost).", field="campaign")
    if unknown := sorted(set(params) - ALLOWED):
        raise InvalidParams(f"unknown params {unknown}; allowed: {sorted(ALLOWED)}.", field=unknown[0])
    source = _source(campaign, params.get("model"))
    clean = {
        "model": params["model"],
        "methods": _methods(params.get("methods"), source),
        "sparsity": _sparsity(params.get("sparsity", 0.5)),
        "structured": flag(params, "structured", False),
        "limit": integer(params, "limit", 16, 1, 1000),
        "max_new_tokens": integer(params, "max_new_tokens", 48, 1, 1024),
        "seed": integer(params, "seed", 0, 0, 2**31 - 1),
    }
    reward = params.get("reward_model") or getattr(latest_reward_model(campaign), "name", None)
    if reward is not None:
        registry.reward_model_param(campaign, reward)
    clean["reward_model"] = reward
    return clean


def _source(campaign: Campaign, name) -> ModelVersion | None:
    """The version to optimise (None: the default base, not converted yet); InvalidParams on `model` otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidParams("model must name a registered policy or base model.", field="model")
    version = registry.campaign_model(campaign, name, "model")
    if version is None and name == registry.DEFAULT_BASE_NAME:
        return None
    if version is None:
        raise InvalidParams(f"unknown model {name!r}.", field="model")
    if version.kind not in (ModelVersion.Kind.POLICY, ModelVersion.Kind.BASE):
        raise InvalidParams(f"model {name!r} is a {version.kind} model; only a policy or a base model can be optimised.", field="model")
    if not version.checkpoint_path:
        raise InvalidParams(f"model {name!r} has no checkpoint (its responses were imported).", field="model")
    if version.metadata.get("method") in QUANTIZED:
        raise InvalidParams(f"model {name!r} is already quantised ({version.metadata['method']}); optimise its source.", field="model")
    return version


def _methods(methods, source: ModelVersion | None) -> list[str]:
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods) or len(set(methods)) < len(methods):
        raise InvalidParams(f"methods must be a non-empty list of distinct methods from {list(METHODS)}.", field="methods")
    if unknown := [m for m in methods if m not in METHODS]:
        raise InvalidParams(f"unknown methods {unknown}; allowed: {list(METHODS)}.", field="methods")
    for method in methods:
        if method in GPU_METHODS and not _gpu_workers():
            bits = 4 if method == "bnb4" else 8
            raise InvalidParams(f"{method} (bitsandbytes {bits}-bit) needs a CUDA GPU, and this deployment's model work runs on the CPU "
                                "(no GPU here and ML_QUEUE is not 'gpu'); use int8 on the CPU.", field="methods")
    if "merge" in methods and (source is None or adapter_of(source) is None):
        raise InvalidParams("merge needs a policy trained with LoRA (its adapter beside the checkpoint); this model has none.", field="methods")
    return methods


def _sparsity(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InvalidParams(f"sparsity must be a number strictly between 0 and 1, got {value!r}.", field="sparsity")
    return float(value)


def _gpu_workers() -> bool:
    """Model work runs where bitsandbytes can: a GPU queue is configured, or this machine has CUDA."""
    if settings.ML_QUEUE == "gpu":
        return True
    import torch

    return torch.cuda.is_available()


def adapter_of(version: ModelVersion) -> Path | None:
    """The LoRA adapter a policy was trained with: metadata["adapter_dir"], a registered adapter itself, or adapter/ beside its checkpoint."""
    candidates = [version.metadata.get("adapter_dir")]
    if version.checkpoint_path:  # stored_dir, not checkpoint_dir: that would fold a registered adapter into its base
        candidates += [registry.stored_dir(version), registry.stored_dir(version).parent / "adapter"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "adapter_config.json").is_file():
            return Path(candidate)
    return None


# ---------------------------------------------------------------- the run


def label(method: str, params: dict) -> str:
    """The short name of one result: merged, int8, pruned50, pruned50-structured, bnb4 ..."""
    if method == "merge":
        return "merged"
    if method == "prune":
        return f"pruned{round(params['sparsity'] * 100)}" + ("-structured" if params["structured"] else "")
    return method


def run_optimize(ctx: RunContext) -> dict:
    p = ctx.params
    try:
        source = registry.resolve_for_generation(p["model"])
        source_dir = registry.checkpoint_dir(source)
    except registry.RegistryError as exc:
        raise RunFailed(str(exc)) from exc
    steps = len(p["methods"]) * 2 + 1  # optimise each, then measure the source and each
    results = optimise_all(ctx, source, source_dir, steps)
    figures = measure_all(ctx, source_dir, {name: path for name, (_, path, _) in results.items()}, steps)
    return register_results(ctx.run, source, results, figures, p)


def optimise_all(ctx: RunContext, source: ModelVersion, source_dir: Path, steps: int) -> dict[str, tuple[str, Path, dict]]:
    """Write each method's checkpoint under the run's directory; {label: (method, path, details)}."""
    from training.checkpoints import CheckpointError
    from training.optimize import OptimizationError, OptimizeConfig, optimize

    p = ctx.params
    out = Path(settings.ARTIFACTS_DIR) / "runs" / str(ctx.run.pk) / "optimize"
    results = {}
    for i, method in enumerate(p["methods"]):
        ctx.check_cancelled()
        name = label(method, p)
        ctx.progress(i / steps, f"{name}: optimising")
        adapter = adapter_of(source) if method == "merge" else None
        config = OptimizeConfig(method=method, sparsity=p["sparsity"], structured=p["structured"], adapter_dir=str(adapter) if adapter else None)
        try:
            details = optimize(source_dir, out / name, config)
        except (OptimizationError, CheckpointError) as exc:
            raise RunFailed(f"{name}: {exc}") from exc
        ctx.log(f"{name}: {details}")
        ctx.artifact(name, out / name)
        results[name] = (method, out / name, details)
    return results


def measure_all(ctx: RunContext, source_dir: Path, candidates: dict[str, Path], steps: int) -> dict[str, dict]:
    """The source's and each candidate's figures on the campaign's newest prompts and pairs."""
    from training.checkpoints import CheckpointError
    from training.optimize import MeasureConfig, compare

    p = ctx.params
    ctx.check_cancelled()
    prompts, pairs = measurement_data(ctx.campaign, p["limit"])
    if not prompts:
        raise RunFailed("the campaign has no prompts to measure on.")
    reward = ModelVersion.objects.get(name=p["reward_model"]) if p["reward_model"] else None
    device = "cuda" if set(p["methods"]) & set(GPU_METHODS) else "cpu"  # int8 is a CPU method; bitsandbytes a GPU one
    ctx.log(f"measuring on {len(prompts)} prompts and {len(pairs)} pairs ({device})")
    done = iter(range(len(candidates), steps))
    try:
        return compare(
            source_dir, candidates, prompts, pairs, MeasureConfig(max_new_tokens=p["max_new_tokens"], seed=p["seed"], device=device),
            reward_model=registry.checkpoint_dir(reward) if reward else None,
            on_model=lambda name: ctx.progress(next(done) / steps, f"measuring {name}"),
        )
    except CheckpointError as exc:
        raise RunFailed(f"an optimised model does not load: {exc}") from exc


def measurement_data(campaign: Campaign, limit: int):
    """(prompts, pairs): the newest `limit` prompts' messages, and (messages, a, b) from the newest tasks' first two responses."""
    prompts = list(campaign.prompts.order_by("-id").values_list("messages", flat=True)[:limit])[::-1]
    slots = (TaskResponse.objects.filter(task__campaign=campaign, task__is_gold=False, position__lt=2)
             .order_by("-task_id", "position").values_list("task_id", "response__prompt__messages", "response__text")[: 2 * limit])
    by_task: dict[int, list] = {}
    for task_id, messages, text in slots:
        by_task.setdefault(task_id, [messages]).append(text)
    pairs = [(entry[0], entry[1], entry[2]) for entry in by_task.values() if len(entry) == 3]
    return prompts, pairs


@transaction.atomic
def register_results(run: Run, source: ModelVersion, results: dict, figures: dict, p: dict) -> dict:
    """Register every optimised checkpoint with its lineage and figures; the run's result (comparison table)."""
    rows = [{"model": source.name, "id": source.pk, "method": "source", **_rounded(figures["source"])}]
    for name, (method, path, details) in results.items():
        version = registry.register(
            _free_name(f"{source.name}-{name}", run), source.kind, path, parent=source, run=run, round=source.round,
            metadata={"method": method, "label": name, "optimization": {**details, "sparsity_asked": p["sparsity"] if method == "prune" else None},
                      "figures": _rounded(figures[name]), "source_figures": _rounded(figures["source"]), "optimized_in": run.campaign.slug if run.campaign else None},
        )
        rows.append({"model": version.name, "id": version.pk, "method": method, **_rounded(figures[name])})
    return {"source": source.name, "source_id": source.pk, "models": [r["model"] for r in rows[1:]], "rows": rows,
            "figures": list(FIGURES)}


def _free_name(name: str, run: Run) -> str:
    return name if not ModelVersion.objects.filter(name=name).exists() else f"{name}-run{run.pk}"


def _rounded(figures: dict) -> dict:
    """Floats to 4 decimals, and None for a non-finite one (JSON has no NaN)."""
    return {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in figures.items()}


# ---------------------------------------------------------------- reading the comparisons


def comparisons(runs) -> list[dict]:
    """The comparison table of each succeeded optimize run, newest first, with its run and campaign."""
    return [{"run": run.pk, "campaign": run.campaign.slug if run.campaign else None, "created_at": run.created_at.isoformat(),
             "source": run.result["source"], "source_id": run.result["source_id"], "rows": run.result["rows"]}
            for run in runs.filter(kind="optimize", status=Run.Status.SUCCEEDED).select_related("campaign").order_by("-created_at")]


def runs_comparing(version: ModelVersion):
    """The optimize runs that show `version`: those that optimised it, or the one that made it."""
    if "optimization" in version.metadata and version.run_id:
        return Run.objects.filter(pk=version.run_id)
    return Run.objects.filter(kind="optimize", models_made__parent=version).distinct()


register("optimize", validate_params, run_optimize)
