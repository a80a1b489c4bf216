"""Stages of development beyond the loss curve: critical points of the local learning coefficient
(LLC), turning points of the essential dynamics (ED), and one report that sets them beside the loss
transitions (`stages.py`) and the heads' onsets (`summary.transition`). numpy and scipy only.

Definitions (after Hoogland et al. 2024, "Loss landscape degeneracy drives stagewise development in
transformers"):

- **Log-time.** u = log(step + s1), s1 the first positive logged step, so step 0 sits one log
  interval before s1 and later steps are spaced by their ratio. A curve is resampled by linear
  interpolation (`np.interp`) onto a uniform grid in u with as many points as it has logged steps.
- **Critical point** (`critical_points`). The resampled curve is smoothed with a Gaussian of `sigma`
  grid points (`scipy.ndimage.gaussian_filter1d`, mode "nearest"); its local maxima and minima
  (kinds "max", "min") are the peaks of +/- the smoothed curve (`scipy.signal.find_peaks`) whose
  prominence is at least `min_prominence_frac` x the smoothed curve's range. The first and last grid
  points are never critical points (a peak needs a neighbour on each side), and each critical point
  is reported at the logged step nearest to it in u (its position between grid points refined by the
  parabola through the peak and its two neighbours). Missing values (NaN) are dropped first; fewer
  than 5 finite points, or a flat curve, give none. A pause in a curve that keeps rising (slope near
  zero without a change of sign) is not a maximum or minimum; the next two kinds catch it.
- **Slope in log-time.** slope = d smoothed / du on the grid, by central differences (`np.gradient`,
  one-sided at the two ends), where "smoothed" is the resampled curve smoothed with the same
  Gaussian but with its ends extended by point reflection (`np.pad`, mode "reflect", reflect_type
  "odd") rather than by repeating the end value. Within 4 sigma of an end this differs from the
  "nearest" smoothing above; it keeps a straight line's slope constant up to the ends, so a curve
  linear in log-time has no steepest point and the edges invent no plateau. m = max |slope| over the
  whole grid, ends included; a curve with m = 0 has neither of the next two kinds.
- **Steepest point** (kind "steepest"). A local maximum of |slope| (`find_peaks`, so never the first
  or last grid point) with prominence (in slope units) >= `min_prominence_frac` x m, reported like a
  maximum, with "slope" (the signed slope at its grid point, LLC units per unit of u) and "direction"
  ("rise" if the slope is positive, else "fall"). The developmental milestone itself: where the
  curve changes fastest in log-time.
- **Plateau point** (kind "plateau"). A local minimum of |slope| (a peak of -|slope|, never an end
  point) with prominence >= `min_prominence_frac` x m (so a flat stretch with a little noise gives
  one point, its flattest, not one per wiggle) whose |slope| is below `flat_frac` x m: a
  near-critical point where the curve flattens between two changes (Hoogland et al.'s boundaries in
  a curve that keeps rising). A plateau point within one grid point of a maximum or minimum (one
  that passes the prominence filter above, whether or not its kind is asked for) is dropped: it is
  the same point. The slope of a logistic in log-time falls off monotonically on both sides of its
  midpoint, so a single rise between flat stretches has one steepest point and no plateau point
  (the flat stretches reach the ends); two rises have a plateau point between them.
- **Steepest change** (`steepest_point`). The grid point of the largest |slope| (m itself, an end
  included), refined by the parabola when interior and reported at the nearest logged step. It
  must stand out: |slope| has to fall below (1 - `min_prominence_frac`) x m somewhere on each side
  of it (an end has one side), else there is none (a straight line in log-time has no steepest
  change); none either for fewer than 5 finite points or m = 0. Interior, it is then the steepest
  point of largest |slope| (its prominence is the one find_peaks gives); at an end it says the
  curve changes fastest at the first (or last) logged step. Grid points whose |slope| equals m up to
  rounding (relative 1e-9) are ties, and an interior one is taken first, so a flat top of |slope|
  that reaches an end has no steepest change, whichever point rounding happens to favour.
- **Essential dynamics** (`essential_dynamics`). The model's outputs on a fixed probe set at each
  logged step, (N steps, S seeds, D), are one point per (step, seed) in R^D. PCA over all N*S rows
  at once (centred at their mean; SVD), so every seed is drawn in the same axes. Each PC's sign is
  fixed so that seed 0 moves in its positive direction from the first to the last step. The
  *turning points* of a seed are the maxima and minima of each of its PC curves (PCs explaining less
  than `min_variance_ratio` of the variance are not searched: their curves are noise), and its ED
  *boundaries* are the distinct steps of those turning points. Its *fastest* step is where the
  speed sqrt(sum_i slope_i^2) over those same PCs (slope_i: the slope in log-time of PC i's curve,
  as above, over the steps where all of them are finite) is largest, found as `steepest_point` finds
  the LLC's steepest change (an end included; None with fewer than 5 such steps or no motion).
- **Loss window** (`stage_report`). A change-point transition of the main loss with onset a and end
  b (not censored at the run's start) covers [a - tol, b + tol] for a detector whose boundaries lie
  on the logged steps g of that detector, with tol = max(window_tolerance x (b - a), the largest gap
  between consecutive steps of g that overlaps [a, b]): a boundary cannot be placed more finely than
  the detector's own step spacing, nor is it asked to be closer than a fraction of the width. Every
  kind of LLC boundary (max, min, steepest, plateau) is set against these windows, as is the single
  steepest change of the LLC and the fastest step of the essential dynamics.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from lab.analysis import stats
from lab.analysis.summary import transition

MIN_POINTS = 5              # fewer finite points than this: no critical points
FLAT = 1e-9                 # a smoothed range below FLAT x max |value| is a flat curve
KINDS = ("max", "min", "steepest", "plateau")     # critical_points' kinds; stage_report asks the LLC for all
DETECTORS = ("loss", "llc", "essential_dynamics", "heads")
ALIGNED = ("llc", "essential_dynamics")       # detectors whose boundaries are set against the loss windows
FASTEST = {"llc_steepest": "llc", "ed_fastest": "essential_dynamics"}   # one step per seed, and its detector
VERSION = 2                 # of stage_report's layout: 2 added the steepest / plateau kinds and FASTEST
HEAD_GROUPS = ("induction", "prev_token")


# ----------------------------------------------------------------------------- one curve


def log_time(steps) -> np.ndarray:
    """u = log(step + s1), s1 the first positive step (1 if none)."""
    x = np.asarray(steps, float)
    if np.any(x < 0):
        raise ValueError("steps must be >= 0")
    positive = x[x > 0]
    s1 = float(positive.min()) if len(positive) else 1.0
    return np.log(x + s1)


def _finite_sorted(steps, values) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(steps, float).ravel(), np.asarray(values, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps {x.shape} and values {y.shape} differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def smoothed_curve(steps, values, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The curve as `critical_points` sees it: (steps of the uniform log-time grid, the Gaussian-
    smoothed values there). NaNs dropped; empty arrays for fewer than 2 finite points."""
    x, y = _finite_sorted(steps, values)
    if len(x) < 2:
        return np.array([]), np.array([])
    u = log_time(x)
    s1 = math.exp(u[0]) - x[0]
    grid = np.linspace(u[0], u[-1], len(u))
    ys = np.interp(grid, u, y)
    if sigma > 0:
        ys = gaussian_filter1d(ys, sigma, mode="nearest")
    return np.exp(grid) - s1, ys


