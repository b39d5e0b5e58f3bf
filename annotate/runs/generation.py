"""The generation job: sample responses from model versions and put them straight into the queue.

Responses are stored batch by batch and tasks are built as they arrive, so labelers can start
before the job ends. With `head_to_head_with`, each new response is paired with the latest
response of that model to the same prompt (new policy against the previous one). With
`reward_model` and `best_of`, each kept response is the best of `best_of` samples by that
reward model's score (guidance without changing the model).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from django.db import transaction

from annotate.campaigns.task_building import build_tasks, shuffle
from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register
from annotate.jobs.params import integer, number, text_list
from annotate.models import Campaign, ModelVersion, Response, Task, TaskResponse
from annotate.runs.endpoint_generation import EndpointCompletion, EndpointSource
from annotate.runs.endpoints import is_endpoint, sampling_defaults, serving_endpoint
from annotate.runs.registry import (
    RegistryError,
    can_generate,
    checkpoint_dir,
    generating_model_param,
    resolve_for_generation,
    reward_model_param,
)

if TYPE_CHECKING:
    from training.generate import Completion

MAX_MODELS, MAX_PROMPTS = 32, 100_000  # list params: a clear 400 rather than a body-sized loop
LIMITS = {"n_per_prompt": (1, 16), "max_new_tokens": (1, 2048), "batch_size": (1, 1024), "limit": (1, 1_000_000)}


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    """Checked, complete params; InvalidParams names the first bad field."""
    if campaign is None:
        raise InvalidParams("a generation run belongs to a campaign.", field="campaign")
    allowed = {"models", "n_per_prompt", "temperature", "top_p", "max_new_tokens", "batch_size", "seed", "limit", "prompts",
               "head_to_head_with", "reward_model", "best_of"}
    if unknown := sorted(set(params) - allowed):
        raise InvalidParams(f"unknown params {unknown}; allowed: {sorted(allowed)}.", field=unknown[0])
    models = text_list(params, "models", max_items=MAX_MODELS, required=True, what="model names")
    for name in models:
        generating_model_param(campaign, name, "models")
        if not can_generate(name) and not is_endpoint(name):
            raise InvalidParams(f"model {name!r} is unknown or has no checkpoint to generate with.", field="models")
    served = sampling_defaults(models)  # an endpoint's default sampling params, where the run sets none
    clean = {
        "models": models,
        "n_per_prompt": integer(params, "n_per_prompt", 1, *LIMITS["n_per_prompt"]),
        "max_new_tokens": integer(params, "max_new_tokens", served.get("max_tokens", 128), *LIMITS["max_new_tokens"]),
        "batch_size": integer(params, "batch_size", None, *LIMITS["batch_size"]),
        "limit": integer(params, "limit", None, *LIMITS["limit"]),
        "seed": integer(params, "seed", 0, 0, 2**31 - 1),
        "temperature": number(params, "temperature", served.get("temperature", 0.7), low=0.0, high=2.0, low_open=True),
        "top_p": number(params, "top_p", served.get("top_p", 1.0), low=0.0, high=1.0, low_open=True),
    }
    clean["prompts"] = text_list(params, "prompts", max_items=MAX_PROMPTS, what="prompt external ids")
    baseline = params.get("head_to_head_with")
    if baseline is not None:
        if campaign.responses_per_task != 2:
            raise InvalidParams("head-to-head pairs need a campaign with 2 responses per task.", field="head_to_head_with")
        if not Response.objects.filter(prompt__campaign=campaign, model_version__name=baseline).exists():
            raise InvalidParams(f"model {baseline!r} has no responses in this campaign to pair against.", field="head_to_head_with")
    clean["head_to_head_with"] = baseline
    reward_model = params.get("reward_model")
    if reward_model is not None:
        reward_model_param(campaign, reward_model)
    clean["reward_model"] = reward_model
    clean["best_of"] = integer(params, "best_of", 4 if reward_model else 1, 1, 32)
    if clean["best_of"] > 1 and reward_model is None:
        raise InvalidParams("best_of needs a reward_model to pick the best sample.", field="best_of")
    return clean


def run_generation(ctx: RunContext) -> dict:
    return generate_into_queue(ctx, ctx.params)


def generate_into_queue(ctx: RunContext, params: dict) -> dict:
    """Sample from each model in params["models"], store responses and build tasks batch by batch."""
    from training.checkpoints import CheckpointError
    from training.endpoint_client import EndpointError
    from training.generate import GenerationConfig, generate

    campaign = ctx.campaign
    prompts = campaign.prompts.order_by("id")
    if params["prompts"]:
        prompts = prompts.filter(external_id__in=params["prompts"])
    prompt_rows = list(prompts.values_list("id", "messages")[: params["limit"]])
    if not prompt_rows:
        raise RunFailed("the campaign has no prompts to generate for.")
    keep, best_of = params["n_per_prompt"], params.get("best_of", 1)
    config = GenerationConfig(
        temperature=params["temperature"], top_p=params["top_p"], max_new_tokens=params["max_new_tokens"],
        n_per_prompt=keep * best_of, batch_size=params["batch_size"], seed=params["seed"],
    )
    total = len(prompt_rows) * keep * len(params["models"])
    score_fn = _reward_scorer(params.get("reward_model"), prompt_rows)
    done, built, failures = 0, 0, {}
    for name in params["models"]:
        try:
            version = resolve_for_generation(name) if not is_endpoint(name) else ModelVersion.objects.get(name=name)
            endpoint = serving_endpoint(version)
            batches: Iterator[list[EndpointCompletion]] | Iterator[list[Completion]]
            if endpoint is not None:  # an OpenAI-compatible server generates (annotate.runs.endpoint_generation)
                source = EndpointSource(ctx, version, endpoint, prompt_rows, params, keep * best_of)
                ctx.log(f"generating with {name} through endpoint {endpoint.name} ({source.generation_params['base_url']})")
                batches, stored_params = source.batches(), source.generation_params
            else:
                path = checkpoint_dir(version)
                ctx.log(f"generating with {name} ({path})")
                batches, stored_params = generate(path, [m for _, m in prompt_rows], config, should_stop=ctx.should_stop), config.to_dict()
            for batch in keep_best(batches, keep * best_of, keep, score_fn):
                built += store_batch(campaign, version, prompt_rows, batch, stored_params, params["head_to_head_with"])
                done += len(batch)
                ctx.progress(done / total, f"{done} of {total} responses")
        except (RegistryError, EndpointError) as exc:
            raise RunFailed(str(exc)) from exc
        except CheckpointError as exc:
            raise RunFailed(f"model {name!r} does not load: {exc}") from exc
        if endpoint is not None and (report := source.report()):
            failures[name] = report
        ctx.check_cancelled()
    ctx.log(f"stored {done} responses, built {built} tasks")
    if failures and not done:
        reasons = "; ".join(f"{name}: {report['failure_reasons']}" for name, report in failures.items())
        raise RunFailed(f"every request failed: {reasons}")
    return {"responses": done, "tasks_built": built, **({"failures": failures} if failures else {})}


def _reward_scorer(name: str | None, prompt_rows):
    """score(prompt_index, texts) with the named reward model, or None."""
    if name is None:
        return None
    from annotate.runs.scoring import score_responses

    version = ModelVersion.objects.get(name=name, kind=ModelVersion.Kind.REWARD)
    return lambda index, texts: score_responses(version, prompt_rows[index][1], texts)


def keep_best(batches, per_prompt: int, keep: int, score_fn):
    """Batches of (completion, extra params); with score_fn, only each prompt's `keep` best of `per_prompt`."""
    if score_fn is None:
        for batch in batches:
            yield [(c, {}) for c in batch]
        return
    pending: dict[int, list] = defaultdict(list)
    for batch in batches:
        ready: list[tuple[object, dict]] = []
        for completion in batch:
            candidates = pending[completion.prompt_index]
            candidates.append(completion)
            if len(candidates) == per_prompt:
                del pending[completion.prompt_index]
                scores = score_fn(completion.prompt_index, [c.text for c in candidates])
                best = sorted(zip(scores, range(len(candidates))), reverse=True)[:keep]
                ready.extend((candidates[i], {"reward_score": score, "best_of": per_prompt}) for score, i in best)
        if ready:
            yield ready


