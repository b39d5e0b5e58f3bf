"""The generation job: sample responses from model versions and put them straight into the queue.

Responses are stored batch by batch and tasks are built as they arrive, so labelers can start
before the job ends. Without `models`, the campaign's current policy generates, and one model's
`n_per_prompt` defaults to the campaign's k, so a default run fills the queue. With
`head_to_head_with`, the new responses and that model's share k-way tasks: ⌈k/2⌉ new and ⌊k/2⌋
of its latest responses to the same prompt, positions shuffled; a prompt with too few of its
responses gets them generated from it in the same run, never skipped. With
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
    current_policy_name,
    generating_model_param,
    resolve_for_generation,
    reward_model_param,
)

if TYPE_CHECKING:
    from training.generate import Completion
from training.preferences import chat_with_context

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
    if "models" in params:
        models = text_list(params, "models", max_items=MAX_MODELS, required=True, what="model names")
    else:  # a default run: the campaign's current policy fills the queue
        models = [current_policy_name(campaign)]
    for name in models:
        generating_model_param(campaign, name, "models")
        if not can_generate(name) and not is_endpoint(name):
            raise InvalidParams(f"model {name!r} is unknown or has no checkpoint to generate with.", field="models")
    served = sampling_defaults(models)  # an endpoint's default sampling params, where the run sets none
    clean = {
        "models": models,
        "n_per_prompt": integer(params, "n_per_prompt", default_per_prompt(campaign, models, params), *LIMITS["n_per_prompt"]),
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
        if not isinstance(baseline, str) or not (can_generate(baseline) or Response.objects.filter(prompt__campaign=campaign, model_version__name=baseline).exists()):
            raise InvalidParams(f"model {baseline!r} has no responses in this campaign and cannot generate any.", field="head_to_head_with")
        new_per_task = new_per_task_of(campaign)
        if clean["n_per_prompt"] % new_per_task:
            raise InvalidParams(f"n_per_prompt must be a multiple of {new_per_task}: each head-to-head task holds that many new responses.",
                                field="n_per_prompt")
    clean["head_to_head_with"] = baseline
    reward_model = params.get("reward_model")
    if reward_model is not None:
        reward_model_param(campaign, reward_model)
    clean["reward_model"] = reward_model
    clean["best_of"] = integer(params, "best_of", 4 if reward_model else 1, 1, 32)
    if clean["best_of"] > 1 and reward_model is None:
        raise InvalidParams("best_of needs a reward_model to pick the best sample.", field="best_of")
    return clean


def new_per_task_of(campaign: Campaign) -> int:
    """New responses in a head-to-head task: ⌈k/2⌉ (the other ⌊k/2⌋ are the baseline's)."""
    return -(-campaign.responses_per_task // 2)


def default_per_prompt(campaign: Campaign, models: list, params: dict) -> int:
    if params.get("head_to_head_with") is not None:
        return new_per_task_of(campaign)
    return campaign.responses_per_task if isinstance(models, list) and len(models) == 1 else 1


def run_generation(ctx: RunContext) -> dict:
    return generate_into_queue(ctx, ctx.params)


def generate_into_queue(ctx: RunContext, params: dict) -> dict:
    """Sample from each model in params["models"], store responses and build tasks batch by batch."""
    from training.checkpoints import CheckpointError
    from training.endpoint_client import EndpointError
    from training.generate import GenerationConfig, generate

    campaign = ctx.campaign
    prompt_rows = prompt_rows_for(campaign, params)
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
    if params["head_to_head_with"]:
        fill_baseline(ctx, campaign, params["head_to_head_with"], prompt_rows, config)
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
            batches = keep_best(batches, keep * best_of, keep, score_fn)
            if params["head_to_head_with"]:  # a task takes ⌈k/2⌉ samples of one prompt: wait for all of a prompt's
                batches = whole_prompts(batches, keep)
            for batch in batches:
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


def prompt_rows_for(campaign: Campaign, params: dict) -> list[tuple[int, list[dict]]]:
    """(prompt id, the chat the model is given: context passages included) for the run's prompts, in id order."""
    prompts = campaign.prompts.order_by("id")
    if params.get("prompts"):
        prompts = prompts.filter(external_id__in=params["prompts"])
    rows = prompts.values_list("id", "messages", "context")[: params.get("limit")]
    return [(prompt_id, chat_with_context(messages, context)) for prompt_id, messages, context in rows]


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
            text=storable(c.text),
            generation_params={**config, "num_tokens": c.num_tokens, "finished_with_eos": c.finished_with_eos, **extra},
        )
        for c, extra in batch
    )
    if baseline:
        return build_head_to_head(campaign, responses, baseline)
    return build_tasks(campaign, {r.prompt_id for r in responses})


