"""Singh et al.'s three-factor toy model (2024, "What needs to go right for an induction head?",
Fig. 5a; their `simple_model_solver.py`): why a plateau grows with the number of parts left to learn.

A target rank-1 tensor T = a* (x) b* (x) c* (vectors of dimension d) is fitted by a (x) b (x) c with the
loss L = 1/2 mean over the d^3 entries of (T - a (x) b (x) c)^2, by plain gradient descent (learning
rate 1, 1000 steps, d = 20 in the paper). Every entry of a*, b*, c* and of the initial a, b, c is
N(0, 1), drawn from `numpy.random.default_rng(seed)`, the target's three vectors first (so the
seeds are not the paper's JAX keys). A *clamp* sets some factors to their true values for all of
training (at the start and after every step, as theirs does: they are simply never updated); the
draws do not depend on the clamp, so the conditions of one seed share their target and start.

With n2_k = |p_k|^2, o_k = p_k . t_k (p = (a, b, c) the factors, t = (a*, b*, c*) the target's),
L = (prod_k |t_k|^2 - 2 prod_k o_k + prod_k n2_k) / (2 d^3) and
dL/dp_k = (p_k prod_{j != k} n2_j - t_k prod_{j != k} o_j) / d^3,
so no d^3 tensor is formed (the tests check both against the tensor).

The plateau. The loss of the zero output a = b = c = 0, L0 = 1/2 mean T^2 = prod_k |t_k|^2 / (2 d^3),
is the plateau: a random start's own output a (x) b (x) c is about as large as T and mostly orthogonal
to it, so the first few steps shrink it and the loss falls from about 2 L0 onto L0 (a saddle of
L), where it stays until the factors' overlaps with the target have grown; then it drops to 0.
With b and c clamped, L is quadratic in a and falls exponentially from about 2 L0, through L0, with
no plateau: its `plateau_length` (a few steps) is the time it takes to fall below 0.9 L0.
So `clamp_study` times each run with `plateau.plateau_shape` at plateau level L0 of its own target
(it varies over seeds with |t_k|^2) and final level 0 (T is rank 1, so the model fits it exactly,
and gradient descent gets there; the median of the curve's end would sit above 0 for a seed still
falling at the last step). The initial loss is not the plateau: 10 % of the way from it to 0 is
crossed within the first few steps of every condition, timing the initial transient instead.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from lab.analysis import plateau, stats

FACTORS = ("a", "b", "c")
CONDITIONS = ((), ("c",), ("b", "c"))          # 3, 2 and 1 factors left to learn (the paper's Fig. 5a)
DIM, LR, ITERS = 20, 1.0, 1000


def problem(seed: int, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """(target factors (3, dim): a*, b*, c*; initial factors (3, dim): a, b, c) of one seed."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal((3, dim))
    return true, rng.standard_normal((3, dim))


def _others(v: np.ndarray) -> np.ndarray:
    """prod_{j != k} v_j for each k, along the last axis (of length 3)."""
    return v[..., [1, 2, 0]] * v[..., [2, 0, 1]]


def loss_and_grad(true: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loss (...) and its gradient (..., 3, d) at factors `params` (..., 3, d) for target factors
    `true` (..., 3, d), in the factored form of the module docstring. The loss is >= 0 exactly;
    rounding can take the factored form a few ulps of prod_k |t_k|^2 / d^3 below 0, so it is clipped."""
    n = true.shape[-1] ** 3
    t2, n2, o = (np.einsum("...kd,...kd->...k", u, v) for u, v in ((true, true), (params, params), (params, true)))
    loss = np.maximum(0.5 * (t2.prod(-1) - 2 * o.prod(-1) + n2.prod(-1)) / n, 0.0)
    grad = (params * _others(n2)[..., None] - true * _others(o)[..., None]) / n
    return loss, grad


def plateau_level(true: np.ndarray) -> np.ndarray:
    """The loss of the zero output, 1/2 mean T^2 = prod_k |t_k|^2 / (2 d^3), for target factors (..., 3, d)."""
    return 0.5 * np.einsum("...kd,...kd->...k", true, true).prod(-1) / true.shape[-1] ** 3


def _mask(clamped: Iterable[str]) -> np.ndarray:
    clamped = tuple(clamped)
    unknown = set(clamped) - set(FACTORS)
    if unknown:
        raise ValueError(f"clamped factors must be among {FACTORS}, not {sorted(unknown)}")
    return np.array([f in clamped for f in FACTORS])


def train(seeds: Sequence[int], *, dim: int = DIM, clamped: Iterable[str] = (), lr: float = LR,
          iters: int = ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent from each seed's start with the factors named in `clamped` held at their true
    values: (steps 0..iters, loss (iters + 1, n_seeds)), the loss after each number of steps."""
    mask = _mask(clamped)[:, None]
    true, init = (np.stack(v) for v in zip(*(problem(s, dim) for s in seeds)))
    params = np.where(mask, true, init)
    free = lr * ~mask
    losses = np.empty((iters + 1, len(true)))
    for i in range(iters + 1):
        losses[i], grad = loss_and_grad(true, params)
        params = params - free * grad
    return np.arange(iters + 1), losses


def clamp_study(seeds: Sequence[int] = tuple(range(10)), *, dim: int = DIM, lr: float = LR, iters: int = ITERS,
                conditions: Sequence[Sequence[str]] = CONDITIONS) -> dict:
    """Each condition (the factors clamped) trained from every seed and timed by `plateau.plateau_shape`
    (plateau level: each seed's zero-output loss; final level 0): {"seeds", "steps", "conditions": one
    dict per condition with "clamped", "left" (factors left to learn), "loss" (n_steps, n_seeds),
    "shapes" (per seed), "summary" (`plateau.aggregate`)}, and "paired": for each pair of conditions
    next to each other, `stats.paired_differences` of the plateau length (the one with more factors
    left minus the other) over the seeds where both are numbers, keyed "3-2" and so on."""
    seeds = list(seeds)
    levels = np.array([plateau_level(problem(s, dim)[0]) for s in seeds])
    out = {"seeds": seeds, "steps": None, "conditions": [], "paired": {}}
    for clamped in conditions:
        steps, loss = train(seeds, dim=dim, clamped=clamped, lr=lr, iters=iters)
        shapes = plateau.plateau_shapes(steps, loss, levels, 0.0)
        out["steps"] = steps
        out["conditions"].append({"clamped": tuple(clamped), "left": len(FACTORS) - len(set(clamped)),
                                  "loss": loss, "shapes": shapes, "summary": plateau.aggregate(shapes)})
    by_left = sorted(out["conditions"], key=lambda c: -c["left"])
    for more, fewer in zip(by_left, by_left[1:]):
        out["paired"][f"{more['left']}-{fewer['left']}"] = stats.paired_differences(
            [s["plateau_length"] for s in more["shapes"]], [s["plateau_length"] for s in fewer["shapes"]])
    return out