def _vertex(grid: np.ndarray, ys: np.ndarray, i: int) -> float:
    """Where the parabola through grid points i-1, i, i+1 peaks (within half a grid step of i): late
    in training the grid is coarser than the logged steps, so the grid point alone could be a
    logged step off. At an end of the grid, the end itself."""
    if i <= 0 or i >= len(ys) - 1:
        return float(grid[min(max(i, 0), len(grid) - 1)])
    a, b, c = ys[i - 1], ys[i], ys[i + 1]
    curvature = a - 2 * b + c
    offset = 0.5 * (a - c) / curvature if curvature != 0 else 0.0
    return float(grid[i] + np.clip(offset, -0.5, 0.5) * (grid[1] - grid[0]))


def _log_grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u of the logged steps, the uniform grid in u with as many points)."""
    u = log_time(x)
    return u, np.linspace(u[0], u[-1], len(u))


def _grid_slope(u: np.ndarray, grid: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """d smoothed / du on the grid, the ends extended by point reflection before smoothing (module
    docstring: slope in log-time)."""
    ys = np.interp(grid, u, y)
    if sigma > 0:
        r = int(4.0 * sigma + 0.5)            # gaussian_filter1d's own radius (truncate = 4)
        ys = gaussian_filter1d(np.pad(ys, r, mode="reflect", reflect_type="odd"), sigma, mode="nearest")
        ys = ys[r:r + len(grid)]
    return np.gradient(ys, grid[1] - grid[0])


def _nearest_step(x: np.ndarray, u: np.ndarray, at: float) -> int:
    return int(round(x[int(np.argmin(np.abs(u - at)))]))


def critical_points(steps, values, sigma: float = 2.0, min_prominence_frac: float = 0.1, flat_frac: float = 0.1,
                    kinds=("max", "min")) -> list[dict]:
    """The critical points of the curve in log-time (module docstring) of the `kinds` asked for, out
    of KINDS ("max", "min", "steepest", "plateau"; by default the maxima and minima only), sorted by
    step. Each is {"step": the nearest logged step (int), "kind", "value": the smoothed value there,
    "prominence": in the curve's units for "max"/"min", in slope units (curve units per unit of u)
    for "steepest"/"plateau"}; "steepest" and "plateau" points add "slope" (signed d smoothed / du
    at the point) and "steepest" ones "direction" ("rise" / "fall")."""
    kinds = tuple(kinds)
    if set(kinds) - set(KINDS):
        raise ValueError(f"unknown kinds {sorted(set(kinds) - set(KINDS))}; choose from {KINDS}")
    x, y = _finite_sorted(steps, values)
    if len(x) < MIN_POINTS:
        return []
    u, grid = _log_grid(x)
    if not grid[-1] > grid[0]:
        return []
    _, ys = smoothed_curve(x, y, sigma)
    span = float(np.ptp(ys))
    if not span > FLAT * max(float(np.abs(ys).max()), 1e-300):
        return []
    found: dict[tuple[int, str], dict] = {}

    def keep(point: dict) -> None:
        key = (point["step"], point["kind"])
        if key not in found or found[key]["prominence"] < point["prominence"]:
            found[key] = point

    extrema: list[int] = []
    for kind, sign in (("max", 1.0), ("min", -1.0)):
        peaks, props = find_peaks(sign * ys, prominence=min_prominence_frac * span)
        extrema += [int(i) for i in peaks]
        if kind in kinds:
            for i, prominence in zip(peaks, props["prominences"]):
                keep({"step": _nearest_step(x, u, _vertex(grid, ys, i)), "kind": kind, "value": float(ys[i]),
                      "prominence": float(prominence)})
    if {"steepest", "plateau"} & set(kinds):
        slope = _grid_slope(u, grid, y, sigma)
        size = np.abs(slope)
        top = float(size.max())
        if top > 0:
            for kind, sign in (("steepest", 1.0), ("plateau", -1.0)):
                if kind not in kinds:
                    continue
                peaks, props = find_peaks(sign * size, prominence=min_prominence_frac * top)
                for i, prominence in zip(peaks, props["prominences"]):
                    if kind == "plateau" and (size[i] >= flat_frac * top or any(abs(i - e) <= 1 for e in extrema)):
                        continue
                    point = {"step": _nearest_step(x, u, _vertex(grid, size, i)), "kind": kind,
                             "value": float(ys[i]), "prominence": float(prominence), "slope": float(slope[i])}
                    if kind == "steepest":
                        point["direction"] = "rise" if slope[i] > 0 else "fall"
                    keep(point)
    return sorted(found.values(), key=lambda p: (p["step"], KINDS.index(p["kind"])))


def _fastest(x: np.ndarray, u: np.ndarray, grid: np.ndarray, size: np.ndarray,
             min_prominence_frac: float) -> Optional[dict]:
    """The grid point of the largest `size` (an end included), refined by the parabola when
    interior, at the nearest logged step; None when nothing moves or when `size` falls by less than
    min_prominence_frac x its maximum on either side (an end: on its one side) of that point."""
    top = float(size.max())
    if not top > 0:
        return None
    tied = np.flatnonzero(size >= top * (1 - 1e-9))          # equal up to rounding: prefer an interior point
    inner = tied[(tied > 0) & (tied < len(size) - 1)]
    i = int(inner[0] if len(inner) else tied[0])
    base = max(float(side.min()) for side in (size[:i], size[i + 1:]) if len(side))
    if top - base < min_prominence_frac * top:
        return None
    return {"step": _nearest_step(x, u, _vertex(grid, size, i)), "index": i, "at_end": i in (0, len(size) - 1)}


def steepest_point(steps, values, sigma: float = 2.0, min_prominence_frac: float = 0.1) -> Optional[dict]:
    """The curve's steepest change in log-time (module docstring): {"step" (the nearest logged
    step), "slope" (signed d smoothed / du there), "direction" ("rise" / "fall"), "value" (the
    smoothed value there, as `smoothed_curve` has it), "at_end" (True when the largest |slope| is at
    the first or last grid point)}, or None (fewer than 5 finite points, no slope anywhere, or a
    slope too even to have a steepest place)."""
    x, y = _finite_sorted(steps, values)
    if len(x) < MIN_POINTS:
        return None
    u, grid = _log_grid(x)
    if not grid[-1] > grid[0]:
        return None
    slope = _grid_slope(u, grid, y, sigma)
    best = _fastest(x, u, grid, np.abs(slope), min_prominence_frac)
    if best is None:
        return None
    i = best["index"]
    _, ys = smoothed_curve(x, y, sigma)
    return {"step": best["step"], "slope": float(slope[i]), "direction": "rise" if slope[i] > 0 else "fall",
            "value": float(ys[i]), "at_end": best["at_end"]}


# ----------------------------------------------------------------------------- essential dynamics


def _sign_reference(P: np.ndarray, i: int) -> float:
    """Seed 0's displacement along PC i from its first to its last finite step, else the mean
    seed's: the sign that makes it positive orients the PC (0 when neither moves)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # steps where every seed is missing
        mean = np.nanmean(P[:, :, i], axis=1) if np.isfinite(P[:, :, i]).any() else P[:, 0, i]
    for curve in (P[:, 0, i], mean):
        ok = np.flatnonzero(np.isfinite(curve))
        if len(ok) >= 2 and curve[ok[-1]] != curve[ok[0]]:
            return float(curve[ok[-1]] - curve[ok[0]])
    return 0.0


