"""Paired effects, their confidence intervals, and the verdict rule of the study.

Every comparison of the study is *paired*: within a seed, every loss sees the same data,
views and initial weights, so the per-seed difference ``A - B`` removes the variation that the
seed causes in both. The effect is the mean of these differences and its confidence interval the
Student-t interval ``mean ± t_{(1 + level) / 2, n - 1} · sd / sqrt(n)``.

The verdict rule ([`VerdictRule`][otcl.experiments.stats.VerdictRule]) is fixed in the configuration
before anything runs and printed at the top of the report. For a claim that the effect has a sign
(``direction`` +1 or -1):

* **supported** if the interval excludes 0 on the claimed side;
* **contradicted** if it excludes 0 on the other side;
* **no effect above X** if the whole interval lies within ``[-X, X]`` (``X`` = the claim's
  margin): any effect is too small to matter at this resolution;
* **inconclusive** otherwise (the interval is too wide to say).

For a claim of *no* effect (``direction`` 0, e.g. "class accuracy stays flat"): supported if the
interval lies within ``[-X, X]``, contradicted if it lies wholly outside it, inconclusive
otherwise. For a claim of a *small* effect (``direction`` ``"at_most"``, e.g. "the overhead is at
most X"): supported if the upper end is below ``X``, contradicted if the lower end is above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NO_EFFECT",
    "SUPPORTED",
    "Effect",
    "VerdictRule",
    "paired_effect",
]

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NO_EFFECT = "no effect above"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Effect:
    """Mean of per-seed values, its ``level`` t-interval ``(low, high)`` and the seed count."""

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def as_dict(self) -> dict[str, Any]:
        return {"effect": self.mean, "ci": [self.low, self.high], "n_seeds": self.n,
                "half_width": self.half_width, "values": list(self.values)}


def paired_effect(values: list[float] | np.ndarray, level: float = 0.95) -> Effect:
    """The mean of ``values`` (per-seed paired differences) and its Student-t interval.

    Non-finite values are dropped. With fewer than two values the interval is ``(-inf, inf)``
    around the mean (no error estimate), so no verdict other than inconclusive can follow.
    """
    from scipy.stats import t as student_t

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = np.asarray([v for v in np.asarray(values, dtype=float).ravel() if math.isfinite(v)])
    vals = tuple(float(v) for v in arr)
    if arr.size == 0:
        return Effect(math.nan, -math.inf, math.inf, 0, vals)
    mean = float(arr.mean())
    if arr.size < 2:
        return Effect(mean, -math.inf, math.inf, 1, vals)
    half = float(student_t.ppf(0.5 + level / 2.0, arr.size - 1)) * float(arr.std(ddof=1)) \
        / math.sqrt(arr.size)
    return Effect(mean, mean - half, mean + half, int(arr.size), vals)


@dataclass(frozen=True)
class VerdictRule:
    """The fixed rule that turns an effect's interval into a verdict (see the module text)."""

    level: float = 0.95

    def describe(self) -> str:
        pct = f"{100 * self.level:g}%"
        return (
            f"Each effect is the mean over seeds of a paired difference (same data, views and "
            f"initial weights for every loss within a seed), with a {pct} Student-t confidence "
            f"interval. A claim that the effect has a sign is **supported** if the interval "
            f"excludes 0 on the claimed side, **contradicted** if it excludes 0 on the other "
            f"side, **no effect above X** if the whole interval lies within ±X (X, the claim's "
            f"margin, is fixed in the configuration before the run), and **inconclusive** "
            f"otherwise. A claim of no effect is supported if the interval lies within ±X and "
            f"contradicted if it lies wholly outside; a claim that an effect is at most X is "
            f"supported if the interval's upper end is below X and contradicted if its lower end "
            f"is above X."
        )

    def verdict(self, effect: Effect, direction: int | str, margin: float, *,
                scale: float = 1.0, unit: str = "") -> str:
        """The verdict on ``effect`` for a claim of ``direction`` (+1, -1, 0 or ``"at_most"``).

        ``scale`` and ``unit`` say how the effect is displayed (e.g. 100 and ``" pt"`` for an
        accuracy given as a fraction); the margin in a "no effect above X" verdict is written
        the same way, so a margin of 0.01 reads "no effect above 1 pt".
        """
        lo, hi = effect.low, effect.high
        if effect.n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
            return INCONCLUSIVE
        within = -margin <= lo and hi <= margin
        if direction == "at_most":
            if hi < margin:
                return SUPPORTED
            return CONTRADICTED if lo > margin else INCONCLUSIVE
        if direction == 0:
            if within:
                return SUPPORTED
            return CONTRADICTED if (lo > margin or hi < -margin) else INCONCLUSIVE
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1, -1, 0 or 'at_most', got {direction!r}")
        claimed_side = lo > 0 if direction > 0 else hi < 0
        other_side = hi < 0 if direction > 0 else lo > 0
        if claimed_side:
            return SUPPORTED
        if other_side:
            return CONTRADICTED
        if within:
            return f"{NO_EFFECT} {margin * scale:g}{unit}"
        return INCONCLUSIVE