@transaction.atomic
def store_batch(campaign: Campaign, version: ModelVersion, prompt_rows, batch, config: dict, baseline: str | None) -> int:
    """Store one batch of (completion, extra params) and build the tasks they complete; returns tasks built."""
    responses = Response.objects.bulk_create(
        Response(
            prompt_id=prompt_rows[c.prompt_index][0],
            model_version=version,
            text=c.text,
            generation_params={**config, "num_tokens": c.num_tokens, "finished_with_eos": c.finished_with_eos, **extra},
        )
        for c, extra in batch
    )
    if baseline:
        return build_head_to_head(campaign, responses, baseline)
    return build_tasks(campaign, {r.prompt_id for r in responses})


def build_head_to_head(campaign: Campaign, responses: list[Response], baseline: str) -> int:
    """One task per new response, paired with the latest `baseline` response to the same prompt."""
    latest = {}
    for prompt_id, response_id in (
        Response.objects.filter(prompt_id__in={r.prompt_id for r in responses}, model_version__name=baseline).order_by("id").values_list("prompt_id", "id")
    ):
        latest[prompt_id] = response_id
    pairs = [(r.prompt_id, [r.pk, latest[r.prompt_id]]) for r in responses if r.prompt_id in latest]
    tasks = Task.objects.bulk_create(
        Task(campaign=campaign, prompt_id=prompt_id, judgements_needed=campaign.overlap, remaining=campaign.overlap) for prompt_id, _ in pairs
    )
    slots: list[TaskResponse] = []
    for task, (_, ids) in zip(tasks, pairs):
        shuffle(ids)
        slots.extend(TaskResponse(task=task, response_id=rid, position=i) for i, rid in enumerate(ids))
    TaskResponse.objects.bulk_create(slots)
    return len(tasks)


register("generate", validate_params, run_generation)
