"""Scoring responses with a registered reward model (loaded once per process, kept for reuse)."""
from __future__ import annotations

from functools import lru_cache
from threading import Lock

from annotate.models import ModelVersion
from annotate.runs.registry import RegistryError, checkpoint_dir

_lock = Lock()


@lru_cache(maxsize=2)
def _load(path: str, mtime: float):
    from training.reward_scoring import load_reward_model

    return load_reward_model(path)


def score_responses(version: ModelVersion, prompt_messages: list[dict], responses: list[str], *, context: list[dict] | None = None) -> list[float]:
    """Rewards of `responses` to the prompt (with its context passages, if given), in the format the reward model was trained on."""
    from training.preferences import chat_with_context
    from training.reward_scoring import score

    if version.kind != ModelVersion.Kind.REWARD:
        raise RegistryError(f"model {version.name!r} is a {version.kind} model, not a reward model.")
    path = checkpoint_dir(version)
    config = path / "config.json"
    with _lock:  # one forward pass at a time per process: the model is shared
        model, tokenizer = _load(str(path), config.stat().st_mtime if config.exists() else 0.0)
        return score(model, tokenizer, chat_with_context(prompt_messages, context), responses)
