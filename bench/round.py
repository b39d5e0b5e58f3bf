"""One RLHF round end to end on this machine, each phase timed: seed generation → simulated labeling →
round (reward model → policy → held-out evaluation → head-to-head generation).

Simulated labelers prefer the shorter of two responses (10% of answers at random), a rule a reward
model can learn and a policy can follow. The round runs in this process (`start_run(here=True)`),
with the round's default preset (auto: cpu on a machine without CUDA) unless --preset names one. The phase times come from the round's own result.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/arbiter_bench .venv/bin/python -m bench.round            # SmolLM2-135M
    .venv/bin/python -m bench.round --tiny --prompts 24                                                      # a tiny random model
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from annotate.campaigns.imports.batches import import_prompts  # noqa: E402
from annotate.jobs import engine  # noqa: E402
from annotate.labeling import assignment, judgements  # noqa: E402
from annotate.labeling.validation import task_response_ids  # noqa: E402
from annotate.models import Campaign, Membership, ModelVersion, Response, Run, RunMetric  # noqa: E402
from annotate.runs.registry import DEFAULT_BASE_NAME, ensure_default_base  # noqa: E402

TOPICS = "rivers stars bread music winter trains bees paper clocks salt gardens bridges".split()


def run_here(kind: str, campaign: Campaign, params: dict) -> tuple[Run, float]:
    start = time.perf_counter()
    run = engine.start_run(kind, campaign=campaign, params=params, here=True)
    engine.execute_run.call(run.pk)
    run.refresh_from_db()
    if run.status != Run.Status.SUCCEEDED:
        raise SystemExit(f"{kind} run {run.pk} {run.status}: {run.error}")
    return run, time.perf_counter() - start


def label(campaign: Campaign, labeler, rng: random.Random) -> int:
    """Shorter response first; 10% of answers at random."""
    count = 0
    while (lease := assignment.next_task_for(labeler, campaign)) is not None:
        texts = dict(Response.objects.filter(pk__in=task_response_ids(lease.task)).values_list("id", "text"))
        ids = sorted(texts, key=lambda r: (len(texts[r].split()), r))
        if rng.random() < 0.1:
            rng.shuffle(ids)
        judgements.submit(labeler, lease.task, [[rid] for rid in ids])
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2-135M-Instruct")
    parser.add_argument("--preset", default=None, help="auto (the default), cpu or gpu")
    parser.add_argument("--seed-tokens", type=int, default=48)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    settings.ARTIFACTS_DIR = Path(tempfile.mkdtemp(prefix="bench-round-"))
    from django.contrib.auth import get_user_model

    slug = f"bench-round-{int(time.time())}"
    campaign = Campaign.objects.create(name=slug, slug=slug, task_type="pairwise", responses_per_task=2, overlap=1)
    if args.tiny:
        from training.models import build_tiny_model

        path = build_tiny_model(settings.ARTIFACTS_DIR / "tiny", seed=0)
        base = ModelVersion.objects.create(name=f"{slug}-tiny", kind="policy", checkpoint_path=str(path), round=0, metadata={"campaign": slug})
    else:
        base = ensure_default_base()
    import_prompts(campaign, [{"external_id": f"q{i}", "text": f"In one or two sentences, tell me something about {TOPICS[i % len(TOPICS)]} ({i})."}
                              for i in range(args.prompts)])
    _, seed_s = run_here("generate", campaign, {"models": [base.name], "n_per_prompt": 2, "max_new_tokens": args.seed_tokens})
    labeler = get_user_model().objects.create_user(f"{slug}-sim")
    Membership.objects.create(campaign=campaign, user=labeler, role="labeler")
    start = time.perf_counter()
    labelled = label(campaign, labeler, random.Random(0))
    label_s = time.perf_counter() - start
    reward_params = {} if base.name == DEFAULT_BASE_NAME else {"base_model": base.name}
    round_run, round_s = run_here("round", campaign, {"reward": reward_params, **({"preset": args.preset} if args.preset else {})})
    scores = list(RunMetric.objects.filter(run=round_run, name="policy/objective/scores").order_by("step").values_list("value", flat=True))
    print(f"model: {'tiny random' if args.tiny else 'SmolLM2-135M-Instruct'}; {args.prompts} prompts; torch threads {__import__('torch').get_num_threads()}")
    print(f"seed generation ({2 * args.prompts} responses, {args.seed_tokens} tokens): {seed_s:.1f} s")
    print(f"simulated labeling ({labelled} tasks): {label_s:.1f} s")
    for phase, seconds in round_run.result["seconds"].items():
        print(f"round / {phase}: {seconds:.1f} s")
    print(f"round total: {round_s:.1f} s (preset {round_run.result['preset']})")
    if scores:
        print(f"PPO mean reward by iteration: {', '.join(f'{s:.3f}' for s in scores)}")
    print(f"evaluation: {round_run.result.get('evaluation')}")


if __name__ == "__main__":
    main()
