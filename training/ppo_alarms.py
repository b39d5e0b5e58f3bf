"""PPO's alarms: thresholds on approximate KL, clip fraction, ratio, KL to the reference and entropy
collapse (shared/RLHF-NOTES.md, item 18).

An iteration over a threshold logs a warning and an `alarm/<name>` metric of 1; the same alarm
over its threshold for `alarm_patience` iterations in a row stops the run, with the reason.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class Alarms:
    """Checks each iteration's metrics against the config's thresholds; `reason` is set once the run must stop."""

    def __init__(self, config):
        self.config = config
        self.streak: dict[str, int] = {}
        self.reason: str | None = None

    def firing(self, metrics: dict[str, float]) -> dict[str, str]:
        """name -> what is wrong, for every alarm over its threshold in these metrics."""
        c, out = self.config, {}
        if metrics["policy/approxkl"] > c.alarm_approxkl:
            out["approxkl"] = f"approximate KL {metrics['policy/approxkl']:.3g} > {c.alarm_approxkl}"
        if metrics["policy/clipfrac"] > c.alarm_clipfrac:
            out["clipfrac"] = f"clip fraction {metrics['policy/clipfrac']:.3g} > {c.alarm_clipfrac}"
        ratio = metrics["val/ratio"]
        if not 1 / c.alarm_ratio <= ratio <= c.alarm_ratio:
            out["ratio"] = f"mean ratio {ratio:.3g} outside [{1 / c.alarm_ratio:.3g}, {c.alarm_ratio}]"
        if metrics["objective/kl"] > c.alarm_kl:
            out["kl"] = f"KL to the reference {metrics['objective/kl']:.3g} > {c.alarm_kl}"
        if metrics["policy/entropy"] < c.alarm_entropy:
            out["entropy"] = f"entropy {metrics['policy/entropy']:.3g} < {c.alarm_entropy} (collapse)"
        return out

    def check(self, metrics: dict[str, float]) -> str | None:
        """Record this iteration (adds alarm/* to metrics); the reason to stop, once an alarm outlasts its patience."""
        firing = self.firing(metrics)
        for name in ("approxkl", "clipfrac", "ratio", "kl", "entropy"):
            self.streak[name] = self.streak.get(name, 0) + 1 if name in firing else 0
            metrics[f"alarm/{name}"] = float(name in firing)
        for name, what in firing.items():
            logger.warning("PPO alarm: %s (%d iterations in a row)", what, self.streak[name])
            if self.streak[name] >= self.config.alarm_patience and self.reason is None:
                self.reason = f"{what} for {self.streak[name]} iterations in a row: lower the learning rate or the PPO epochs"
        return self.reason
