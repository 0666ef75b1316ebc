"""Gradient health: the per-step gradient norm, flagged when it vanishes or explodes (Bengio et al. 1994;
Pascanu et al. 2013).

The global L2 norm over all parameters is measured before clipping on every optimizer step. A norm below
``vanishing`` means the loss no longer moves the weights; above ``exploding`` (or NaN/inf) means one update can
throw the model far away -- clipping caps the update, but the flag says the run needed it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

logger = logging.getLogger("seqzoo.training")

OK, VANISHING, EXPLODING = "ok", "vanishing", "exploding"


def classify(norm: float, vanishing: float, exploding: float) -> str:
    if not math.isfinite(norm) or norm > exploding:
        return EXPLODING
    if norm < vanishing:
        return VANISHING
    return OK


@dataclass
class GradientHealth:
    """Counts flagged steps and logs the first occurrence of each flag (then every 100th, to keep logs short)."""

    vanishing: float
    exploding: float
    counts: dict[str, int] = field(default_factory=lambda: {VANISHING: 0, EXPLODING: 0, "nonfinite": 0})
    first_step: dict[str, int] = field(default_factory=dict)
    max_norm: float = 0.0
    nonfinite_streak: int = 0  # consecutive steps with a NaN/inf gradient norm, up to the last one recorded

    def record(self, step: int, norm: float) -> str:
        flag = classify(norm, self.vanishing, self.exploding)
        if math.isfinite(norm):
            self.max_norm = max(self.max_norm, norm)
            self.nonfinite_streak = 0
        else:
            self.counts["nonfinite"] += 1
            self.nonfinite_streak += 1
        if flag != OK:
            self.counts[flag] += 1
            self.first_step.setdefault(flag, step)
            if self.counts[flag] == 1 or self.counts[flag] % 100 == 0:
                bound = f"< {self.vanishing:g}" if flag == VANISHING else f"> {self.exploding:g} or non-finite"
                logger.warning("step %d: gradient norm %.3g is %s (%s); %d step(s) flagged so far",
                               step, norm, flag, bound, self.counts[flag])
        return flag

    def summary(self) -> dict:
        return {
            "thresholds": {"vanishing_below": self.vanishing, "exploding_above": self.exploding},
            "flagged_steps": dict(self.counts),
            "first_flagged_step": dict(self.first_step),
            "max_grad_norm": self.max_norm,
        }

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "first_step": dict(self.first_step), "max_norm": self.max_norm,
                "nonfinite_streak": self.nonfinite_streak}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: int(state["counts"][k]) for k in self.counts}
        self.first_step = {k: int(v) for k, v in state["first_step"].items()}
        self.max_norm = float(state["max_norm"])
        self.nonfinite_streak = int(state["nonfinite_streak"])
