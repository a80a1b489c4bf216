"""How long a loss curve sits on its plateau and how abruptly it leaves, from level crossings
(numpy, host side; Singh et al. 2024, "What needs to go right for an induction head?").

A decreasing loss curve sits on a plateau at `plateau_level` (Singh et al.'s ln 2) and then falls
to `final_level`. With the drop D = plateau_level - final_level, the curve is p % of the way down
when it is at or below the *p % level* plateau_level - p/100 * D. Then
- `t10`: the step at which the curve falls below the 10 % level for good, `t90` the same at 90 %;
- `plateau_length` = t10: the steps from the start of training (step 0) until the curve leaves the
  plateau;
- `width` = t90 - t10: how abrupt the drop is (0 <= width: a curve that stays below the 90 % level
  stays below the 10 % one).

"For good" is the rule that keeps noise from making an early t10: a crossing is the first step
after the *last* logged point above the level, linearly interpolated between that point and the
next. A wiggle on the plateau that dips below the level and comes back above it is not a crossing;
a curve that ends above the level has never crossed it, and its t is None, never a number (a seed
that never leaves the plateau within the run is "not crossed"). Noise around the 90 % level after
the drop pushes t90 late; `smooth_window` (a centred moving average, `phase.smooth`) first smooths
the curve for such curves. Points that are not finite are dropped.

A curve that has no logged point above the 10 % level was never on the plateau (a clamped run with
nothing left to learn): its `plateau_length` is 0 (it spent no steps on the plateau), while `t10`
and `width` are None (there was no exit to time, and no onset to measure abruptness from); `t90` is
still the crossing of the 90 % level if there is one.

`final_level` defaults to the median of the last 10 % of the finite points (at least one): robust to
the noise of the end of a run, but biased upward when the curve is still falling at the end, so pass
the known floor when there is one (0 for a model that can fit its target exactly). When it is
estimated, a drop smaller than 4 times the spread of those last points (1.4826 x their median
absolute deviation) is no drop: a seed that never left the plateau ends at the plateau level, and its
estimated D is noise. `min_drop` (absolute, the curve's units) raises that floor.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lab.analysis import stats
from lab.analysis.phase import smooth

TAIL_FRAC = 0.1
NOISE_FACTOR = 4.0


def tail_level(loss, tail_frac: float = TAIL_FRAC) -> tuple[float, float]:
    """(median, robust spread 1.4826 x MAD) of the last `tail_frac` of the finite points (at least
    one); (nan, nan) when there are none."""
    y = np.asarray(loss, float)
    y = y[np.isfinite(y)]
    if not len(y):
        return float("nan"), float("nan")
    tail = y[-max(1, int(round(tail_frac * len(y)))):]
    med = float(np.median(tail))
    return med, 1.4826 * float(np.median(np.abs(tail - med)))


def crossing(steps, loss, level: float) -> Optional[float]:
    """The step at which `loss` falls to `level` or below for good: after its last point above the
    level, interpolated linearly to the next point; None if the last point is above the level, and
    also None if no point is above it (nothing to cross: see `plateau_shape`)."""
    x, y = np.asarray(steps, float), np.asarray(loss, float)
    above = np.flatnonzero(y > level)
    if not len(above) or above[-1] == len(y) - 1:
        return None
    i = int(above[-1])
    return float(x[i] + (y[i] - level) / (y[i] - y[i + 1]) * (x[i + 1] - x[i]))


def plateau_shape(steps, loss, plateau_level: float, final_level: Optional[float] = None, *,
                  min_drop: float = 0.0, smooth_window: int = 1, tail_frac: float = TAIL_FRAC) -> dict:
    """The plateau length and 10-90 % width of one decreasing curve (the module docstring defines
    them): {t10, t90, plateau_length, width, plateau_level, final_level, level10, level90, reason},
    with None for each value that is not reached, and `reason` saying why in words."""
    x, y = np.asarray(steps, float), np.asarray(loss, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"steps and loss must be 1-D and of one length, not {x.shape} and {y.shape}")
    finite = np.isfinite(y)
    x, y = x[finite], smooth(y[finite], smooth_window)
    out = {"t10": None, "t90": None, "plateau_length": None, "width": None,
           "plateau_level": float(plateau_level), "final_level": None, "level10": None, "level90": None,
           "reason": ""}
    if len(y) < 2:
        out["reason"] = f"too few finite points ({len(y)})"
        return out
    floor = min_drop
    if final_level is None:
        final_level, spread = tail_level(y, tail_frac)
        floor = max(floor, NOISE_FACTOR * spread)
    drop = plateau_level - final_level
    out["final_level"] = float(final_level)
    if not drop > max(floor, 0.0):
        out["reason"] = (f"no drop: final level {final_level:.4g} is not below the plateau "
                         f"{plateau_level:.4g} by more than {floor:.3g}")
        return out
    level10, level90 = plateau_level - 0.1 * drop, plateau_level - 0.9 * drop
    out.update(level10=float(level10), level90=float(level90),
               t10=crossing(x, y, level10), t90=crossing(x, y, level90))
    if not np.any(y > level10):
        out["plateau_length"] = 0.0
        out["reason"] = "never on the plateau: no point above the 10 % level"
    elif out["t10"] is None:
        out["reason"] = "never left the plateau: ends above the 10 % level"
    else:
        out["plateau_length"] = out["t10"]
        if out["t90"] is None:
            out["reason"] = "left the plateau, but ends above the 90 % level"
        else:
            out["width"] = out["t90"] - out["t10"]
            out["reason"] = f"left the plateau at {out['t10']:.4g}, 90 % down at {out['t90']:.4g}"
    return out


def plateau_shapes(steps, losses, plateau_level, final_level=None, **kwargs) -> list[dict]:
    """`plateau_shape` of each column of `losses` (n_steps, n_seeds); `plateau_level` and
    `final_level` are one value for every seed or one per seed (a None in `final_level`: that seed's
    is estimated)."""
    losses = np.asarray(losses, float)
    if losses.ndim != 2:
        raise ValueError(f"losses must be (n_steps, n_seeds), not {losses.shape}")
    n = losses.shape[1]
    plateau = np.broadcast_to(np.asarray(plateau_level, float), (n,))
    final = [final_level] * n if final_level is None or np.ndim(final_level) == 0 else list(final_level)
    if len(final) != n:
        raise ValueError(f"{len(final)} final levels for {n} seeds")
    return [plateau_shape(steps, losses[:, s], float(plateau[s]), final[s], **kwargs) for s in range(n)]


def aggregate(shapes: Sequence[dict]) -> dict:
    """Over seeds: how many left the plateau (`n_left`, a plateau_length that is a number, 0 for a
    seed never on it) of `n_seeds`, with the binomial interval; `plateau_length` and `width` each
    described (`stats.describe`: n, mean, std, ci95, min, max) over the seeds where they are numbers."""
    n = len(shapes)
    k = sum(s["plateau_length"] is not None for s in shapes)
    return {"n_seeds": n, "n_left": k, "left_ci95": stats.binomial_ci(k, n),
            "plateau_length": stats.describe(s["plateau_length"] for s in shapes),
            "width": stats.describe(s["width"] for s in shapes)}
