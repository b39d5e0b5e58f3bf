"""Snapshots: an export frozen under a name, with a version, a content hash and row counts.

    snapshot = create_snapshot(campaign, "v1-clean", options, filters, user=rita)

The file lives at ARTIFACTS_DIR/snapshots/<campaign>/v<version>-<name><ext> and is never
rewritten: the export goes to a temporary file first, the row is inserted under a lock on the
campaign (versions 1, 2, ... in order of creation), and only then is the file linked into
place, which fails rather than replace anything. A name already taken is a 409.
Snapshots are always pseudonymous: they outlive the request that made them.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Max

from annotate.core.errors import DomainError
from annotate.exports.export import write_export
from annotate.exports.options import EXTENSIONS, ExportFilters, ExportOptions, InvalidExport
from annotate.models import Campaign, Snapshot


class SnapshotExists(DomainError):
    status = 409
    code = "snapshot_exists"


def create_snapshot(campaign: Campaign, name: str, options: ExportOptions, filters: ExportFilters, *, user=None) -> Snapshot:
    """Export, hash and record a snapshot. Raises SnapshotExists if the name is taken (nothing is written then)."""
    check_new_name(campaign, name)
    if options.identities != "pseudonymous":
        raise InvalidExport("snapshots are always pseudonymous.", field="identities", allowed=["pseudonymous"])
    folder = Path(settings.ARTIFACTS_DIR) / "snapshots" / campaign.slug
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.{uuid.uuid4().hex}.partial"
    try:
        stats = write_export(campaign, options, filters, partial)
        return _record(campaign, name, options, filters, partial, sha256_file(partial), stats.as_dict(), user)
    finally:
        partial.unlink(missing_ok=True)


def _record(campaign, name, options, filters, partial: Path, digest: str, row_counts: dict, user) -> Snapshot:
    try:
        with transaction.atomic():
            Campaign.objects.select_for_update().filter(pk=campaign.pk).first()  # versions in order of creation
            version = (Snapshot.objects.filter(campaign=campaign).aggregate(v=Max("version"))["v"] or 0) + 1
            relative = Path("snapshots") / campaign.slug / f"v{version}-{name}{EXTENSIONS[options.format]}"
            snapshot = Snapshot.objects.create(
                campaign=campaign, name=name, version=version, shape=options.shape, format=options.format,
                filters=filters.as_dict() | options.extras(), path=str(relative), content_hash=digest,
                row_counts=row_counts, created_by=user,
            )
            try:
                os.link(partial, Path(settings.ARTIFACTS_DIR) / relative)  # never replaces a file
            except FileExistsError:
                raise SnapshotExists(f"a file is already in the way at {relative}; nothing was overwritten.", field="name") from None
    except IntegrityError:  # a concurrent request took the name
        raise SnapshotExists(f"campaign {campaign.slug} already has a snapshot named {name!r}.", field="name") from None
    return snapshot


def check_new_name(campaign: Campaign, name) -> None:
    """A DomainError for a malformed name, SnapshotExists for a taken one."""
    try:
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise ValidationError("bad length")
        validate_slug(name)
    except ValidationError:
        raise DomainError("a snapshot name is 1 to 100 letters, digits, hyphens or underscores.", field="name") from None
    if Snapshot.objects.filter(campaign=campaign, name=name).exists():
        raise SnapshotExists(f"campaign {campaign.slug} already has a snapshot named {name!r}.", field="name")


def snapshot_file(snapshot: Snapshot) -> Path:
    return Path(settings.ARTIFACTS_DIR) / snapshot.path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()
