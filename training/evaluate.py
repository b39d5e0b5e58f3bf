"""Held-out evaluation of a policy against the one it came from, on fixed prompts with a fixed seed.

Both policies answer every evaluation prompt once (the same seed, the same sampling); the reward
model scores both answers in its training format. Figures (Stiennon et al. 2020; Gao et al. 2022):

- reward_mean / previous_reward_mean: mean reward-model score of the new / previous policy's answers;
- rm_win_rate: share of prompts where the reward model scores the new answer higher (ties half);
- kl: an estimate of KL(π_new ‖ π_ref) on the new policy's answers, the previous policy being the
  reference: mean over prompts of the summed per-token k3 estimator (never negative; see `k3`);
- mean_length: mean answer length in tokens; eos_share: share of answers that ended with EOS;
- examples: the first few prompts' answers of both policies with their scores, to read side by side.

Without a reward model (a DPO or SFT job on a campaign that has none yet) the three reward figures
are None; the others need only the two policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from training.generate import GenerationConfig, generate
from training.models import load_causal_lm, load_tokenizer
from training.policy_io import response_logprobs
from training.reward_scoring import load_reward_model, score

Message = dict[str, str]


@dataclass(frozen=True)
class EvaluationConfig:
    """How the evaluation samples (fixed, so two rounds' figures compare)."""

    temperature: float = 0.7
    """Sampling temperature of both policies."""
    max_new_tokens: int = 64
    """Answer length cap."""
    seed: int = 1234
    """Sampling seed: the same prompts get the same random draws in every evaluation."""
    batch_size: int | None = None
    """Generation batch size (None: the generator's default)."""
    examples: int = 4
    """How many prompts' answers (the first ones) are kept as examples."""


@dataclass(frozen=True)
class Evaluation:
    prompts: int
    reward_mean: float | None
    previous_reward_mean: float | None
    kl: float
    mean_length: float
    eos_share: float
    rm_win_rate: float | None
    examples: list[dict]
    """[{prompt_index, new: {text, score}, previous: {text, score}}] for the first `config.examples` prompts."""

    def as_dict(self) -> dict:
        return asdict(self)


def sample_once(model_dir: Path | str, prompts: Sequence[Sequence[Message]], config: EvaluationConfig) -> list:
    """One completion per prompt, in prompt order."""
    settings = GenerationConfig(temperature=config.temperature, max_new_tokens=config.max_new_tokens, n_per_prompt=1,
                                seed=config.seed, batch_size=config.batch_size)
    completions = [c for batch in generate(model_dir, [list(p) for p in prompts], settings) for c in batch]
    return sorted(completions, key=lambda c: c.prompt_index)


def evaluate_policy(policy_dir: Path | str, previous_dir: Path | str, reward_dir: Path | str | None, prompts: Sequence[Sequence[Message]],
                    config: EvaluationConfig | None = None) -> Evaluation:
    """The new policy against the previous one on `prompts` (see the module docstring); reward_dir None: no reward figures."""
    config = config or EvaluationConfig()
    new, old = sample_once(policy_dir, prompts, config), sample_once(previous_dir, prompts, config)
    new_scores, old_scores = _scores(reward_dir, prompts, new, old)
    n = len(prompts)
    scored = reward_dir is not None
    return Evaluation(
        prompts=n,
        reward_mean=sum(new_scores) / n if scored else None,
        previous_reward_mean=sum(old_scores) / n if scored else None,
        kl=sequence_kl(policy_dir, previous_dir, prompts, [c.text for c in new]),
        mean_length=sum(c.num_tokens for c in new) / n,
        eos_share=sum(c.finished_with_eos for c in new) / n,
        rm_win_rate=sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(new_scores, old_scores)) / n if scored else None,
        examples=[{"prompt_index": i, "new": {"text": new[i].text, "score": new_scores[i] if scored else None},
                   "previous": {"text": old[i].text, "score": old_scores[i] if scored else None}} for i in range(min(config.examples, n))],
    )


def _scores(reward_dir: Path | str | None, prompts: Sequence[Sequence[Message]], *answers: list) -> list[list[float]]:
    """Per list of completions, the reward model's score of each (empty lists without a reward model)."""
    if reward_dir is None:
        return [[] for _ in answers]
    reward_model, reward_tokenizer = load_reward_model(reward_dir)  # CUDA if present, as generation
    return [[score(reward_model, reward_tokenizer, p, [c.text])[0] for p, c in zip(prompts, completions)] for completions in answers]


def sequence_kl(policy_dir: Path | str, reference_dir: Path | str, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> float:
    """Mean over prompts of the summed per-token KL estimate on answers sampled from π (see `k3`)."""
    logprobs = [_answer_logprobs(path, prompts, answers) for path in (policy_dir, reference_dir)]
    return sum(float(k3(policy, reference).sum()) for policy, reference in zip(*logprobs)) / len(prompts)


@torch.no_grad()
def _answer_logprobs(path: Path | str, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> list[torch.Tensor]:
    """Per answer, its tokens' log-probs under the model at `path` (loaded here and let go on return: one model at a time)."""
    # where generation ran (CUDA if present), in fp32: the KL is a small difference of large log-probs
    model, tokenizer = load_causal_lm(path, dtype=torch.float32).eval(), load_tokenizer(path)
    return [response_logprobs(model, tokenizer, p, a) for p, a in zip(prompts, answers)]


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π: r − 1 − log r with r = π_ref/π (Schulman 2020).

    Unbiased like the plain log-ratio (E_π[r] = 1) but never negative, so a policy that barely moved
    reports a KL near 0, not a negative one. Shapes: (T,) → (T,).
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio
