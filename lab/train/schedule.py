"""Which steps get a checkpoint beyond the periodic ones (`train.checkpoint_every`): a log-plus-linear
grid of steps fixed in advance (Hoogland et al.'s schedule), and extra checkpoints around a transition
of the task's main metric, seen online while the run trains.

Checkpoints can only be written at log steps (the trainer runs `log_every` steps as one compiled
program, and only the state after a chunk exists on the host), so a grid step is snapped *up* to the
first log step at or after it (`due`); grid steps within one log interval merge.

The online detector (`TransitionDetector`, per seed, on the logged values) calls an **onset** when the
curve falls below the straight-line trend of its last `fit_points` values by more than
max(`tol`, 7 x its noise), the noise measured from second differences (which a smooth bend leaves
near 0) over up to 4 x `fit_points` values: a fall that accelerates past its own trend, which a
plateau or a slow drift never does, and a decelerating fall (the first steps from initialisation)
neither. `tol` is ONSET_FRAC of the smallest fall that counts as a phase change
(`Task.phase_threshold` with `measures.phase`), as the sigmoid's onset is 10 % of its transition. The
transition **ends** when the straight-line fit of its last `end_points` values moves by at most
max(`tol`, ONSET_FRAC x the fall so far): the curve has flattened (the sigmoid's end is at 90 %). The
detector then watches again, so a curve that falls in stages gets one transition per stage.

`TransitionPlan` spends at most `budget` checkpoints on each transition of the run (from the first
seed's onset until no seed is still in its transition): one at every log step from the onset, and
when they would exceed the budget, every other one is dropped (the onset kept) and the stride doubles,
so they stay evenly spaced however long the transition lasts; the log step where it ends is always
kept (the last but one dropped for it when the budget is full).
"""
from __future__ import annotations

import json
import math

import numpy as np

ONSET_FRAC = 0.1          # as the sigmoid's onset and end (10 % and 90 % of the transition)
NOISE_SIGMAS = 7.0        # an onset must also exceed this many times the curve's noise (on white noise as large as
#                           tol, 1 run in 300 of 120 log points raises a false onset; at 5: 1 in 15)
NOISE_POINTS = 4          # the noise is measured over up to this many x fit_points values
KEPT_REASONS = ("schedule", "transition", "unknown")   # never pruned by train.keep_checkpoints (unknown: an unreadable index's)


def grid_steps(steps: int, log_points: int, linear_points: int) -> list[int]:
    """The log-plus-linear grid: `log_points` steps spaced evenly in log(step) from 1 to `steps`
    (round(steps^(i / (n - 1))); one point: `steps`) and `linear_points` steps evenly spaced up to
    `steps` (round(steps * i / n), i = 1..n); sorted, without repeats."""
    out = set()
    if log_points == 1:
        out.add(steps)
    elif log_points > 1:
        out |= {int(round(steps ** (i / (log_points - 1)))) for i in range(log_points)}
    out |= {int(round(steps * i / linear_points)) for i in range(1, linear_points + 1)}
    return sorted(s for s in out if 1 <= s <= steps)


