"""Phase-change detection on metric curves (numpy/scipy, host side, after or during training).

For a curve y(step) we report three complementary estimates:
- threshold crossing: the first step at which the smoothed curve crosses a fixed threshold
  (e.g. Singh et al.'s loss < 0.4 ln 2, or here a fraction of the chance loss);
- steepest change: the step where the smoothed curve changes fastest in the expected direction;
- a fitted sigmoid y = base + amp * s((step - midpoint) / width): onset and end are where it is
  10 % and 90 % of the way through (midpoint -/+ width * ln 9).
A phase change is *detected* only if the sigmoid fits well (R^2), moves far enough in the expected
direction, is abrupt (10-90 % span short compared with the run) and lies inside the run, so a flat
or slowly drifting curve is honestly reported as "no phase change", with the reason.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from lab.analysis import stats

LN9 = math.log(9.0)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; edges padded with the edge values so the length is kept."""
    y = np.asarray(y, float)
    if window <= 1 or len(y) < 3:
        return y.copy()
    window = min(window, len(y))
    left, right = (window - 1) // 2, window // 2
    padded = np.concatenate([np.full(left, y[0]), y, np.full(right, y[-1])])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def _sigmoid(x, base, amp, mid, width):
    return base + amp / (1.0 + np.exp(-np.clip((x - mid) / width, -60, 60)))


def fit_sigmoid(x: np.ndarray, y: np.ndarray) -> Optional[dict]:
    """Least-squares logistic fit, started from several midpoints; None if nothing converges."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    span = x[-1] - x[0]
    if len(x) < 5 or span <= 0:
        return None
    dx = np.min(np.diff(x))
    best = None
    lo = [-np.inf, -np.inf, x[0] - span, dx / 4]
    hi = [np.inf, np.inf, x[-1] + span, 2 * span]
    k = max(2, len(y) // 10)
    y0, y1 = y[:k].mean(), y[-k:].mean()
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        for wf in (0.02, 0.1):
            p0 = [y0, y1 - y0, x[0] + q * span, max(wf * span, dx)]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    p, _ = curve_fit(_sigmoid, x, y, p0=p0, bounds=(lo, hi), maxfev=4000)
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((_sigmoid(x, *p) - y) ** 2))
            if best is None or sse < best[1]:
                best = (p, sse)
    if best is None:
        return None
    (base, amp, mid, width), sse = best
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else 0.0
    return {"base": float(base), "amplitude": float(amp), "midpoint": float(mid), "width": float(width),
            "onset": float(mid - width * LN9), "end": float(mid + width * LN9), "r2": float(r2)}


def threshold_crossing(x, y_smooth, threshold: float, direction: str) -> Optional[int]:
    below = y_smooth <= threshold if direction == "decrease" else y_smooth >= threshold
    hits = np.flatnonzero(below)
    return int(x[hits[0]]) if len(hits) else None


def steepest_change(x, y_smooth, direction: str) -> Optional[int]:
    if len(x) < 3:
        return None
    slope = np.gradient(y_smooth, x)
    slope = -slope if direction == "decrease" else slope
    return int(x[int(np.argmax(slope))]) if np.max(slope) > 0 else None


def detect(steps, values, *, direction: str = "decrease", threshold: Optional[float] = None,
           min_amplitude: float = 0.0, min_r2: float = 0.8, max_width_frac: float = 0.35,
           smooth_window: int = 5) -> dict:
    """Find a phase change in one curve. `min_amplitude` is the smallest |change| that counts."""
    if direction not in ("decrease", "increase"):
        raise ValueError(f"direction must be 'decrease' or 'increase', not {direction!r}")
    x, y = np.asarray(steps, float), np.asarray(values, float)
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    result = {"detected": False, "reason": "", "threshold_step": None, "steepest_step": None,
              "onset": None, "midpoint": None, "end": None, "width": None, "amplitude": None, "r2": None}
    if len(x) < 5:
        result["reason"] = f"too few finite points ({len(x)}) to fit"
        return result
    ys = smooth(y, smooth_window)
    if threshold is not None:
        result["threshold_step"] = threshold_crossing(x, ys, threshold, direction)
    result["steepest_step"] = steepest_change(x, ys, direction)
    moved = float(np.ptp(ys))
    if min_amplitude > 0 and moved < min_amplitude:
        # most heads' curves stay flat: skip the ten-start fit (most of a summary's cost) when the
        # smoothed curve cannot show a change of min_amplitude
        result["reason"] = f"no phase change: the smoothed curve moves by {moved:.3g} in all, < {min_amplitude:.3g}"
        return result
    fit = fit_sigmoid(x, y)
    if fit is None:
        result["reason"] = "sigmoid fit did not converge"
        return result
    result.update({k: fit[k] for k in ("onset", "midpoint", "end", "width", "amplitude", "r2")})
    change = fit["amplitude"] if direction == "increase" else -fit["amplitude"]
    span = x[-1] - x[0]
    if change < min_amplitude:
        result["reason"] = f"no phase change: fitted {direction} of {change:.3g} < {min_amplitude:.3g}"
    elif fit["r2"] < min_r2:
        result["reason"] = f"no phase change: sigmoid fit R^2 {fit['r2']:.2f} < {min_r2}"
    elif not x[0] < fit["midpoint"] < x[-1]:
        result["reason"] = f"no phase change inside the run (fitted midpoint {fit['midpoint']:.0f})"
    elif fit["end"] - fit["onset"] > max_width_frac * span:
        result["reason"] = (f"gradual, not abrupt: 10-90% span {fit['end'] - fit['onset']:.0f} steps > "
                            f"{max_width_frac:.0%} of the run")
    else:
        result["detected"] = True
        result["reason"] = f"phase change at step {fit['midpoint']:.0f} (10-90%: {fit['onset']:.0f}-{fit['end']:.0f})"
    return result


def aggregate(per_seed: list[dict]) -> dict:
    """Mean, sample std (ddof 1), bootstrap 95 % interval, min and max over seeds of each estimate,
    over the seeds where a change was detected (threshold crossings over every seed that crossed);
    `n_detected` of `n_seeds` with its binomial interval."""
    n, k = len(per_seed), sum(bool(r["detected"]) for r in per_seed)
    out = {"n_seeds": n, "n_detected": k, "detected_ci95": stats.binomial_ci(k, n)}
    for key in ("onset", "midpoint", "end", "width", "steepest_step", "threshold_step"):
        d = stats.describe(r[key] for r in per_seed if r[key] is not None and (r["detected"] or key == "threshold_step"))
        for part in ("mean", "std", "ci95", "min", "max"):
            out[f"{key}_{part}"] = d[part]
    return out
