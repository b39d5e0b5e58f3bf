"""Whether a campaign has enough judgements to train on yet, and if not, the reason a button shows."""
from __future__ import annotations

from annotate.models import Campaign, Judgement
from training.preferences import MIN_EVAL_PAIRS, MIN_TRAIN_PAIRS

NEEDED = MIN_TRAIN_PAIRS + MIN_EVAL_PAIRS


def training_blocker(campaign: Campaign) -> str | None:
    """None when a reward model (or a round) can train; else why not, in words for the button's title.

    A cheap check in two COUNTs: every non-tied judgement makes at least one pair, and the
    held-out pairs come from other prompts than the training pairs. The run checks exactly.
    """
    judged = Judgement.objects.filter(task__campaign=campaign, task__is_gold=False)
    judgements = judged.count()
    prompts = judged.values("task__prompt_id").distinct().count() if judgements else 0
    if judgements >= NEEDED and prompts >= 2:
        return None
    return (f"Needs at least {NEEDED} judgements on 2 or more prompts ({MIN_TRAIN_PAIRS} pairs to train on, {MIN_EVAL_PAIRS} held out "
            f"to measure accuracy); so far {judgements} judgement{'s' if judgements != 1 else ''} on {prompts} prompt{'s' if prompts != 1 else ''}.")
