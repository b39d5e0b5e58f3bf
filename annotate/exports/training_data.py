"""Stored judgements as plain `training.preferences.RankedJudgement`s (the web half of the contract).

Training runs read their judgements from a snapshot (`annotate.exports.snapshots`): one named in the
run's params, or one the run freezes itself (`run-<id>-<what>`), so every reward model and
policy records exactly the data it was trained on and the file can be downloaded later.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from annotate.campaigns.evaluation import evaluation_prompt_ids
from annotate.exports.options import ExportFilters, ExportOptions
from annotate.exports.snapshots import create_snapshot, snapshot_file
from annotate.jobs.engine import InvalidParams
from annotate.labeling.gold import paused_labeler_ids
from annotate.models import Campaign, Judgement, Response, Run, Snapshot
from training.preferences import RankedJudgement, chat_with_context

TRAINING_EXPORT = ExportOptions(shape="rankings", format="jsonl")
READABLE_FORMATS = ("jsonl", "jsonl.gz", "parquet")


def ranked_judgements(campaign: Campaign, *, since=None) -> list[RankedJudgement]:
    """Every judgement of the campaign's non-gold tasks; paused labelers' marked `excluded`."""
    paused = paused_labeler_ids(campaign)
    judgements = Judgement.objects.filter(task__campaign=campaign, task__is_gold=False).order_by("id")
    if since is not None:
        judgements = judgements.filter(created_at__gt=since)
    rows = list(judgements.values_list("task__prompt_id", "task__prompt__messages", "task__prompt__context", "ranking", "labeler_id"))
    ids = {rid for *_, ranking, _ in rows for group in ranking for rid in group}
    texts = dict(Response.objects.filter(pk__in=ids).values_list("id", "text"))
    return [
        RankedJudgement(
            prompt_id=prompt_id,
            prompt_messages=chat_with_context(messages, context),
            responses={rid: texts[rid] for group in ranking for rid in group},
            ranking=ranking,
            labeler_id=labeler_id,
            excluded=labeler_id in paused,
        )
        for prompt_id, messages, context, ranking, labeler_id in rows
    ]


def training_prompts(campaign: Campaign):
    """The campaign's prompts a policy may train on (all but its evaluation split), in id order."""
    return campaign.prompts.exclude(pk__in=evaluation_prompt_ids(campaign)).order_by("id")


def evaluation_prompts(campaign: Campaign):
    """The campaign's evaluation prompts, in id order."""
    return campaign.prompts.filter(pk__in=evaluation_prompt_ids(campaign)).order_by("id")


def prompt_chats(prompts) -> list[list[dict]]:
    """The prompts of a Prompt queryset, in its order, as models see them (context passages included)."""
    return [chat_with_context(messages, context) for messages, context in prompts.values_list("messages", "context")]


def snapshot_param(campaign: Campaign, params: dict) -> str | None:
    """The `snapshot` a run should train on, checked: one of the campaign's rankings snapshots, or None (freeze one)."""
    name = params.get("snapshot")
    if name is None:
        return None
    snapshot = Snapshot.objects.filter(campaign=campaign, name=name).first() if isinstance(name, str) else None
    if snapshot is None:
        raise InvalidParams(f"campaign {campaign.slug} has no snapshot named {name!r}.", field="snapshot")
    if snapshot.shape != "rankings" or snapshot.format not in READABLE_FORMATS:
        raise InvalidParams(
            f"snapshot {name!r} is {snapshot.shape} as {snapshot.format}; training reads rankings as {', '.join(READABLE_FORMATS)}.",
            field="snapshot",
        )
    return name


def training_snapshot(run: Run, what: str, name: str | None, *, include_paused: bool = False) -> Snapshot:
    """The named snapshot, or a new one of the campaign's judgements as they are now (`run-<id>-<what>`).

    A new one leaves out the campaign's evaluation prompts: no model trains on them.
    """
    if name is not None:
        return Snapshot.objects.get(campaign=run.campaign, name=name)
    if run.campaign is None:
        raise ValueError(f"run {run.pk} ({run.kind}) has no campaign to snapshot")
    filters = ExportFilters(include_paused=include_paused, include_evaluation=False)
    return create_snapshot(run.campaign, f"run-{run.pk}-{what}", TRAINING_EXPORT, filters, user=run.created_by)


def snapshot_judgements(snapshot: Snapshot) -> list[RankedJudgement]:
    """The judgements in a rankings snapshot, as training reads them (labelers are the snapshot's pseudonyms)."""
    return [
        RankedJudgement(
            prompt_id=row["prompt_id"],
            prompt_messages=chat_with_context(row["prompt"], row.get("context")),
            responses={response["id"]: response["text"] for response in row["responses"]},
            ranking=row["ranking"],
            labeler_id=row["labeler"],
            excluded=False,  # the snapshot's filters already chose whom to keep
        )
        for row in _rows(snapshot_file(snapshot), snapshot.format)
    ]


def snapshot_record(snapshot: Snapshot) -> dict:
    """What a model's metadata and a run's result say about the data it was trained on."""
    return {"name": snapshot.name, "version": snapshot.version, "content_hash": snapshot.content_hash}


def _rows(path: Path, format: str) -> list[dict]:
    if format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if format == "jsonl.gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
