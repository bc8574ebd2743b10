"""The sample-size-aware drift decision.

Fixed thresholds misbehave at both ends: a p-value test (KS, chi-square) calls any
difference "drift" once samples are large, and a distance (Wasserstein, Jensen-Shannon,
PSI) measured on a few hundred values is inflated by sampling noise alone, so it alarms on
identical distributions. driftloop asks two questions instead, and calls a column drifted
only when both answers are yes:

1. **Is the difference real at these sample sizes?** A permutation test: pool the two
   samples, deal them out again at random many times (``permutations``), and compute the
   effect each time. That is the effect's distribution when nothing drifted, at exactly
   these sample sizes. ``p_value`` is the share of deals at least as extreme as the
   observed data (with the usual +1 correction); it must be below ``alpha``. A deal is drawn
   in one step from the binned counts (a multivariate hypergeometric draw), so its cost
   does not grow with the number of rows: categories and the PSI/Jensen-Shannon bins are
   binned exactly; KS and Wasserstein use 100 reference-quantile bins.
2. **Is it big enough to matter?** The effect minus the noise floor (its mean over the
   deals, what sampling alone produces) must reach ``effect_threshold``: 0.1 reference
   standard deviations of Wasserstein, KS D 0.1, PSI 0.1, Cramer's V 0.1 (Cohen's "small"
   effect) and Jensen-Shannon 0.07 (the same small effect on that scale).

A permutation test rejects a true "no drift" with probability at most ``alpha``, so a
column's false-alarm rate is at most ``alpha`` (0.05 by default) at any sample size, and
lower in practice because of the second condition; docs/monitoring.md has the measured
rates. At large samples the noise floor vanishes and the rule becomes "effect >= 0.1".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from driftloop.monitoring.stattests import StatTest, TestResult


@dataclass(frozen=True)
class Decision:
    drift: bool
    p_value: float
    noise_floor: float
    corrected_effect: float
    reason: str


def null_effects(result: TestResult, permutations: int, rng: np.random.Generator) -> Any:
    """The effect over ``permutations`` random deals of the pooled (binned) samples."""
    binned = result.binned
    pooled = binned.reference + binned.current
    size = int(binned.current.sum())
    cur = rng.multivariate_hypergeometric(pooled, size, size=permutations, method="marginals")
    return binned.effect_of_counts(pooled - cur, cur)


def decide(
    test: StatTest,
    result: TestResult,
    *,
    threshold: float,
    effect_threshold: float,
    alpha: float,
    permutations: int,
    rng: np.random.Generator,
    method: str = "sample_size_aware",
) -> Decision:
    binned = result.binned
    observed = float(binned.effect_of_counts(binned.reference[None], binned.current[None])[0])
    null = null_effects(result, permutations, rng)
    extreme = int(np.count_nonzero(null >= observed - 1e-12 * max(1.0, abs(observed))))
    p_value = (1 + extreme) / (1 + permutations)
    noise = float(np.mean(null))
    corrected = result.effect - noise
    name = test.effect_name
    if method == "fixed_threshold":
        drift = test.fixed_threshold_drift(result.value, threshold)
        sign = ("<" if drift else ">=") if test.returns == "p_value" else (">=" if drift else "<")
        return Decision(
            drift,
            p_value,
            noise,
            corrected,
            f"{test.display_name} {result.value:.4g} {sign} {threshold:g} (fixed threshold)",
        )
    significant = p_value < alpha
    big = corrected >= effect_threshold
    if significant and big:
        reason = (
            f"{name} {result.effect:.3g} is {corrected:.3g} above the {noise:.2g} that "
            f"sampling alone gives (>= {effect_threshold:g}); permutation p={p_value:.3g}"
        )
    elif not significant:
        reason = (
            f"not significant at these sample sizes: permutation p={p_value:.3g} >= {alpha:g} "
            f"({name} {result.effect:.3g}, noise floor {noise:.2g})"
        )
    else:
        reason = (
            f"real but small: {name} {result.effect:.3g} is {corrected:.3g} above the noise "
            f"floor, below {effect_threshold:g} (permutation p={p_value:.3g})"
        )
    return Decision(significant and big, p_value, noise, corrected, reason)