def essential_dynamics(steps, outputs, n_components: int = 3, sigma: float = 2.0,
                       min_prominence_frac: float = 0.1, min_variance_ratio: float = 0.01) -> dict:
    """PCA of the outputs (N steps, S seeds, D) over all N*S rows jointly, and each seed's turning
    points (module docstring). Rows with a non-finite value take no part in the fit and project to
    None. Returns {"explained_variance_ratio": [k floats], "n_components": k, "per_seed": [{"pcs": N x
    k lists, "turning_points": [{"step", "pc", "kind", "value", "prominence"}], "boundaries": sorted
    distinct steps, "fastest": the step where the seed moves fastest in log-time through the PCs
    searched for turning points, "fastest_speed": that speed (PC units per unit of u); both None when
    undefined}]}, with k = min(n_components, D, finite rows) and PC indices counted from 0."""
    steps = np.asarray(steps, float)
    Y = np.asarray(outputs, float)
    if Y.ndim == 2:
        Y = Y[:, None, :]
    if Y.ndim != 3 or Y.shape[0] != len(steps):
        raise ValueError(f"outputs must be (N steps, S seeds, D) with N = {len(steps)}, not {Y.shape}")
    N, S, D = Y.shape
    X = Y.reshape(N * S, D)
    ok = np.isfinite(X).all(axis=1)
    k = int(min(n_components, D, ok.sum()))
    P = np.full((N, S, max(k, 0)), np.nan)
    ratio: list[float] = []
    if k > 0:
        mu = X[ok].mean(axis=0)
        _, sv, vt = np.linalg.svd(X[ok] - mu, full_matrices=False)
        total = float(np.sum(sv ** 2))
        ratio = [float(v ** 2 / total) if total > 0 else 0.0 for v in sv[:k]]
        proj = np.full((N * S, k), np.nan)
        proj[ok] = (X[ok] - mu) @ vt[:k].T
        P = proj.reshape(N, S, k)
        for i in range(k):
            ref = _sign_reference(P, i)
            if ref < 0 or (ref == 0 and vt[i][np.argmax(np.abs(vt[i]))] < 0):
                P[:, :, i] *= -1
    searched = [i for i in range(k) if ratio[i] >= min_variance_ratio]
    per_seed = []
    for s in range(S):
        turning = []
        for i in searched:
            turning += [{**p, "pc": i} for p in critical_points(steps, P[:, s, i], sigma, min_prominence_frac)]
        turning.sort(key=lambda p: (p["step"], p["pc"]))
        fastest = _fastest_motion(steps, P[:, s, searched], sigma, min_prominence_frac) if searched else None
        per_seed.append({"pcs": [[_num(v) for v in row] for row in P[:, s, :]],
                         "turning_points": turning,
                         "boundaries": sorted({p["step"] for p in turning}),
                         "fastest": fastest["step"] if fastest else None,
                         "fastest_speed": fastest["speed"] if fastest else None})
    return {"explained_variance_ratio": ratio, "n_components": k, "per_seed": per_seed}


