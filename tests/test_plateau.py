import numpy as np
import pytest

from lab.analysis import plateau

LN2 = np.log(2)


def test_piecewise_linear_by_hand():
    # plateau at 1, then 0.8 at 200, 0.2 at 300, 0 at 400; the last 10 % of 5 points is the last one
    steps, loss = [0, 100, 200, 300, 400], [1.0, 1.0, 0.8, 0.2, 0.0]
    r = plateau.plateau_shape(steps, loss, plateau_level=1.0)
    assert r["final_level"] == 0.0 and r["level10"] == pytest.approx(0.9) and r["level90"] == pytest.approx(0.1)
    assert r["t10"] == pytest.approx(150.0)              # 0.9 is halfway from 1.0 (step 100) to 0.8 (200)
    assert r["t90"] == pytest.approx(350.0)              # 0.1 is halfway from 0.2 (step 300) to 0 (400)
    assert r["plateau_length"] == pytest.approx(150.0) and r["width"] == pytest.approx(200.0)
    # a final level of 0.2: the levels are 1 - 0.08 = 0.92 and 1 - 0.72 = 0.28
    r = plateau.plateau_shape(steps, loss, plateau_level=1.0, final_level=0.2)
    assert r["t10"] == pytest.approx(100 + 0.08 / 0.2 * 100)          # 140
    assert r["t90"] == pytest.approx(200 + (0.8 - 0.28) / 0.6 * 100)  # 286.67
    assert r["width"] == pytest.approx(r["t90"] - r["t10"])


def test_never_leaves_the_plateau_is_not_crossed():
    steps = np.arange(0, 1001, 10)
    r = plateau.plateau_shape(steps, np.full(len(steps), LN2), LN2, final_level=0.0)
    assert r["t10"] is None and r["t90"] is None and r["plateau_length"] is None and r["width"] is None
    assert "never left" in r["reason"]
    # a dip to 0.6, below the 10 % level 0.9 ln 2 = 0.624, that comes back up: still not crossed
    loss = np.full(len(steps), LN2)
    loss[-5] = 0.6
    assert plateau.plateau_shape(steps, loss, LN2, final_level=0.0)["t10"] is None
    # a left plateau but an end above the 90 % level: t10 and the plateau length, no t90 or width
    loss = np.where(steps < 500, LN2, 0.3)
    r = plateau.plateau_shape(steps, loss, LN2, final_level=0.0)
    assert r["t10"] == pytest.approx(490 + (LN2 - 0.9 * LN2) / (LN2 - 0.3) * 10) and r["t90"] is None
    assert r["plateau_length"] == r["t10"] and r["width"] is None


def test_noisy_flat_curve_with_estimated_final_level_is_no_drop():
    # the median of the end is noise about ln 2: the estimated drop is within the tail's spread
    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    r = plateau.plateau_shape(steps, LN2 + 0.01 * rng.standard_normal(len(steps)), LN2)
    assert r["plateau_length"] is None and r["t10"] is None and "no drop" in r["reason"]
    # min_drop: a drop of 0.05 nats counts only if the caller allows it
    loss = np.where(steps < 1000, LN2, LN2 - 0.05)
    assert plateau.plateau_shape(steps, loss, LN2)["t10"] == pytest.approx(999.1)
    assert plateau.plateau_shape(steps, loss, LN2, min_drop=0.1)["t10"] is None


def test_wiggle_on_the_plateau_does_not_leave_it_early():
    steps = np.arange(1001)
    wiggle = 1.0 + 0.15 * np.sin(2 * np.pi * steps / 50)           # dips to 0.85, below the 10 % level
    loss = np.where(steps < 500, wiggle, np.clip(1 - (steps - 500) / 100, 0, None))
    assert np.any(loss[:400] < 0.9)                                # a first crossing would be early
    r = plateau.plateau_shape(steps, loss, 1.0, final_level=0.0)
    assert r["t10"] == pytest.approx(510.0) and r["t90"] == pytest.approx(590.0)
    # the same with a wiggle of 0.02 on the whole curve: the default final level (median of the end)
    # is still 0, and t10 stays on the drop, not on the plateau
    noisy = loss + 0.02 * np.sin(steps / 3.0)
    r = plateau.plateau_shape(steps, noisy, 1.0)
    assert abs(r["final_level"]) < 0.01 and 505 < r["t10"] < 515 and 580 < r["t90"] < 600


def test_curve_that_starts_below_the_plateau():
    # never above the 10 % level: no steps on the plateau, no exit to time, t90 still timed
    r = plateau.plateau_shape([0, 1, 2, 3], [0.5, 0.3, 0.05, 0.0], 1.0, final_level=0.0)
    assert r["plateau_length"] == 0.0 and r["t10"] is None and r["width"] is None
    assert r["t90"] == pytest.approx(1 + 0.2 / 0.25) and "never on the plateau" in r["reason"]
    # a clamped run with nothing left to learn: zero throughout
    r = plateau.plateau_shape(np.arange(10), np.zeros(10), LN2, final_level=0.0)
    assert r["plateau_length"] == 0.0 and r["t90"] is None


def test_non_finite_points_are_dropped_and_smoothing_keeps_a_linear_drop():
    steps, loss = [0, 100, 150, 200, 300, 400], [1.0, 1.0, np.nan, 0.8, 0.2, 0.0]
    assert plateau.plateau_shape(steps, loss, 1.0)["t10"] == pytest.approx(150.0)
    steps = np.arange(0, 1001, 10)
    loss = np.clip(1 - (steps - 300) / 400, 0, 1)
    r = plateau.plateau_shape(steps, loss, 1.0, final_level=0.0, smooth_window=3)
    assert r["t10"] == pytest.approx(340, abs=5) and r["t90"] == pytest.approx(660, abs=5)


def test_seeds_at_once_and_aggregate():
    steps = np.arange(0, 101, 10)
    losses = np.stack([np.clip(2 - (steps - 20) / 50, 0, 2),           # plateau 2: t10 30, t90 110 (never)
                       np.clip(1 - (steps - 40) / 20, 0, 1),           # plateau 1: t10 42, t90 58
                       np.ones(len(steps))], axis=1)                   # never leaves
    shapes = plateau.plateau_shapes(steps, losses, [2.0, 1.0, 1.0], 0.0)
    for s, col, lev in zip(shapes, losses.T, (2.0, 1.0, 1.0)):
        assert s == plateau.plateau_shape(steps, col, lev, 0.0)
    assert shapes[0]["t10"] == pytest.approx(30) and shapes[0]["t90"] is None
    assert shapes[1]["t10"] == pytest.approx(42) and shapes[1]["width"] == pytest.approx(16)
    agg = plateau.aggregate(shapes)
    assert agg["n_seeds"] == 3 and agg["n_left"] == 2
    assert agg["plateau_length"]["mean"] == pytest.approx(36) and agg["width"]["n"] == 1
    with pytest.raises(ValueError):
        plateau.plateau_shapes(steps, losses[:, 0], 1.0)
