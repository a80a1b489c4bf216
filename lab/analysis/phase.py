"""Phase-change detection on metric curves (numpy, host side, after or during training).

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
from typing import Optional

import numpy as np

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


def _basis(x: np.ndarray, mid: np.ndarray, width: np.ndarray) -> np.ndarray:
    """s((x - mid) / width) for each (mid, width) pair: (G, n)."""
    return 1.0 / (1.0 + np.exp(-np.clip((x[None, :] - mid[:, None]) / width[:, None], -60, 60)))


def _grid(x: np.ndarray, span: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """The (midpoint, width) pairs the global search tries: midpoints at and between the logged steps
    (at most ~400 inside the run) and 16 outside it on each side, widths log-spaced over the bounds."""
    inside = x if len(x) <= 200 else np.quantile(x, np.linspace(0, 1, 200))
    mids = np.unique(np.concatenate([inside, (inside[1:] + inside[:-1]) / 2,
                                     np.linspace(x[0] - span, x[0], 16), np.linspace(x[-1], x[-1] + span, 16)]))
    widths = np.geomspace(dx / 4, 2 * span, 40)
    m, w = np.meshgrid(mids, widths, indexing="ij")
    return m.ravel(), w.ravel()


def _project(Yc: np.ndarray, syy: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each curve (rows of the centred Yc) and each basis row of S: the residual sum of squares
    of the best y = base + amp * s, and that amp; returns (sse (C, G), amp (C, G), s mean (G,))."""
    smean = S.mean(axis=1)
    Sc = S - smean[:, None]
    var = np.einsum("gn,gn->g", Sc, Sc)
    cov = Yc @ Sc.T
    ok = var > 1e-12 * S.shape[1]
    amp = np.where(ok, cov / np.where(ok, var, 1.0), 0.0)
    sse = np.where(ok, syy[:, None] - amp * cov, syy[:, None])
    return sse, amp, smean


def fit_sigmoids(x: np.ndarray, Y: np.ndarray, iterations: int = 100) -> list[Optional[dict]]:
    """Least-squares fits of y = base + amp * s((x - mid) / width), s the logistic function, to every
    row of Y (C curves sampled at the same steps x), all at once; None for a curve when x has fewer
    than 5 points. For fixed (mid, width) the best base and amp are linear least squares, so a grid
    over (mid, log width) finds each curve's best basin in one matrix product (variable projection);
    a Levenberg-Marquardt refines all four parameters from there, vectorised over curves (analytic
    Jacobian; mid within a run length of the data, width between a quarter of the smallest step
    and twice the run: outside those a "transition" is a jump between two points or a line)."""
    x, Y = np.asarray(x, float), np.atleast_2d(np.asarray(Y, float))
    C, n = Y.shape
    span = x[-1] - x[0] if n else 0.0
    if n < 5 or span <= 0:
        return [None] * C
    dx = float(np.min(np.diff(x)))
    lo = np.array([-np.inf, -np.inf, x[0] - span, dx / 4])
    hi = np.array([np.inf, np.inf, x[-1] + span, 2 * span])
    ymean = Y.mean(axis=1)
    Yc = Y - ymean[:, None]
    sst = np.einsum("cn,cn->c", Yc, Yc)
    # 1. global search: the grid pair with the least residual, per curve (in blocks: bounded memory)
    mids, widths = _grid(x, span, dx)
    best = np.full(C, np.inf)
    p = np.zeros((C, 4))
    for b in range(0, len(mids), 4096):
        m, w = mids[b:b + 4096], widths[b:b + 4096]
        sse, amp, smean = _project(Yc, sst, _basis(x, m, w))
        j = np.argmin(sse, axis=1)
        sse_j, rows = sse[np.arange(C), j], np.arange(C)
        better = sse_j < best
        best[better] = sse_j[better]
        a = amp[rows, j]
        p[better] = np.stack([ymean - a * smean[j], a, m[j], w[j]], axis=1)[better]
    # 2. Levenberg-Marquardt on all four parameters, every curve at once; a step is kept only where
    #    it lowers that curve's residual, so the result is never worse than the grid's
    lam = np.full(C, 1e-3)
    sse = _sse(x, Y, p)
    for _ in range(iterations):
        s = _basis(x, p[:, 2], p[:, 3])                               # (C, n)
        r = p[:, :1] + p[:, 1:2] * s - Y
        ds = p[:, 1:2] * s * (1 - s) / p[:, 3:4]                      # d f / d z times amp / width
        J = np.stack([np.ones_like(s), s, -ds, -ds * (x[None, :] - p[:, 2:3]) / p[:, 3:4]], axis=2)
        g = np.einsum("cni,cn->ci", J, r)
        # a parameter at its bound that descent would push outward stays there (active set): without
        # this, clipping a step at the bound would reject the other parameters' progress too
        held = ((p <= lo) & (g > 0)) | ((p >= hi) & (g < 0))
        J = np.where(held[:, None, :], 0.0, J)
        g = np.where(held, 0.0, g)
        A = np.einsum("cni,cnj->cij", J, J)
        d = np.einsum("cii->ci", A)
        ridge = lam[:, None] * (d + 1e-9 * d.max(axis=1, keepdims=True) + 1e-300) + held
        step = np.linalg.solve(A + ridge[:, :, None] * np.eye(4), -g[:, :, None])[:, :, 0]
        trial = np.clip(p + step, lo, hi)
        new = _sse(x, Y, trial)
        good = np.isfinite(new) & (new < sse)
        gain = np.where(good, (sse - new) / np.maximum(sse, 1e-300), 0.0)
        p[good], sse[good] = trial[good], new[good]
        lam = np.where(good, lam / 3, lam * 4)
        if np.all((good & (gain < 1e-10)) | (lam > 1e10)):   # converged, or no step helps any more
            break
    out = []
    for c in range(C):
        base, amp, mid, width = (float(v) for v in p[c])
        r2 = 1.0 - sse[c] / sst[c] if sst[c] > 0 else 0.0
        out.append({"base": base, "amplitude": amp, "midpoint": mid, "width": width,
                    "onset": mid - width * LN9, "end": mid + width * LN9, "r2": float(r2)})
    return out


