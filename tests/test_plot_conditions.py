"""One order and one colour per condition (lab/plots/style.py): the baseline first, the same colours in
every figure of a sweep and in `lab-plot --compare` of its jobs."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fake_run import make_fake_job  # noqa: E402
from lab.analysis.sweep import scan  # noqa: E402
from lab.plots import compare, sweep as sweep_plots  # noqa: E402
from lab.plots.style import condition_colours, condition_sort_key, is_baseline  # noqa: E402

SMALL = dict(steps=12, T=16, layers=1, heads=2, with_attention=False)
CLAMPS = ("perfect_prev_token", "late_prev_token", "none")       # the order lab-train -m was given


def test_baseline_first_then_values():
    conds = [{"clamp": c} for c in CLAMPS]
    assert [c["clamp"] for c in sorted(conds, key=condition_sort_key)] == ["none", "late_prev_token",
                                                                           "perfect_prev_token"]
    assert [c["optim.lr"] for c in sorted([{"optim.lr": 3e-3}, {"optim.lr": 1e-4}, {"optim.lr": 1e-3}],
                                          key=condition_sort_key)] == [1e-4, 1e-3, 3e-3]
    assert is_baseline("clamps", {}) and is_baseline("task", "induction") and is_baseline("x", None)
    assert not is_baseline("task", "markov") and not is_baseline("clamp", "perfect_prev_token")
    two = sorted([{"clamp": "late_prev_token", "task": "induction"}, {"clamp": "none", "task": "markov"},
                  {"clamp": "none", "task": "induction"}], key=condition_sort_key)
    assert two[0] == {"clamp": "none", "task": "induction"}                      # all-baseline first
    assert condition_colours([{"a": "x"}, {"a": "y"}]) == ["tab:blue", "tab:orange"]
    ramp = condition_colours([{"lr": 1}, {"lr": 2}, {"lr": 3}])                   # one numeric value: viridis
    assert len(set(map(tuple, ramp))) == 3 and all(len(c) == 4 for c in ramp)


def test_sweep_figures_and_compare_share_order_and_colours(tmp_path):
    root = tmp_path / "multirun" / "t"
    n = 0
    for clamp in CLAMPS:
        for seed in (0, 1):
            make_fake_job(root / str(n), ["train=tiny", f"clamp={clamp}", f"train.seed={seed}"], seeds=1,
                          first_seed=seed, mid_frac=0.3 + 0.1 * n / 6, **SMALL)
            n += 1
    sweep = scan(root)
    order, colour = sweep_plots._ordered_conditions(sweep.rows, sweep.swept)
    assert order == ["clamp=none", "clamp=late_prev_token", "clamp=perfect_prev_token"]
    assert [lb for lb, _ in sweep_plots._condition_curves(sweep)] == order
    assert [c["condition"] for c in sweep_plots.ordered_condition_rows(sweep)] == order
    runs = compare._gather_compared(sorted(root.iterdir(), key=lambda p: int(p.name)), "loss_repeat", None)
    ordered, colours = compare._condition_colours(runs)
    assert [r.condition["clamp"] for r in ordered] == ["none", "none", "late_prev_token", "late_prev_token",
                                                       "perfect_prev_token", "perfect_prev_token"]
    for r, c in zip(ordered, colours):
        assert c == colour[f"clamp={r.condition['clamp']}"]


def test_aligned_mean_keeps_each_seeds_sharp_transition():
    """Two seeds that drop sharply 400 steps apart: the aligned mean drops as sharply as each seed."""
    import numpy as np
    steps = np.arange(0, 2001, 25.0)
    curves = [(steps, 4.0 - 3.5 / (1 + np.exp(-(steps - m) / 20.0)), m) for m in (600.0, 1000.0)]
    x, mean, n = sweep_plots.aligned_mean(curves)
    assert n == 2
    at = lambda dx: float(np.interp(dx, x, mean))  # noqa: E731
    assert at(-100) > 3.8 and at(100) < 0.7 and abs(at(0) - 2.25) < 0.05          # 10-90 % within ±50 steps
    plain = np.mean([c[1] for c in curves], axis=0)
    assert 1.5 < float(np.interp(800, steps, plain)) < 3.0                           # the plain mean: half-way for 400 steps