def _fastest_motion(steps: np.ndarray, pcs: np.ndarray, sigma: float, min_prominence_frac: float) -> Optional[dict]:
    """{"step", "speed"}: where a seed's (N, k) PC curves move fastest in log-time (module
    docstring), or None."""
    ok = np.isfinite(steps) & np.isfinite(pcs).all(axis=1)
    order = np.argsort(steps[ok], kind="stable")
    x, Y = steps[ok][order], pcs[ok][order]
    if len(x) < MIN_POINTS:
        return None
    u, grid = _log_grid(x)
    if not grid[-1] > grid[0]:
        return None
    speed = np.sqrt(sum(_grid_slope(u, grid, Y[:, i], sigma) ** 2 for i in range(Y.shape[1])))
    best = _fastest(x, u, grid, speed, min_prominence_frac)
    return {"step": best["step"], "speed": float(speed[best["index"]])} if best else None


# ----------------------------------------------------------------------------- the stage report


def _num(v):
    """A plain JSON number: int stays int, finite float -> float, NaN/inf/None -> None."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def _json(obj):
    """Tuples to lists, numpy scalars to plain numbers, NaN to None, all the way down."""
    if isinstance(obj, dict):
        return {str(k): _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json(obj.tolist())
    if isinstance(obj, (str, type(None))):
        return obj
    if isinstance(obj, (bool, np.bool_, int, float, np.integer, np.floating)):
        return _num(obj)
    return obj


def _describe(values) -> dict:
    return _json(stats.describe(values))


def _max_gap(grid: np.ndarray, lo: float, hi: float) -> float:
    """The largest gap between consecutive steps of `grid` that overlaps [lo, hi] (0 without two steps)."""
    if len(grid) < 2:
        return 0.0
    a, b = grid[:-1], grid[1:]
    overlap = (b >= lo) & (a <= hi)
    gaps = (b - a)[overlap]
    return float(gaps.max()) if len(gaps) else 0.0


def _window(t: dict, grid: np.ndarray, frac: float) -> list[float]:
    tol = max(frac * float(t["width"]), _max_gap(grid, float(t["onset"]), float(t["end"])))
    return [float(t["onset"]) - tol, float(t["end"]) + tol]


def _loss_transitions(entry: dict, seed: int) -> list[dict]:
    """Every change-point transition of one seed's main loss, censored ones flagged; for a summary
    without change-point stages, the sigmoid's transition (if any) as the only one."""
    st = entry.get("stages")
    if isinstance(st, list):
        found = st[seed] if seed < len(st) and isinstance(st[seed], dict) else {}
        return [{k: t.get(k) for k in ("onset", "midpoint", "end", "width", "before", "after", "change",
                                       "censored_start")} for t in found.get("transitions", [])]
    t = transition(entry, seed) if seed < len(entry.get("per_seed") or []) else None
    if t is None or t.get("onset") is None or t.get("end") is None:
        return []
    return [{"onset": t["onset"], "midpoint": t["midpoint"], "end": t["end"], "width": t["width"],
             "before": None, "after": None, "change": None, "censored_start": False}]


