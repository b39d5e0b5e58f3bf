"""Rankings -> preference pairs: the contract between the web half and the ML half.

The web half turns stored judgements into `RankedJudgement`s (plain data, no Django) and calls
`build_preference_dataset`. What comes back is a train and an eval list of rows in TRL's
conversational preference format, ready for `training.reward.train_reward_model`:

    {"prompt": [{"role": "user", "content": ...}],                  # the chat so far
     "chosen": [{"role": "assistant", "content": ...}],             # the better response
     "rejected": [{"role": "assistant", "content": ...}],           # the worse one
     "margin": 0.5,       # margin_per_rank * (rank distance - 1), used only if the trainer asks for it
     "weight": 1.0,       # relative weight of the pair in the loss
     "prompt_id": ..., "chosen_id": ..., "rejected_id": ...}       # provenance, ignored by TRL

Rules:
- A ranking is a list of groups, best first; ids in one group are tied. Every pair of ids in
  different groups gives one (better, worse) pair; ties give none.
- Judgements marked `excluded` (the labeler failed gold checks) are left out unless asked for.
- The split is by prompt: no prompt has pairs in both train and eval. Which prompts are held out
  depends only on the prompt ids and the seed (a hash), so it does not move when data is reordered.
- `content_hash` is the sha256 of a canonical serialisation: every reward model records it.
- A dataset needs at least MIN_TRAIN_PAIRS training pairs and MIN_EVAL_PAIRS held-out pairs;
  fewer raise `PreferenceDatasetError` with the counts.

Context passages (RAG-style prompts) reach every model through one rendering,
`chat_with_context`: the passages, numbered, in a system turn before the conversation
(appended to the prompt's own system turn if it has one):

    {"role": "system", "content": "Passages:\n\n[1] Title\npassage text\n\n[2] another passage"}

Generation, reward training and scoring, PPO, RLOO, DPO, SFT and the exported TRL rows all see
the prompt in this layout; a prompt without passages is its messages unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

ResponseId = str | int
PromptId = str | int
Id = TypeVar("Id", bound=ResponseId)  # the ids a ranking is given in come back in its pairs
Message = dict[str, str]
Row = dict[str, Any]
Weighting = Literal["uniform", "per_judgement", "rank_distance"]
Aggregation = Literal["all", "majority"]

MIN_TRAIN_PAIRS = 8
"""Fewest training pairs a reward model is trained on: below this the run is noise."""
MIN_EVAL_PAIRS = 2
"""Fewest held-out pairs: below this the held-out accuracy means nothing."""


class PreferenceDatasetError(ValueError):
    """The judgements cannot make a usable preference dataset (the message says why)."""


@dataclass(frozen=True)
class RankedJudgement:
    """One labeler's ranking of the responses to one prompt."""

    prompt_id: PromptId
    """Stable id of the prompt (the split is by prompt)."""
    prompt_messages: list[Message]
    """The chat the responses answer: [{"role": ..., "content": ...}, ...]."""
    responses: dict[ResponseId, str]
    """Text of every response that appears in the ranking, by response id."""
    ranking: list[list[ResponseId]]
    """Groups of response ids, best first; several ids in a group are tied."""
    labeler_id: str | int
    """Who judged (kept for auditing; not written to the dataset)."""
    weight: float = 1.0
    """Trust in this judgement; multiplies the weight of each of its pairs."""
    excluded: bool = False
    """True if the labeler failed gold checks: left out unless include_excluded."""


@dataclass(frozen=True)
class PreferencePair:
    """One 'chosen is better than rejected' statement about two responses to a prompt."""

    prompt_id: PromptId
    """The prompt both responses answer."""
    prompt_messages: list[Message]
    """The chat the responses answer."""
    chosen_id: ResponseId
    """Id of the better response."""
    rejected_id: ResponseId
    """Id of the worse response."""
    chosen: str
    """Text of the better response."""
    rejected: str
    """Text of the worse response."""
    weight: float = 1.0
    """Relative weight in the loss."""
    rank_distance: float = 1.0
    """How many groups apart the two were ranked (mean over votes after aggregation)."""
    votes: int = 1
    """Judgements that agree with this pair (after majority aggregation)."""
    dissent: int = 0
    """Judgements that ranked the pair the other way (after majority aggregation)."""


