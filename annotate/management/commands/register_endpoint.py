"""`manage.py register_endpoint NAME --endpoint BASE_URL --endpoint-model MODEL [--api-key-env VAR]`: register an OpenAI-compatible server.

This is the `--endpoint` form of `register_model` (issue 16), kept in its own command until the
two are folded together; the key stays in the workers' environment, only its variable's NAME is stored.
"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotate.core.errors import DomainError
from annotate.runs.endpoints import register_endpoint


class Command(BaseCommand):
    help = "Register a vLLM/TGI/SGLang server or a hosted OpenAI-compatible API as a model version of kind endpoint."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--endpoint", required=True, metavar="BASE_URL", help="e.g. http://gpu-box:8000/v1")
        parser.add_argument("--endpoint-model", required=True, metavar="MODEL", help="the served model name")
        parser.add_argument("--api-key-env", metavar="VAR", help="NAME of the workers' environment variable holding the key")
        parser.add_argument("--max-concurrency", type=int, default=8)
        parser.add_argument("--requests-per-minute", type=int)
        parser.add_argument("--timeout-seconds", type=int, default=120)
        parser.add_argument("--sampling", default="{}", help='JSON defaults: {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256}')

    def handle(self, name, **options):
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
