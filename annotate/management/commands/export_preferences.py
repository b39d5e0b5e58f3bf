"""`manage.py export_preferences SLUG --shape pairs --format jsonl --out PATH [filters]`.

Streams the campaign's preferences to a file in constant memory (`--out -` writes JSONL to
stdout). `--format hf` saves a DatasetDict folder for `datasets.load_from_disk`. With
`--snapshot NAME` the export is frozen as a named snapshot instead (see annotate/snapshots.py).
Run from a shell, it may show real usernames (`--identities real`); snapshots never do.
"""
from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from annotate.core.errors import DomainError
from annotate.exports import export, rows, snapshots
from annotate.exports.options import FLAGGED, FORMATS, SHAPES, parse_export
from annotate.models import Campaign


class Command(BaseCommand):
    help = "Export a campaign's preferences (pairs, rankings or tasks) as JSONL, gzip, Parquet or a Hugging Face dataset."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="The campaign.")
        parser.add_argument("--shape", default="pairs", help=f"One of {', '.join(SHAPES)} (default pairs).")
        parser.add_argument("--format", default="jsonl", help=f"One of {', '.join(FORMATS)} (default jsonl).")
        out = parser.add_mutually_exclusive_group(required=True)
        out.add_argument("--out", help="File to write (a folder for --format hf); - for stdout (jsonl only).")
        out.add_argument("--snapshot", metavar="NAME", help="Freeze the export as a snapshot with this name.")
        parser.add_argument("--text", action="store_true", help="Pairs as plain text instead of chat messages.")
        parser.add_argument("--identities", default="pseudonymous", help="pseudonymous (default) or real (usernames).")
        parser.add_argument("--test-fraction", help="hf: share of prompts in the test split (default 0.1).")
        parser.add_argument("--seed", help="hf: seed of the prompt split (default 0).")
        parser.add_argument("--since", help="Judgements created at or after this ISO date or datetime.")
        parser.add_argument("--until", help="Judgements created before this ISO date or datetime.")
        parser.add_argument("--models", help="Comma-separated model versions: tasks with a response from one of them.")
        parser.add_argument("--round", help="Comma-separated RLHF rounds: tasks with a response from one of them.")
        parser.add_argument("--min-gold-accuracy", help="Only labelers whose gold accuracy is at least this.")
        parser.add_argument("--min-agreement", help="Only tasks whose judgements agree at least this much.")
        parser.add_argument("--flagged", help=f"One of {', '.join(FLAGGED)} (default include).")
        parser.add_argument("--include-paused", action="store_true", help="Keep judgements of paused labelers.")
        parser.add_argument("--include-gold", action="store_true", help="Keep judgements of gold tasks.")
        parser.add_argument("--exclude-surplus", action="store_true", help="Leave out surplus judgements.")

    def handle(self, slug, **opts):
        campaign = Campaign.objects.filter(slug=slug).first()
        if campaign is None:
            raise CommandError(f"no campaign {slug!r}.")
        try:
            options, filters = parse_export(_params(opts))
            if opts["snapshot"]:
                snapshot = snapshots.create_snapshot(campaign, opts["snapshot"], options, filters)
                self.stderr.write(f"snapshot {snapshot.name} v{snapshot.version}: {snapshot.path} sha256 {snapshot.content_hash} {json.dumps(snapshot.row_counts)}")
                return
            if opts["out"] == "-":
                if options.format != "jsonl":
                    raise CommandError("--out - writes jsonl only.")
                stats = rows.ExportStats()
                for chunk in export.stream_export(campaign, options, filters, stats):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            else:
                stats = export.write_export(campaign, options, filters, opts["out"], zip_hf=False)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"{options.shape} as {options.format}: {json.dumps(stats.as_dict())}")


def _params(opts: dict) -> dict:
    """The command line as the parameters the API takes (unset ones left out)."""
    params = {
        "shape": opts["shape"], "format": opts["format"], "identities": opts["identities"],
        "test_fraction": opts["test_fraction"], "seed": opts["seed"], "since": opts["since"], "until": opts["until"],
        "models": opts["models"], "round": opts["round"], "min_gold_accuracy": opts["min_gold_accuracy"],
        "min_agreement": opts["min_agreement"], "flagged": opts["flagged"],
    }
    params = {key: value for key, value in params.items() if value is not None}
    for flag, key, value in (("text", "text", True), ("include_paused", "include_paused", True), ("include_gold", "include_gold", True), ("exclude_surplus", "include_surplus", False)):
        if opts[flag]:
            params[key] = value
    return params