@dataclass(frozen=True)
class PreferenceOptions:
    """How judgements become a dataset."""

    weighting: Weighting = "uniform"
    """uniform: every pair 1; per_judgement: 1/pairs of its judgement (each judgement counts once);
    rank_distance: the number of groups between the two responses. Times the judgement's weight."""
    aggregation: Aggregation = "all"
    """all: keep every labeler's pairs; majority: one pair per (prompt, two responses), the side
    with more judgements wins, equal votes drop the pair."""
    include_excluded: bool = False
    """Use judgements of labelers who failed gold checks."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation (at least one prompt, never all)."""
    seed: int = 0
    """Seed of the prompt split."""
    margin_per_rank: float = 0.5
    """The `margin` column: this times (rank distance - 1), so adjacent groups get margin 0."""
    min_train_pairs: int = MIN_TRAIN_PAIRS
    """Raise PreferenceDatasetError below this many training pairs."""
    min_eval_pairs: int = MIN_EVAL_PAIRS
    """Raise PreferenceDatasetError below this many held-out pairs."""


@dataclass
class PreferenceDataset:
    """Train and eval rows in TRL's conversational preference format, plus counts."""

    train: list[Row]
    """Training rows, canonically ordered."""
    eval: list[Row]
    """Held-out rows (prompts disjoint from train), canonically ordered."""
    stats: dict[str, int] = field(default_factory=dict)
    """Counts: judgements used / excluded, pairs, vote ties dropped, prompts per split."""

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical serialisation of both splits."""
        return content_hash(self.train, self.eval)

    def write(self, out_dir: Path | str) -> tuple[Path, Path]:
        """Write train.jsonl, eval.jsonl and dataset.json (stats and hash); return the two JSONL paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        train_path, eval_path = out_dir / "train.jsonl", out_dir / "eval.jsonl"
        write_jsonl(self.train, train_path)
        write_jsonl(self.eval, eval_path)
        meta = {"content_hash": self.content_hash, "stats": self.stats}
        (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        return train_path, eval_path


# ---------------------------------------------------------------- prompts with their passages


def chat_with_context(messages: list[Message], context: Sequence[dict] | None) -> list[Message]:
    """The chat a model sees for a prompt: its context passages, if any, numbered in a system turn before it.

    `context` is [{"title": ..., "text": ...}] (title may be empty). Without passages the messages
    are returned unchanged, so prompts without context render exactly as before.
    """
    if not context:
        return messages
    passages = "\n\n".join(f"[{i}] {p['title']}\n{p['text']}" if p.get("title") else f"[{i}] {p['text']}" for i, p in enumerate(context, 1))
    note = f"Passages:\n\n{passages}"
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


# ---------------------------------------------------------------- rankings -> pairs


def ranking_to_pairs(ranking: Sequence[Sequence[Id]]) -> list[tuple[Id, Id]]:
    """Every (better, worse) pair of ids from different groups, best group first; ties give none.

    [[a], [b, c], [d]] -> [(a, b), (a, c), (a, d), (b, d), (c, d)].
    """
    return [(better, worse) for _, better, worse, _ in _ranked_pairs(ranking)]


def _ranked_pairs(ranking: Sequence[Sequence[Id]]) -> list[tuple[int, Id, Id, int]]:
    """(better group index, better id, worse id, groups apart) for every pair across groups."""
    _check_ranking(ranking)
    pairs: list[tuple[int, Id, Id, int]] = []
    for i, better_group in enumerate(ranking):
        for better in better_group:
            for j in range(i + 1, len(ranking)):
                pairs.extend((i, better, worse, j - i) for worse in ranking[j])
    return pairs


def _check_ranking(ranking: Sequence[Sequence[ResponseId]]) -> None:
    ids = [response_id for group in ranking for response_id in group]
    if len(ids) != len(set(ids)):
        raise PreferenceDatasetError(f"a response appears twice in ranking {ranking!r}")


def judgement_pairs(judgement: RankedJudgement, weighting: Weighting = "uniform") -> list[PreferencePair]:
    """The pairs one judgement states, weighted by `weighting` times the judgement's weight."""
    ranked = _ranked_pairs(judgement.ranking)
    missing = {rid for group in judgement.ranking for rid in group} - set(judgement.responses)
    if missing:
        raise PreferenceDatasetError(
            f"prompt {judgement.prompt_id!r}: ranked response ids without text: {sorted(map(str, missing))}"
        )
    return [
        PreferencePair(
            prompt_id=judgement.prompt_id,
            prompt_messages=judgement.prompt_messages,
            chosen_id=better,
            rejected_id=worse,
            chosen=judgement.responses[better],
            rejected=judgement.responses[worse],
            weight=judgement.weight * _pair_weight(weighting, distance, len(ranked)),
            rank_distance=float(distance),
        )
        for _, better, worse, distance in ranked
    ]


def _pair_weight(weighting: Weighting, distance: int, pairs_in_judgement: int) -> float:
    if weighting == "uniform":
        return 1.0
    if weighting == "per_judgement":
        return 1.0 / pairs_in_judgement
    if weighting == "rank_distance":
        return float(distance)
    raise PreferenceDatasetError(f"unknown weighting {weighting!r}")


def aggregate_majority(pairs: Iterable[PreferencePair]) -> tuple[list[PreferencePair], int]:
    """One pair per (prompt, two responses): the order more judgements state wins.

    Each pair counts as one vote. Equal votes drop the pair. The kept pair's weight and
    rank distance are the means over its winning votes. Returns (pairs, number dropped as ties).
    """
    ballots: dict[tuple[str, str, str], dict[str, list[PreferencePair]]] = defaultdict(lambda: defaultdict(list))
    for pair in pairs:
        chosen, rejected = _canonical(pair.chosen_id), _canonical(pair.rejected_id)
        ballots[(_canonical(pair.prompt_id), min(chosen, rejected), max(chosen, rejected))][chosen].append(pair)
    kept, tied = [], 0
    for sides in ballots.values():
        ordered = sorted(sides.values(), key=len, reverse=True)
        if len(ordered) == 2 and len(ordered[0]) == len(ordered[1]):
            tied += 1
            continue
        winners, losers = ordered[0], (ordered[1] if len(ordered) == 2 else [])
        kept.append(_merge_votes(winners, dissent=len(losers)))
    return kept, tied


def _merge_votes(winners: list[PreferencePair], dissent: int) -> PreferencePair:
    first = winners[0]
    return PreferencePair(
        prompt_id=first.prompt_id,
        prompt_messages=first.prompt_messages,
        chosen_id=first.chosen_id,
        rejected_id=first.rejected_id,
        chosen=first.chosen,
        rejected=first.rejected,
        weight=sum(p.weight for p in winners) / len(winners),
        rank_distance=sum(p.rank_distance for p in winners) / len(winners),
        votes=len(winners),
        dissent=dissent,
    )


# ---------------------------------------------------------------- split


def split_prompts(prompt_ids: Iterable[PromptId], eval_fraction: float, seed: int = 0) -> set[PromptId]:
    """The prompt ids to hold out: the round(eval_fraction * n) ids with the smallest seeded hash.

    At least one and at most n - 1 prompts are held out (none if there is only one prompt).
    Depends only on the set of ids and the seed, not on their order.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise PreferenceDatasetError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    unique = {_canonical(pid): pid for pid in prompt_ids}
    n = len(unique)
    n_eval = min(n - 1, max(1, round(eval_fraction * n))) if n > 1 else 0
    ranked = sorted(unique, key=lambda key: hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest())
    return {unique[key] for key in ranked[:n_eval]}


# ---------------------------------------------------------------- dataset


def build_preference_dataset(
    judgements: Iterable[RankedJudgement], options: PreferenceOptions | None = None
) -> PreferenceDataset:
    """Judgements -> train/eval rows in TRL's conversational preference format.

    Raises PreferenceDatasetError when nothing is left to learn from (no judgements, only ties)
    or when a split has fewer pairs than the options' minimums.
    """
    options = options or PreferenceOptions()
    judgements = list(judgements)
    used = [j for j in judgements if options.include_excluded or not j.excluded]
    pairs = [pair for j in used for pair in judgement_pairs(j, options.weighting)]
    _check_some_pairs(judgements, used, pairs)
    tied = 0
    if options.aggregation == "majority":
        pairs, tied = aggregate_majority(pairs)
        if not pairs:
            raise PreferenceDatasetError(f"every one of {tied} response pairs is tied in the labelers' vote")
    elif options.aggregation != "all":
        raise PreferenceDatasetError(f"unknown aggregation {options.aggregation!r}")
    held_out = {_canonical(p) for p in split_prompts([p.prompt_id for p in pairs], options.eval_fraction, options.seed)}
    train = _rows([p for p in pairs if _canonical(p.prompt_id) not in held_out], options.margin_per_rank)
    eval_ = _rows([p for p in pairs if _canonical(p.prompt_id) in held_out], options.margin_per_rank)
    stats = {
        "judgements": len(used),
        "judgements_excluded": len(judgements) - len(used),
        "vote_ties_dropped": tied,
        "train_pairs": len(train),
        "eval_pairs": len(eval_),
        "train_prompts": len({_canonical(r["prompt_id"]) for r in train}),
        "eval_prompts": len(held_out),
    }
    _check_enough(stats, options)
    return PreferenceDataset(train=train, eval=eval_, stats=stats)


def _check_some_pairs(judgements: list[RankedJudgement], used: list[RankedJudgement], pairs: list) -> None:
    if pairs:
        return
    excluded = len(judgements) - len(used)
    if not used:
        hint = f" ({excluded} left out: their labelers failed gold checks)" if excluded else ""
        raise PreferenceDatasetError(f"no judgements to learn from{hint}")
    raise PreferenceDatasetError(
        f"no preference pairs: every one of the {len(used)} judgements ranks all its responses as tied"
    )


def _check_enough(stats: dict[str, int], options: PreferenceOptions) -> None:
    if stats["train_pairs"] >= options.min_train_pairs and stats["eval_pairs"] >= options.min_eval_pairs:
        return
    raise PreferenceDatasetError(
        f"too few preference pairs: {stats['train_pairs']} for training (need {options.min_train_pairs}) and "
        f"{stats['eval_pairs']} held out (need {options.min_eval_pairs}), from "
        f"{stats['train_prompts'] + stats['eval_prompts']} prompts with eval_fraction={options.eval_fraction}; "
        "collect more judgements"
    )


def pair_to_row(pair: PreferencePair, margin_per_rank: float = 0.5) -> Row:
    """One pair as a row of TRL's conversational preference format (plus provenance)."""
    return {
        "prompt_id": pair.prompt_id,
        "chosen_id": pair.chosen_id,
        "rejected_id": pair.rejected_id,
        "prompt": [dict(m) for m in pair.prompt_messages],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "margin": margin_per_rank * (pair.rank_distance - 1.0),
        "weight": pair.weight,
    }


def _rows(pairs: list[PreferencePair], margin_per_rank: float) -> list[Row]:
    # sorted by the serialised row: the same judgements in any order give the same bytes and hash
    return sorted((pair_to_row(p, margin_per_rank) for p in pairs), key=_canonical)


# ---------------------------------------------------------------- serialisation


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(*splits: Sequence[Row]) -> str:
    """sha256 (hex) of the canonical JSON of the given row lists, in order."""
    return hashlib.sha256(_canonical([list(rows) for rows in splits]).encode("utf-8")).hexdigest()


def write_jsonl(rows: Iterable[Row], path: Path | str) -> Path:
    """Write one canonical JSON object per line; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(_canonical(row) + "\n")
    return path


def read_jsonl(path: Path | str) -> list[Row]:
    """Rows written by write_jsonl (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
