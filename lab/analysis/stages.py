"""Stages of a metric curve: every transition, by change-point detection (ruptures), beside the
one-sigmoid fit of `phase.py`.

The raw curve, scaled to unit range, is split by PELT with a continuous piecewise-linear cost
(ruptures' "clinear": each segment is the line between its end points) and a penalty of `penalty`
x (noise variance) x log n per change point; the smoothed curve (centred moving average) only sets
the range and the noise, the scatter of the raw curve about it. Each segment whose slope would cross the whole
range of the curve within `max_width_frac` of the run is *steep*; a maximal run of adjacent steep
segments moving in the expected direction by at least `min_change` (the curve's own units) is a
*transition*, and the plateaus between transitions are the curve's *stages*. So a curve falling
chance -> unigram -> bigram has two transitions and three stages.

Each transition reports, in steps: `onset` (first step of its first steep segment: where the fall
leaves the plateau), `end` (last step of its last steep segment), `midpoint` (where the
piecewise-linear fit has covered half the transition's change), `width` (end - onset), the values
`before` and `after` it and its `change`. A transition that is already under way at the first
logged step has `censored_start` (its onset is the run's start, an upper bound on the truth).
`levels` holds each stage's level (the median of the raw curve on the plateau between transitions).
The sigmoid's onset is its 10 % point, so the two detectors' onsets differ by design: the
change-point onset is the knee, at about 0-5 % of the rise.
"""
from __future__ import annotations

import math

import numpy as np
import ruptures

from lab.analysis.phase import smooth


def _noise_var(y: np.ndarray, ys: np.ndarray) -> float:
    """Variance of the raw curve about the smoothed one, robustly (MAD), in the scaled units."""
    r = y - ys
    mad = float(np.median(np.abs(r - np.median(r))))
    return (1.4826 * mad) ** 2


def change_points(z: np.ndarray, noise_var: float, penalty: float) -> list[int]:
    """Indices (into z) where the continuous piecewise-linear fit bends, PELT-optimal for
    SSE + penalty * noise_var * log(n) per bend; excludes the last index. ruptures' "clinear"
    segment [a, b) is the line from z[a - 1] to z[b - 1], so its breakpoint b bends at index b - 1."""
    n = len(z)
    pen = penalty * max(noise_var, 1e-6) * math.log(n)
    bkps = ruptures.Pelt(model="clinear", min_size=2, jump=1).fit(z).predict(pen=pen)
    return [b - 1 for b in bkps if b < n]


def _steep_runs(slopes: list, steep: float) -> list[list[int]]:
    """Maximal runs [first, last] of consecutive segment indices whose slope is >= steep."""
    runs = []
    for k, slope in enumerate(slopes):
        if slope < steep:
            continue
        if runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return runs


def _split_at_valleys(runs: list, slopes: list, valley: float) -> list[tuple[int, int]]:
    """Split a run of steep segments at an inner segment whose slope is below `valley` times the
    steepest segment on each side of it: the curve slowed down between two falls (two stages on
    a plateau that still slopes), while one transition's slopes rise and fall once. Returns
    (first edge, last edge) index pairs into the bend list."""
    out = []
    for first, last in runs:
        start = first
        for k in range(first + 1, last):
            if k > start and slopes[k] < valley * min(max(slopes[start:k]), max(slopes[k + 1:last + 1])):
                out.append((start, k))
                start = k + 1
        out.append((start, last + 1))
    return out


def detect_stages(steps, values, *, direction: str, min_change: float, smooth_window: int = 5,
                  penalty: float = 10.0, max_width_frac: float = 0.35, valley: float = 0.6) -> dict:
    """Transitions and stages of one curve (module docstring). `direction` is "decrease" or
    "increase"; `min_change` is the smallest change (curve units) that counts as a transition."""
    if direction not in ("decrease", "increase"):
        raise ValueError(f"direction must be 'decrease' or 'increase', not {direction!r}")
    x, y = np.asarray(steps, float), np.asarray(values, float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"transitions": [], "n_stages": 1, "change_points": [], "reason": "",
           "levels": [float(np.median(y))] if len(y) else []}
    if len(x) < 8:
        out["reason"] = f"too few finite points ({len(x)}) for change points"
        return out
    ys = smooth(y, smooth_window)
    scale = float(np.ptp(ys))
    if scale <= 0 or scale < min_change:
        out["reason"] = f"the curve moves by {scale:.3g} in all, less than {min_change:.3g}"
        return out
    sign = -1.0 if direction == "decrease" else 1.0
    # bends are found on the raw curve (smoothing would blur where a fall starts); the smoothed
    # curve only sets the range and the noise level
    bends = change_points(y / scale, _noise_var(y / scale, ys / scale), penalty)
    edges = [0, *bends, len(y) - 1]
    fit = y[edges]                                      # the piecewise-linear fit at its bends
    steep_slope = scale / (max_width_frac * (x[-1] - x[0]))   # crosses the whole range within max_width_frac
    slopes = [sign * (fit[k + 1] - fit[k]) / max(x[edges[k + 1]] - x[edges[k]], 1e-12) for k in range(len(edges) - 1)]
    runs = _split_at_valleys(_steep_runs(slopes, steep_slope), slopes, valley)
    for ka, kb in runs:
        a, b = edges[ka], edges[kb]
        change = float(fit[kb] - fit[ka])
        if sign * change < min_change:
            continue
        px, py = x[edges[ka:kb + 1]], fit[ka:kb + 1]      # the fit's path through the transition
        half = fit[ka] + change / 2
        k = int(np.argmax(sign * (py - half) >= 0))
        mid = float(np.interp(sign * half, sign * py[k - 1:k + 1], px[k - 1:k + 1]))
        out["transitions"].append({
            "onset": float(x[a]), "midpoint": mid, "end": float(x[b]), "width": float(x[b] - x[a]),
            "before": float(fit[ka]), "after": float(fit[kb]), "change": change, "censored_start": a == 0})
    out["change_points"] = [float(x[i]) for i in bends]
    out["n_stages"] = len(out["transitions"]) + 1
    # each stage's level: the median of the raw curve between the transitions around it
    cuts = [x[0] - 1, *[b for t in out["transitions"] for b in (t["onset"], t["end"])], x[-1] + 1]
    out["levels"] = [float(np.median(y[(x >= lo) & (x <= hi)])) for lo, hi in zip(cuts[::2], cuts[1::2])]
    n_t = len(out["transitions"])
    out["reason"] = (f"{n_t} transition{'s' if n_t != 1 else ''}: " + ", ".join(
        f"{t['onset']:.0f}-{t['end']:.0f} ({t['before']:.3g} -> {t['after']:.3g})" for t in out["transitions"])
        if n_t else f"no transition: the curve moves by {scale:.3g} but no stretch is both steep (the whole range "
        f"within {max_width_frac:.0%} of the run) and {min_change:.3g} long: gradual or flat")
    return out


def detect_stages_many(steps, curves, **kwargs) -> list[dict]:
    """detect_stages for each row of `curves` (n_curves, n_steps), e.g. every seed of one metric."""
    return [detect_stages(steps, c, **kwargs) for c in np.asarray(curves, float)]