def _head_onsets(phase: dict, seed: int, formed: Optional[list]) -> Optional[list[dict]]:
    groups = [g for g in HEAD_GROUPS if isinstance(phase.get(g), dict)]
    if not groups:
        return None
    out = []
    for group in groups:
        for head, entry in phase[group].items():
            if not isinstance(entry, dict) or seed >= len(entry.get("per_seed") or []):
                continue
            t = transition(entry, seed)
            if t is None or t.get("onset") is None:
                continue
            out.append({"step": float(t["onset"]), "head": head, "group": group, "midpoint": t.get("midpoint"),
                        "end": t.get("end"), "detector": t.get("detector"),
                        "formed": (head in formed) if group == "induction" and formed is not None else None})
    return sorted(out, key=lambda h: (h["step"], h["group"], h["head"]))


def _align(points: list[dict], windows: list[tuple[int, dict, list[float]]]) -> list[dict]:
    """For each boundary: in a loss window? (which transition), signed distance to the nearest onset;
    its kind when it has one."""
    out = []
    for p in points:
        step = float(p["step"])
        inside = [k for k, _, (lo, hi) in windows if lo <= step <= hi]
        nearest = min(windows, key=lambda w: abs(step - float(w[1]["onset"])), default=None)
        out.append({"step": p["step"], **({"kind": p["kind"]} if "kind" in p else {}),
                    "in_loss_window": bool(inside) if windows else None,
                    "transition": inside[0] if inside else None,
                    "nearest_onset": float(nearest[1]["onset"]) if nearest else None,
                    "to_nearest_onset": step - float(nearest[1]["onset"]) if nearest else None})
    return out


