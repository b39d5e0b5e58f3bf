"""The one LoRA-config builder, for every adapter trained here (reward model, SFT, DPO, RLOO, PPO's policy and critic)."""

from __future__ import annotations

from typing import Protocol

from peft import LoraConfig


class LoraSettings(Protocol):
    """The LoRA fields of RewardConfig, PolicyConfig and PPOConfig."""

    lora_r: int
    lora_alpha: int
    lora_target_modules: str | list[str]


def lora_config(settings: LoraSettings, task_type: str) -> LoraConfig:
    """peft's LoraConfig from the run's settings; task_type "CAUSAL_LM" (a policy) or "SEQ_CLS" (a reward model, a critic).

    SEQ_CLS puts the score head in modules_to_save: it trains in full next to the adapters.
    A config without `lora_dropout` (PPO's) gets none.
    """
    return LoraConfig(
        task_type=task_type,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=getattr(settings, "lora_dropout", 0.0),
        target_modules=settings.lora_target_modules if isinstance(settings.lora_target_modules, str) else list(settings.lora_target_modules),
    )
