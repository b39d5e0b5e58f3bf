"""A generation run's side of an endpoint: prompts (with their context passages) out, completions in.

`EndpointSource` turns the run's prompt rows into chat requests, yields completions in batches
shaped like the in-process generator's (so the generation job stores them and builds tasks the
same way), and keeps every prompt's failure, which the run reports (`failures`) and writes in
full to its `failures.jsonl` artifact. The key is read from the worker's environment by
`client_endpoint` and goes nowhere else.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from annotate.jobs.engine import RunContext
from annotate.models import ModelVersion, Prompt
from annotate.runs.endpoints import client_endpoint, endpoint_settings, served_model

SHOWN_FAILURES = 20  # in the run's result; all of them are in the artifact


@dataclass(frozen=True)
class EndpointCompletion:
    """One response from the server, shaped like training.generate.Completion for the generation job."""

    prompt_index: int
    sample_index: int
    text: str
    finish_reason: str | None
    num_tokens: int | None = None

    @property
    def finished_with_eos(self) -> bool:
        return self.finish_reason == "stop"


class EndpointSource:
    """Completions for `version` (a model served by `endpoint`) to the run's prompts, with each prompt's failures kept."""

    def __init__(self, ctx: RunContext, version: ModelVersion, endpoint: ModelVersion, prompt_rows, params: dict, n_per_prompt: int):
        from training.endpoint_client import SamplingConfig

        self.ctx, self.version, self.endpoint, self.prompt_rows = ctx, version, endpoint, prompt_rows
        self.sampling = SamplingConfig(temperature=params["temperature"], top_p=params["top_p"], max_tokens=params["max_new_tokens"],
                                       n_per_prompt=n_per_prompt, seed=params["seed"])
        served = endpoint_settings(endpoint)
        # what each Response keeps: where it came from and how it was sampled (never the key or its variable's value)
        self.generation_params = {"endpoint": endpoint.name, "base_url": served["base_url"], "served_model": served_model(version, endpoint),
                                  **self.sampling.to_dict()}
        self.failures: dict[int, str] = {}

    def batches(self) -> Iterator[list[EndpointCompletion]]:
        from training.endpoint_client import generate_from_endpoint

        client = client_endpoint(self.endpoint, self.generation_params["served_model"])  # RegistryError: the key's variable is unset
        for batch in generate_from_endpoint(client, self._chats(), self.sampling, should_stop=self.ctx.should_stop):
            completions: list[EndpointCompletion] = []
            for result in batch:
                if result.error:
                    self.failures[result.prompt_index] = result.error
                completions.extend(EndpointCompletion(s.prompt_index, s.sample_index, s.text, s.finish_reason) for s in result.samples)
            if completions:
                yield completions

    def _chats(self) -> list[list[dict]]:
        return [chat for _, chat in self.prompt_rows]  # rendered with their context passages (generation.prompt_rows_for)

    def report(self) -> dict:
        """How many prompts failed and why (the commonest reasons, a few examples); all of them go to an artifact."""
        if not self.failures:
            return {}
        external = dict(Prompt.objects.filter(id__in=[self.prompt_rows[i][0] for i in self.failures]).values_list("id", "external_id"))
        rows = [{"prompt": external[self.prompt_rows[i][0]], "model": self.version.name, "error": why} for i, why in sorted(self.failures.items())]
        path = Path(settings.ARTIFACTS_DIR) / "runs" / str(self.ctx.run.pk) / f"failures-{self.version.pk}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        self.ctx.artifact(f"failures:{self.version.name}", str(path))
        reasons = Counter(_reason(row["error"]) for row in rows)
        self.ctx.log(f"{self.version.name}: {len(rows)} of {len(self.prompt_rows)} prompts failed: {dict(reasons.most_common(5))}")
        return {"failed_prompts": len(rows), "failure_reasons": dict(reasons.most_common(10)), "failures": rows[:SHOWN_FAILURES]}


def _reason(error: str) -> str:
    """The kind of failure, for counting: the text before the first colon ("HTTP 500 after 4 retries", "malformed answer")."""
    return error.split(":", 1)[0][:80]