def due(grid, previous: int, step: int) -> bool:
    """Whether a grid step lies in (previous, step]: the log step `step` is the first at or after it."""
    return any(previous < g <= step for g in grid)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, value at the mean x) of a least-squares line."""
    xc = x - x.mean()
    slope = float(np.dot(xc, y - y.mean()) / np.dot(xc, xc)) if np.dot(xc, xc) > 0 else 0.0
    return slope, float(y.mean())


def _noise(values) -> float:
    """The noise of a curve's values, from their second differences: sqrt(mean((d2 y)^2) / 6), which
    is the standard deviation of white noise and near 0 for a smooth curve, however it bends."""
    d2 = np.diff(np.asarray(values, float), 2)
    return float(np.sqrt(np.mean(d2 ** 2) / 6)) if len(d2) else 0.0


class TransitionDetector:
    """Onset and end of a falling curve's transition, per seed, from its values at the log steps
    (module docstring). `update(step, values)` returns the seed indices whose onset and whose end are
    seen at this step; `in_transition` says which seeds are between the two. The state is plain numbers
    (`to_json` / `from_json`), saved with every checkpoint so a resumed run decides as an uninterrupted one."""

    def __init__(self, n_seeds: int, tol: float, fit_points: int = 10, end_points: int = 5):
        if tol <= 0 or fit_points < 3 or end_points < 2:
            raise ValueError("need tol > 0, fit_points >= 3 and end_points >= 2")
        self.tol, self.fit_points, self.end_points = float(tol), int(fit_points), int(end_points)
        self.window = [[] for _ in range(n_seeds)]      # (step, value) since the seed last changed state
        self.in_transition = [False] * n_seeds
        self.ref = [None] * n_seeds                    # the trend's value at the onset (the plateau level)
        self.low = [None] * n_seeds                    # the lowest value since the onset
        self.onset = [None] * n_seeds

    def update(self, step: int, values) -> tuple[list[int], list[int]]:
        onsets, ends = [], []
        for s, y in enumerate(np.asarray(values, float).reshape(-1)):
            if not math.isfinite(y):
                continue
            win = self.window[s]
            if not self.in_transition[s]:
                if len(win) >= self.fit_points:
                    x, v = (np.asarray(c, float) for c in zip(*win[-self.fit_points:]))
                    slope, mean = _line(x, v)
                    trend = mean + slope * (step - x.mean())
                    if y < trend - max(self.tol, NOISE_SIGMAS * _noise([b for _, b in win])):
                        self.in_transition[s], self.ref[s], self.low[s], self.onset[s] = True, trend, y, step
                        win.clear()
                        onsets.append(s)
                win.append((step, float(y)))
                del win[:-NOISE_POINTS * self.fit_points]
            else:
                win.append((step, float(y)))
                del win[:-self.end_points]
                self.low[s] = min(self.low[s], float(y))
                if len(win) >= self.end_points:
                    x, v = (np.asarray(c, float) for c in zip(*win))
                    moved = abs(_line(x, v)[0]) * (x[-1] - x[0])
                    if moved <= max(self.tol, ONSET_FRAC * (self.ref[s] - self.low[s])):
                        self.in_transition[s] = False
                        ends.append(s)   # the flat window stays: the watch for a next stage starts from it
        return onsets, ends

    def to_json(self) -> dict:
        return {"window": self.window, "in_transition": self.in_transition, "ref": self.ref, "low": self.low,
                "onset": self.onset}

    def from_json(self, d: dict) -> None:
        self.window = [[(int(a), float(b)) for a, b in w] for w in d["window"]]
        self.in_transition = [bool(b) for b in d["in_transition"]]
        self.ref, self.low, self.onset = d["ref"], d["low"], d["onset"]


class TransitionPlan:
    """Which log steps of a transition get a checkpoint, at most `budget` per transition (module
    docstring); `transitions` records each one: onset, end (None while under way) and the seeds in it."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.active, self.kept, self.stride, self.index = False, [], 1, 0
        self.transitions: list[dict] = []

    def decide(self, step: int, onsets: list[int], any_in_transition: bool) -> tuple[bool, list[int]]:
        """(save a transition checkpoint at `step`, earlier transition checkpoints to drop)."""
        if not self.active:
            if not onsets:
                return False, []
            self.active, self.kept, self.stride, self.index = True, [], 1, 0
            self.transitions.append({"onset": step, "end": None, "seeds": []})
        else:
            self.index += 1
        episode = self.transitions[-1]
        episode["seeds"] = sorted(set(episode["seeds"]) | set(onsets))
        ending = not any_in_transition
        if ending:
            self.active = False
            episode["end"] = step
        save, drop = ending or self.index % self.stride == 0, []
        if self.budget == 0:
            return False, []
        if save and len(self.kept) >= self.budget:
            if ending:
                if len(self.kept) > 1:
                    drop.append(self.kept.pop())     # the end replaces the newest, the onset stays
                else:
                    save = False                     # a budget of one keeps its onset
            elif self.budget < 2:
                save = False
            else:
                drop = self.kept[1::2]
                self.kept, self.stride = self.kept[::2], self.stride * 2
                save = self.index % self.stride == 0
        if save:
            self.kept.append(step)
        return save, drop

    def to_json(self) -> dict:
        return {"active": self.active, "kept": self.kept, "stride": self.stride, "index": self.index,
                "transitions": self.transitions}

    def from_json(self, d: dict) -> None:
        self.active, self.kept = bool(d["active"]), [int(s) for s in d["kept"]]
        self.stride, self.index, self.transitions = int(d["stride"]), int(d["index"]), list(d["transitions"])


def state_array(*parts) -> np.ndarray:
    """JSON of the parts' states as a 0-d string array (an .npz entry that needs no pickle)."""
    return np.asarray(json.dumps([p.to_json() for p in parts]))


def load_state_array(array, *parts) -> None:
    for p, d in zip(parts, json.loads(str(np.asarray(array)))):
        p.from_json(d)
