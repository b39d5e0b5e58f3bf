"""Register a model version someone brings.

    manage.py register_model NAME PATH --kind base|policy|reward [--chat-template FILE] [--copy] [--base NAME]
    manage.py register_model NAME --endpoint BASE_URL --endpoint-model MODEL [--api-key-env VAR] [...]

The first form registers a transformers checkpoint (a directory under MODEL_ROOTS, a Hugging Face id
in the local cache, or a PEFT adapter over a registered model); it is checked first and nothing is
written on failure. The second registers an OpenAI-compatible server (vLLM, TGI, SGLang, a hosted API):
only the NAME of the workers' environment variable holding its key is stored, never the key.
"""
from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.core.errors import DomainError
from annotate.models import ModelVersion
from annotate.runs.endpoints import register_endpoint
from annotate.runs.registry import RegistryError, register_checkpoint

CHECKPOINT_KINDS = [k for k in ModelVersion.Kind.values if k != ModelVersion.Kind.ENDPOINT]


class Command(BaseCommand):
    help = "Register a transformers checkpoint (NAME PATH --kind ...) or an OpenAI-compatible server (NAME --endpoint URL --endpoint-model M)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("path", nargs="?", help="The checkpoint: a directory under MODEL_ROOTS or a Hugging Face id in the local cache.")
        parser.add_argument("--kind", choices=CHECKPOINT_KINDS, help="What the checkpoint is (required with PATH).")
        parser.add_argument("--chat-template", type=Path, help="A file holding a Jinja chat template, for a tokenizer without one.")
        parser.add_argument("--copy", action="store_true", help="Copy the weights under ARTIFACTS_DIR (default: link them in place).")
        parser.add_argument("--base", help="For an adapter: the registered model it sits on (default: from adapter_config.json).")
        served = parser.add_argument_group("an OpenAI-compatible server instead of a checkpoint")
        served.add_argument("--endpoint", metavar="BASE_URL", help="e.g. http://gpu-box:8000/v1")
        served.add_argument("--endpoint-model", metavar="MODEL", help="the served model name")
        served.add_argument("--api-key-env", metavar="VAR", help="NAME of the workers' environment variable holding the key")
        served.add_argument("--max-concurrency", type=int, default=8)
        served.add_argument("--requests-per-minute", type=int)
        served.add_argument("--timeout-seconds", type=int, default=120)
        served.add_argument("--sampling", default="{}", help='JSON defaults: {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256}')

    def handle(self, name, path=None, **options):
        if options["endpoint"]:
            if path is not None:
                raise CommandError("give either PATH (a checkpoint) or --endpoint (a server), not both.")
            self._register_endpoint(name, options)
        elif path is None or options["kind"] is None:
            raise CommandError("a checkpoint needs PATH and --kind; a server needs --endpoint and --endpoint-model.")
        else:
            self._register_checkpoint(name, path, options)

    def _register_checkpoint(self, name, path, options):
        template = None
        if options["chat_template"] is not None:
            try:
                template = options["chat_template"].read_text()
            except OSError as exc:
                raise CommandError(f"--chat-template: {exc}") from exc
        try:
            version = register_checkpoint(name, path, options["kind"], chat_template=template, copy=options["copy"], base=options["base"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        meta = version.metadata
        self.stdout.write(f"registered {version.name} (id {version.pk}, {version.kind}): {meta['architecture']}, "
                          f"{meta['parameters']:,} parameters, pad {meta['pad']['token']!r} ({meta['pad']['source']})")

    def _register_endpoint(self, name, options):
        if not options["endpoint_model"]:
            raise CommandError("--endpoint needs --endpoint-model (the served model name).")
        try:
            sampling = json.loads(options["sampling"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--sampling is not valid JSON: {exc}") from exc
        try:
            version = register_endpoint(
                name, options["endpoint"], options["endpoint_model"], api_key_env=options["api_key_env"],
                max_concurrency=options["max_concurrency"], requests_per_minute=options["requests_per_minute"],
                timeout_seconds=options["timeout_seconds"], sampling=sampling,
            )
        except DomainError as exc:
            raise CommandError(f"{exc.field}: {exc.message}" if exc.field else exc.message) from exc
        self.stdout.write(f"registered endpoint {version.name} (id {version.pk}): {options['endpoint']} serving {options['endpoint_model']}")
