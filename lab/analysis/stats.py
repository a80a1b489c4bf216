"""Statistics for claims over seeds: what every verdict and sweep table reports.

Conventions (DESIGN.md, "Statistics for claims"): the spread over seeds is the *sample* standard
deviation (ddof 1, undefined for one seed); a mean carries a percentile-bootstrap 95 % interval over
seeds; "k of n seeds" carries an exact (Clopper-Pearson) binomial interval; a within-seed comparison
(clamp vs no clamp on the same seed) is judged on the paired differences, not on two separate means.
Values that are None or not finite (a seed where the event was not reached) are dropped, and `n`
always says how many remained.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
N_BOOT = 10_000


def finite(values: Iterable) -> np.ndarray:
    """The finite values as floats (None, NaN and inf dropped)."""
    out = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return np.asarray(out, float)


def sample_std(values: Iterable) -> Optional[float]:
    """Sample standard deviation sqrt(sum (x - mean)^2 / (n - 1)); None for fewer than 2 values."""
    x = finite(values)
    return float(np.std(x, ddof=1)) if len(x) >= 2 else None


def bootstrap_ci(values: Iterable, stat=np.mean, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0) -> Optional[tuple[float, float]]:
    """Percentile bootstrap interval of `stat` over the values (resampled with replacement, a fixed
    seed so a verdict is reproducible). None for fewer than 2 values: one seed has no spread to
    resample. With few seeds the interval is narrower than the truth; it is still the honest
    summary of what the seeds show, and `n` is printed beside it."""
    x = finite(values)
    if len(x) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))
    boot = stat(x[idx], axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def binomial_ci(k: int, n: int, level: float = LEVEL) -> Optional[tuple[float, float]]:
    """Exact (Clopper-Pearson) interval for a proportion k/n: e.g. 5 of 5 seeds gives [0.48, 1]."""
    if n <= 0:
        return None
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def describe(values: Iterable) -> dict:
    """{n, mean, std (ddof 1), ci95 (bootstrap of the mean), min, max} of the finite values."""
    x = finite(values)
    if not len(x):
        return {"n": 0, "mean": None, "std": None, "ci95": None, "min": None, "max": None}
    return {"n": int(len(x)), "mean": float(x.mean()), "std": sample_std(x), "ci95": bootstrap_ci(x),
            "min": float(x.min()), "max": float(x.max())}


def paired_differences(a: Sequence, b: Sequence) -> dict:
    """a_i - b_i over the seeds i where both are finite, described as `describe` does (the interval
    is over the differences, which removes the between-seed variation both share)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    return {**describe(diffs), "differences": diffs}


def fmt_interval(ci: Optional[tuple[float, float]], fmt=lambda v: f"{v:.3g}") -> str:
    """'[lo, hi]' or '' when undefined."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