def whole_prompts(batches, per_prompt: int):
    """Batches of (completion, extra) regrouped so each yielded batch holds all `per_prompt` samples of its prompts."""
    pending: dict[int, list] = defaultdict(list)
    for batch in batches:
        ready: list = []
        for item in batch:
            samples = pending[item[0].prompt_index]
            samples.append(item)
            if len(samples) == per_prompt:
                ready.extend(pending.pop(item[0].prompt_index))
        if ready:
            yield ready


def latest_responses(prompt_ids, model_name: str, per_prompt: int) -> dict[int, list[int]]:
    """prompt id -> ids of the model's latest `per_prompt` responses to it (fewer where it has fewer)."""
    latest: dict[int, list[int]] = defaultdict(list)
    for prompt_id, response_id in (
        Response.objects.filter(prompt_id__in=set(prompt_ids), model_version__name=model_name).order_by("-id").values_list("prompt_id", "id")
    ):
        if len(latest[prompt_id]) < per_prompt:
            latest[prompt_id].append(response_id)
    return latest


def fill_baseline(ctx: RunContext, campaign: Campaign, baseline: str, prompt_rows, config) -> int:
    """Generate, from `baseline`, the responses a head-to-head task needs on prompts where it has too few (⌊k/2⌋ each)."""
    from dataclasses import replace

    from training.checkpoints import CheckpointError
    from training.generate import generate

    need = campaign.responses_per_task // 2
    have = latest_responses([pid for pid, _ in prompt_rows], baseline, need)
    short = [i for i, (pid, _) in enumerate(prompt_rows) if len(have.get(pid, [])) < need]
    if not short:
        return 0
    try:
        version = resolve_for_generation(baseline)
        path = checkpoint_dir(version)
    except (RegistryError, CheckpointError) as exc:
        raise RunFailed(f"{len(short)} prompts have no response of {baseline!r} to compare against, and it cannot generate: {exc}") from exc
    ctx.log(f"generating {baseline}'s responses for {len(short)} prompts that have fewer than {need}")
    stored = 0
    for missing in sorted({need - len(have.get(prompt_rows[i][0], [])) for i in short}):
        indices = [i for i in short if need - len(have.get(prompt_rows[i][0], [])) == missing]
        sampling = replace(config, n_per_prompt=missing)
        for batch in generate(path, [prompt_rows[i][1] for i in indices], sampling, should_stop=ctx.should_stop):
            Response.objects.bulk_create(
                Response(prompt_id=prompt_rows[indices[c.prompt_index]][0], model_version=version, text=storable(c.text),
                         generation_params={**sampling.to_dict(), "num_tokens": c.num_tokens, "finished_with_eos": c.finished_with_eos})
                for c in batch
            )
            stored += len(batch)
        ctx.check_cancelled()
    return stored


def storable(text: str) -> str:
    """The text with NUL characters (which PostgreSQL text cannot hold; untrained models emit them) as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def build_head_to_head(campaign: Campaign, responses: list[Response], baseline: str) -> int:
    """Tasks of ⌈k/2⌉ new responses to a prompt and the baseline's latest ⌊k/2⌋ to it, positions shuffled.

    On a pairwise campaign: one task per new response, against the baseline's latest response.
    """
    new_per_task, old_per_task = new_per_task_of(campaign), campaign.responses_per_task // 2
    latest = latest_responses([r.prompt_id for r in responses], baseline, old_per_task)
    by_prompt: dict[int, list[int]] = defaultdict(list)
    for r in responses:
        by_prompt[r.prompt_id].append(r.pk)
    groups = [
        (prompt_id, new[i : i + new_per_task] + latest[prompt_id])
        for prompt_id, new in by_prompt.items() if len(latest.get(prompt_id, [])) == old_per_task
        for i in range(0, len(new) - new_per_task + 1, new_per_task)
    ]
    tasks = Task.objects.bulk_create(
        Task(campaign=campaign, prompt_id=prompt_id, judgements_needed=campaign.overlap, remaining=campaign.overlap) for prompt_id, _ in groups
    )
    slots: list[TaskResponse] = []
    for task, (_, ids) in zip(tasks, groups):
        shuffle(ids)
        slots.extend(TaskResponse(task=task, response_id=rid, position=i) for i, rid in enumerate(ids))
    TaskResponse.objects.bulk_create(slots)
    return len(tasks)


register("generate", validate_params, run_generation)