def _sse(x: np.ndarray, Y: np.ndarray, p: np.ndarray) -> np.ndarray:
    f = p[:, :1] + p[:, 1:2] * _basis(x, p[:, 2], p[:, 3])
    return np.einsum("cn,cn->c", f - Y, f - Y)


def fit_sigmoid(x: np.ndarray, y: np.ndarray) -> Optional[dict]:
    """One curve's logistic fit (fit_sigmoids); None if x has fewer than 5 points or no span."""
    return fit_sigmoids(x, np.asarray(y, float)[None, :])[0]


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
    return detect_many(steps, np.asarray(values, float)[None, :], direction=direction, threshold=threshold,
                       min_amplitude=min_amplitude, min_r2=min_r2, max_width_frac=max_width_frac,
                       smooth_window=smooth_window)[0]


def detect_many(steps, curves, *, direction: str = "decrease", threshold: Optional[float] = None,
                min_amplitude: float = 0.0, min_r2: float = 0.8, max_width_frac: float = 0.35,
                smooth_window: int = 5) -> list[dict]:
    """`detect` on each row of `curves` (C, n steps): the curves whose smoothed values move by at
    least `min_amplitude` are fitted together (fit_sigmoids), those with the same finite steps in one
    program. The result of each curve is what `detect` alone gives."""
    if direction not in ("decrease", "increase"):
        raise ValueError(f"direction must be 'decrease' or 'increase', not {direction!r}")
    steps, curves = np.asarray(steps, float), np.atleast_2d(np.asarray(curves, float))
    results, to_fit = [], {}
    for c, values in enumerate(curves):
        finite = np.isfinite(values)
        x, y = steps[finite], values[finite]
        result = {"detected": False, "reason": "", "threshold_step": None, "steepest_step": None,
                  "onset": None, "midpoint": None, "end": None, "width": None, "amplitude": None, "r2": None}
        results.append(result)
        if len(x) < 5:
            result["reason"] = f"too few finite points ({len(x)}) to fit"
            continue
        ys = smooth(y, smooth_window)
        if threshold is not None:
            result["threshold_step"] = threshold_crossing(x, ys, threshold, direction)
        result["steepest_step"] = steepest_change(x, ys, direction)
        moved = float(np.ptp(ys))
        if min_amplitude > 0 and moved < min_amplitude:
            # most heads' curves stay flat: no fit when the smoothed curve cannot show a change of min_amplitude
            result["reason"] = f"no phase change: the smoothed curve moves by {moved:.3g} in all, < {min_amplitude:.3g}"
            continue
        to_fit.setdefault(finite.tobytes(), []).append(c)
    for rows in to_fit.values():
        finite = np.isfinite(curves[rows[0]])
        x = steps[finite]
        for c, fit in zip(rows, fit_sigmoids(x, curves[rows][:, finite])):
            _judge(results[c], fit, x, direction, min_amplitude, min_r2, max_width_frac)
    return results


def _judge(result: dict, fit: Optional[dict], x: np.ndarray, direction: str, min_amplitude: float,
           min_r2: float, max_width_frac: float) -> None:
    """Whether a curve's sigmoid fit is a phase change (the module docstring's tests), into `result`."""
    if fit is None:
        result["reason"] = "sigmoid fit did not converge"
        return
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