def _mean_where(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[Optional[float], int]:
    sel = mask & np.isfinite(y)
    return (float(y[sel].mean()) if sel.any() else None), int(sel.sum())


def _llc_levels(x: np.ndarray, y: np.ndarray, transitions: list[dict]) -> list[dict]:
    """Mean LLC on the plateau before each timed loss transition (after the previous transition's
    end, censored ones included), inside it [onset, end], and on the plateau after it (before the
    next transition's onset)."""
    out = []
    for k, t in enumerate(transitions):
        if t["censored_start"]:
            continue
        prev_end = max((float(u["end"]) for u in transitions[:k]), default=-math.inf)
        next_onset = min((float(u["onset"]) for u in transitions[k + 1:]), default=math.inf)
        onset, end = float(t["onset"]), float(t["end"])
        before, nb = _mean_where(x, y, (x > prev_end) & (x < onset))
        inside, ni = _mean_where(x, y, (x >= onset) & (x <= end))
        after, na = _mean_where(x, y, (x > end) & (x < next_onset))
        out.append({"transition": k, "onset": onset, "end": end, "before": before, "inside": inside, "after": after,
                    "n_before": nb, "n_inside": ni, "n_after": na})
    return out


def _ordinal_distribution(per_seed_steps: list[Optional[list[float]]]) -> list[dict]:
    """For k = 1, 2, ...: describe the k-th boundary's step over the seeds that have a k-th."""
    lists = [s for s in per_seed_steps if s]
    depth = max((len(s) for s in lists), default=0)
    return [{"ordinal": k + 1, **_describe(s[k] for s in lists if len(s) > k)} for k in range(depth)]


def stage_report(summary: dict, llc: Optional[dict], outputs: Optional[dict], *, sigma: float = 2.0,
                 min_prominence_frac: float = 0.1, flat_frac: float = 0.1, window_tolerance: float = 0.25,
                 n_components: int = 3) -> dict:
    """The stage boundaries of a run by every detector, per seed, their agreement with the loss
    transitions and their spread over seeds; it becomes summary.json's "stages". `summary` is the
    summary dict (its "phase" and "seeds"), `llc` the dict of `rundir.load_llc` and `outputs` that of
    `rundir.load_outputs` (either None when absent). Definitions in the module docstring. All values
    are plain JSON (None where a value is undefined); steps are training steps, seeds are indexed as
    in summary["seeds"].

    Keys:
    - "version" (VERSION), "main_metric", "seeds", "settings" {"sigma", "min_prominence_frac",
      "flat_frac", "window_tolerance", "n_components", "llc_kinds", "time", "slope", "window"} (the
      last three in words);
    - "measured": {detector: bool} for "loss", "llc", "essential_dynamics", "heads";
    - "llc": {"source", "nbeta", "burn_in", "n_estimates", "not_settled", "nonfinite_chains"} or None;
    - "essential_dynamics": {"explained_variance_ratio", "n_components", "kind"} or None;
    - "per_seed": one dict per seed:
      - "seed"; "loss_transitions": every change-point transition of the main loss (onset, midpoint,
        end, width, before, after, change, censored_start) with "windows" {detector: [lo, hi]} and
        "matched" {detector: True/False if any boundary of the detector (any kind) falls in its
        window, None if the detector has no boundaries or is not measured} (both empty for a
        censored one);
      - "main_transition": summary.transition's timed transition (onset, midpoint, end, width,
        detector) or None;
      - "boundaries": {"loss": onsets and ends of the uncensored transitions, "loss_censored": ends
        of censored ones, "llc": critical points of every kind in KINDS [{"step", "kind" ("max",
        "min", "steepest", "plateau"), "value", "prominence", and for steepest / plateau "slope",
        for steepest "direction"}] (critical_points),
        "essential_dynamics": distinct turning-point steps, "heads": [{"step" (onset), "head",
        "group", "midpoint", "end", "detector", "formed"}]}; a detector not measured for the seed
        (no data, or fewer than 5 finite estimates) is None;
      - "turning_points": the ED turning points [{"step", "pc", "kind", "value", "prominence"}] or None;
      - "alignment": {"llc" / "essential_dynamics": [{"step", "kind" (LLC only), "in_loss_window",
        "transition" (index into loss_transitions or None), "nearest_onset", "to_nearest_onset" (step -
        onset, signed)}] or None};
      - "in_loss_window": {detector: True if any of its boundaries (any kind) lies in an uncensored
        loss window, False if none does, None when the seed has no uncensored loss transition or the
        detector no boundaries};
      - "llc_steepest": the step of the LLC's steepest change (steepest_point: the largest |slope|
        in log-time, an end included), "llc_steepest_slope" (signed, LLC per unit of u),
        "llc_steepest_at_end" (True when that is the first or last grid point), and
        "llc_steepest_in_loss_window" (True if the step lies in an uncensored loss window of the LLC,
        False if not, None when either is missing); all None without LLC estimates;
      - "ed_fastest": the step where the seed's essential dynamics move fastest
        (essential_dynamics' "fastest"), "ed_fastest_speed", and "ed_fastest_in_loss_window" (as for
        the LLC, with the ED windows);
      - "nearest_to_main": {"llc" / "essential_dynamics" / "heads": {"step", "offset" (step - the
        main transition's onset)} or None};
      - "llc_levels": per uncensored loss transition, the mean LLC before / inside / after it
        ({"transition", "onset", "end", "before", "inside", "after", "n_before", "n_inside",
        "n_after"}), or None without LLC estimates.
    - "in_loss_window_per_seed": {"llc" / "essential_dynamics" / "llc_steepest" / "ed_fastest":
      [True/False/None per seed]} (the last two: the per-seed "..._in_loss_window" above);
    - "in_loss_window": {"llc" / "essential_dynamics" / "llc_steepest" / "ed_fastest": {"k", "n"
      (seeds measured), "fraction", "ci95" (exact binomial)}};
    - "distribution": {"loss_onset", "loss_end", "llc" (all kinds), "llc_max", "llc_min",
      "llc_steepest_points" (kind steepest), "llc_plateau", "essential_dynamics", "heads":
      [{"ordinal": k (1 = first), "n", "mean", "std", "ci95", "min", "max"}]} over the seeds that
      have a k-th such boundary (stats.describe); "llc_steepest" and "ed_fastest": describe of the
      per-seed step (one per seed, not by ordinal); and "head_onsets": {"<group>/<head>": describe};
    - "nearest_to_main": {"llc" / "essential_dynamics" / "heads": {"step": describe, "offset":
      describe}};
    - "llc_direction": the first uncensored loss transition's LLC levels over seeds, paired within
      each seed (stats.paired_differences): {"before", "inside", "after": describe,
      "inside_minus_before", "after_minus_before", "after_minus_inside": {n, mean, std, ci95, min,
      max, differences}}, or None without LLC estimates.
    """
    phase = summary.get("phase") or {}
    main = summary.get("main_metric") or "loss_repeat"
    main_entry = phase.get(main) if isinstance(phase.get(main), dict) else {}
    n_seeds = (len(summary["seeds"]) if isinstance(summary.get("seeds"), list)
               else len(main_entry.get("per_seed") or main_entry.get("stages") or [])
               or (np.asarray(llc["llc"]).shape[1] if llc else 0)
               or (np.asarray(outputs["outputs"]).shape[1] if outputs else 0))
    seeds = summary.get("seeds") if isinstance(summary.get("seeds"), list) else list(range(n_seeds))

    llc_steps = np.asarray(llc["steps"], float) if llc else np.array([])
    llc_values = np.asarray(llc["llc"], float).reshape(len(llc_steps), -1) if llc else None
    ed = None
    out_steps = np.array([])
    if outputs is not None:
        out_steps = np.asarray(outputs["steps"], float)
        if len(out_steps) >= MIN_POINTS:
            ed = essential_dynamics(out_steps, outputs["outputs"], n_components=n_components, sigma=sigma,
                                    min_prominence_frac=min_prominence_frac)
    grids = {"llc": llc_steps, "essential_dynamics": out_steps}
    formed_all = summary.get("induction_heads_per_seed")

    per_seed = []
    for s in range(n_seeds):
        transitions = _loss_transitions(main_entry, s) if main_entry else []
        timed = [(k, t) for k, t in enumerate(transitions) if not t["censored_start"]]
        main_t = transition(main_entry, s) if main_entry and s < len(main_entry.get("per_seed") or []) else None
        if main_t is not None:
            main_t = {k: main_t.get(k) for k in ("onset", "midpoint", "end", "width", "detector")}
        points: dict[str, Optional[list]] = {"llc": None, "essential_dynamics": None}
        levels = steepest = None
        if llc_values is not None and s < llc_values.shape[1]:
            y = llc_values[:, s]
            if np.isfinite(y).sum() >= MIN_POINTS:
                points["llc"] = critical_points(llc_steps, y, sigma, min_prominence_frac, flat_frac, kinds=KINDS)
                steepest = steepest_point(llc_steps, y, sigma, min_prominence_frac)
            levels = _llc_levels(llc_steps, y, transitions)
        turning = fastest = fastest_speed = None
        if ed is not None and s < len(ed["per_seed"]):
            turning = ed["per_seed"][s]["turning_points"]
            points["essential_dynamics"] = [{"step": b} for b in ed["per_seed"][s]["boundaries"]]
            fastest, fastest_speed = ed["per_seed"][s]["fastest"], ed["per_seed"][s]["fastest_speed"]
        formed = formed_all[s] if isinstance(formed_all, list) and s < len(formed_all) else None
        heads = _head_onsets(phase, s, formed)

        alignment, in_window, matched = {}, {}, [{} for _ in transitions]
        windows = {det: [(k, t, _window(t, grids[det], window_tolerance)) for k, t in timed] for det in ALIGNED}
        for det in ALIGNED:
            pts = points[det]
            alignment[det] = _align(pts, windows[det]) if pts is not None else None
            in_window[det] = (any(a["in_loss_window"] for a in alignment[det])
                              if timed and alignment[det] else None)
            for k, _, (lo, hi) in windows[det]:
                matched[k][det] = (any(lo <= p["step"] <= hi for p in pts) if pts else None)
        single = {"llc_steepest": steepest["step"] if steepest else None, "ed_fastest": fastest}
        single_in = {name: (any(lo <= float(step) <= hi for _, _, (lo, hi) in windows[FASTEST[name]])
                            if timed and step is not None else None) for name, step in single.items()}
        loss_list = []
        for k, t in enumerate(transitions):
            w = {det: next((win for j, _, win in windows[det] if j == k), None) for det in ALIGNED}
            loss_list.append({**t, "windows": {d: v for d, v in w.items() if v is not None}, "matched": matched[k]})

        nearest = {}
        for det, pts in (("llc", points["llc"]), ("essential_dynamics", points["essential_dynamics"]),
                         ("heads", heads)):
            if main_t is None or not pts or main_t.get("onset") is None:
                nearest[det] = None
                continue
            best = min(pts, key=lambda p: abs(float(p["step"]) - float(main_t["onset"])))
            nearest[det] = {"step": best["step"], "offset": float(best["step"]) - float(main_t["onset"])}

        per_seed.append({
            "seed": seeds[s] if s < len(seeds) else s,
            "loss_transitions": loss_list,
            "main_transition": main_t,
            "boundaries": {
                "loss": sorted(float(t[e]) for _, t in timed for e in ("onset", "end")),
                "loss_censored": sorted(float(t["end"]) for t in transitions if t["censored_start"]),
                "llc": points["llc"],
                "essential_dynamics": ([p["step"] for p in points["essential_dynamics"]]
                                       if points["essential_dynamics"] is not None else None),
                "heads": heads},
            "turning_points": turning,
            "alignment": alignment,
            "in_loss_window": in_window,
            "nearest_to_main": nearest,
            "llc_levels": levels,
            "llc_steepest": single["llc_steepest"],
            "llc_steepest_slope": steepest["slope"] if steepest else None,
            "llc_steepest_at_end": steepest["at_end"] if steepest else None,
            "llc_steepest_in_loss_window": single_in["llc_steepest"],
            "ed_fastest": single["ed_fastest"],
            "ed_fastest_speed": fastest_speed,
            "ed_fastest_in_loss_window": single_in["ed_fastest"],
        })

    in_window_per_seed = {det: [p["in_loss_window"][det] for p in per_seed] for det in ALIGNED}
    in_window_per_seed.update({name: [p[f"{name}_in_loss_window"] for p in per_seed] for name in FASTEST})
    fractions = {}
    for det, flags in in_window_per_seed.items():
        measured = [f for f in flags if f is not None]
        k, n = sum(measured), len(measured)
        fractions[det] = {"k": k, "n": n, "fraction": k / n if n else None, "ci95": stats.binomial_ci(k, n)}

    def steps_of(det, kind=None):
        out = []
        for p in per_seed:
            b = p["boundaries"][det]
            if b is None:
                out.append(None)
            elif det == "llc":
                out.append([float(c["step"]) for c in b if kind is None or c["kind"] == kind])
            elif det == "heads":
                out.append([float(h["step"]) for h in b])
            else:
                out.append([float(v) for v in b])
        return out

    loss_timed = [[t for t in p["loss_transitions"] if not t["censored_start"]] for p in per_seed]
    distribution = {
        "loss_onset": _ordinal_distribution([[float(t["onset"]) for t in ts] for ts in loss_timed]),
        "loss_end": _ordinal_distribution([[float(t["end"]) for t in ts] for ts in loss_timed]),
        "llc": _ordinal_distribution(steps_of("llc")),
        "llc_max": _ordinal_distribution(steps_of("llc", "max")),
        "llc_min": _ordinal_distribution(steps_of("llc", "min")),
        "llc_steepest_points": _ordinal_distribution(steps_of("llc", "steepest")),
        "llc_plateau": _ordinal_distribution(steps_of("llc", "plateau")),
        "essential_dynamics": _ordinal_distribution(steps_of("essential_dynamics")),
        "heads": _ordinal_distribution(steps_of("heads")),
        **{name: _describe(p[name] for p in per_seed if p[name] is not None) for name in FASTEST},
    }
    head_onsets: dict[str, list] = {}
    for p in per_seed:
        for h in p["boundaries"]["heads"] or []:
            head_onsets.setdefault(f"{h['group']}/{h['head']}", []).append(h["step"])
    distribution["head_onsets"] = {name: _describe(v) for name, v in sorted(head_onsets.items())}
    nearest_to_main = {det: {"step": _describe(p["nearest_to_main"][det]["step"] for p in per_seed
                                               if p["nearest_to_main"][det]),
                             "offset": _describe(p["nearest_to_main"][det]["offset"] for p in per_seed
                                                 if p["nearest_to_main"][det])}
                       for det in ("llc", "essential_dynamics", "heads")}

    direction = None
    if llc_values is not None:
        first = [next(iter(p["llc_levels"] or []), None) for p in per_seed]
        level = {part: [f[part] if f else None for f in first] for part in ("before", "inside", "after")}
        direction = {**{part: _describe(v) for part, v in level.items()},
                     **{f"{a}_minus_{b}": _json(stats.paired_differences(level[a], level[b]))
                        for a, b in (("inside", "before"), ("after", "before"), ("after", "inside"))}}

    llc_info = None
    if llc:
        llc_info = {"source": str(llc.get("source", "")), "nbeta": _num(np.asarray(llc.get("nbeta", np.nan)).item()),
                    "burn_in": _num(np.asarray(llc.get("burn_in", np.nan)).item()), "n_estimates": int(len(llc_steps)),
                    "not_settled": int(np.asarray(llc.get("not_settled", False)).sum()),
                    "nonfinite_chains": int(np.asarray(llc.get("nonfinite", False)).sum())}
    report = {
        "version": VERSION,
        "main_metric": main,
        "seeds": list(seeds),
        "settings": {"sigma": sigma, "min_prominence_frac": min_prominence_frac, "flat_frac": flat_frac,
                     "window_tolerance": window_tolerance, "n_components": n_components, "llc_kinds": list(KINDS),
                     "time": "u = log(step + s1), s1 the first positive logged step; curves resampled uniformly "
                             "in u, Gaussian-smoothed (sigma in grid points)",
                     "slope": "d smoothed / du (ends extended by point reflection before smoothing); steepest: "
                              "local maxima of |slope| with prominence >= min_prominence_frac x max |slope|; "
                              "plateau: local minima of |slope| as prominent and below flat_frac x max |slope|, "
                              "not next to a maximum or minimum",
                     "window": "a loss transition [onset, end] widened on each side by max(window_tolerance x "
                               "width, the detector's largest step gap overlapping it)"},
        "measured": {"loss": bool(main_entry), "llc": llc_values is not None, "essential_dynamics": ed is not None,
                     "heads": any(p["boundaries"]["heads"] is not None for p in per_seed)},
        "llc": llc_info,
        "essential_dynamics": ({"explained_variance_ratio": ed["explained_variance_ratio"],
                                "n_components": ed["n_components"], "kind": str(outputs.get("kind", ""))}
                               if ed is not None else None),
        "per_seed": per_seed,
        "in_loss_window_per_seed": in_window_per_seed,
        "in_loss_window": fractions,
        "distribution": distribution,
        "nearest_to_main": nearest_to_main,
        "llc_direction": direction,
    }
    return _json(report)
