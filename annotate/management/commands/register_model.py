"""`manage.py register_model NAME PATH --kind base|policy|reward [--chat-template FILE] [--copy] [--base NAME]`."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.models import ModelVersion
from annotate.runs.registry import RegistryError, register_checkpoint


class Command(BaseCommand):
    help = ("Register a transformers checkpoint (a directory under MODEL_ROOTS, a Hugging Face id in the local cache, "
            "or a PEFT adapter over a registered model); it is checked first and nothing is written on failure.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("path")
        parser.add_argument("--kind", required=True, choices=ModelVersion.Kind.values)
        parser.add_argument("--chat-template", type=Path, help="A file holding a Jinja chat template, for a tokenizer without one.")
        parser.add_argument("--copy", action="store_true", help="Copy the weights under ARTIFACTS_DIR (default: link them in place).")
        parser.add_argument("--base", help="For an adapter: the registered model it sits on (default: from adapter_config.json).")

    def handle(self, name, path, kind, chat_template=None, copy=False, base=None, **options):
        template = None
        if chat_template is not None:
            try:
                template = chat_template.read_text()
            except OSError as exc:
                raise CommandError(f"--chat-template: {exc}") from exc
        try:
            version = register_checkpoint(name, path, kind, chat_template=template, copy=copy, base=base)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        meta = version.metadata
        self.stdout.write(f"registered {version.name} (id {version.pk}, {version.kind}): {meta['architecture']}, "
                          f"{meta['parameters']:,} parameters, pad {meta['pad']['token']!r} ({meta['pad']['source']})")
