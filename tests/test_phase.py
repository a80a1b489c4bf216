import numpy as np
import pytest

from lab.analysis import phase

STEPS = np.arange(0, 5001, 50)


def sigmoid_curve(mid=2000, width=100, hi=4.0, lo=0.5):
    return lo + (hi - lo) / (1 + np.exp((STEPS - mid) / width))


def test_sigmoid_drop_is_found_where_it_is():
    r = phase.detect(STEPS, sigmoid_curve(), direction="decrease", threshold=2.0, min_amplitude=1.0)
    assert r["detected"], r["reason"]
    assert abs(r["midpoint"] - 2000) < 20 and abs(r["width"] - 100) < 20
    assert abs(r["onset"] - (2000 - 100 * np.log(9))) < 40
    assert r["threshold_step"] in (2050, 2100)          # 2.0 is crossed just after the midpoint (2.25)
    assert abs(r["steepest_step"] - 2000) <= 100


def test_flat_curve_is_no_phase_change():
    rng = np.random.default_rng(0)
    y = 0.05 + 0.01 * rng.standard_normal(len(STEPS))
    r = phase.detect(STEPS, y, direction="increase", threshold=0.4, min_amplitude=0.2)
    assert not r["detected"] and "no phase change" in r["reason"]
    assert r["threshold_step"] is None
    # the smoothed curve moves by less than the minimum change: no fit is attempted
    assert "moves by" in r["reason"] and r["midpoint"] is None and r["r2"] is None


def test_noisy_sigmoid_rise():
    rng = np.random.default_rng(1)
    y = 1 - sigmoid_curve(mid=3000, width=150, hi=1, lo=0) + 0.05 * rng.standard_normal(len(STEPS))
    r = phase.detect(STEPS, y, direction="increase", threshold=0.5, min_amplitude=0.2)
    assert r["detected"], r["reason"]
    assert abs(r["midpoint"] - 3000) < 100


def test_slow_drift_is_not_abrupt():
    y = 4.0 - 3.0 * STEPS / STEPS[-1]
    r = phase.detect(STEPS, y, direction="decrease", min_amplitude=1.0)
    assert not r["detected"]


def test_wrong_direction_is_not_detected():
    r = phase.detect(STEPS, sigmoid_curve(), direction="increase", min_amplitude=0.5)
    assert not r["detected"]


def test_too_few_points():
    assert not phase.detect([0, 1], [1, 0])["detected"]


def test_aggregate_over_seeds():
    runs = [phase.detect(STEPS, sigmoid_curve(mid=m), direction="decrease", min_amplitude=1.0, threshold=2.0)
            for m in (1500, 2500)]
    runs.append(phase.detect(STEPS, np.full(len(STEPS), 4.0), direction="decrease", min_amplitude=1.0))
    agg = phase.aggregate(runs)
    assert agg["n_seeds"] == 3 and agg["n_detected"] == 2
    assert agg["midpoint_mean"] == pytest.approx(2000, abs=20)
    assert agg["midpoint_std"] == pytest.approx(500 * np.sqrt(2), abs=30)   # sample std of 1500, 2500
    lo, hi = agg["detected_ci95"]                                            # 2 of 3: Clopper-Pearson
    assert lo == pytest.approx(0.0943, abs=1e-3) and hi == pytest.approx(0.9916, abs=1e-3)


def test_smooth_keeps_length_and_constant():
    y = np.full(10, 3.0)
    assert np.allclose(phase.smooth(y, 5), y) and len(phase.smooth(np.arange(7.0), 4)) == 7


def test_many_curves_fit_at_once_as_each_alone():
    """fit_sigmoids over a batch gives each curve the fit it gets alone, whatever its neighbours."""
    rng = np.random.default_rng(2)
    curves = np.stack([sigmoid_curve(mid=m, width=w) + 0.02 * rng.standard_normal(len(STEPS))
                       for m, w in ((800, 60), (2500, 300), (4200, 40))] + [np.full(len(STEPS), 1.0)])
    together = phase.fit_sigmoids(STEPS, curves)
    for y, fit in zip(curves, together):
        alone = phase.fit_sigmoid(STEPS, y)
        assert fit["midpoint"] == pytest.approx(alone["midpoint"], abs=1e-6)
        assert fit["r2"] == pytest.approx(alone["r2"], abs=1e-9)
    for fit, (m, w) in zip(together, ((800, 60), (2500, 300), (4200, 40))):
        assert abs(fit["midpoint"] - m) < 10 and abs(fit["width"] - w) < 0.1 * w
        assert fit["amplitude"] == pytest.approx(-3.5, abs=0.05) and fit["base"] == pytest.approx(4.0, abs=0.05)
    assert together[3]["r2"] == 0.0          # a constant curve: nothing to explain


def test_the_fit_is_the_least_squares_optimum_not_a_local_one():
    """A sharp drop near the end and a wide one early: the global search over midpoints finds the
    drop whichever; no 4-parameter sigmoid on a fine grid around the answer fits better."""
    y = sigmoid_curve(mid=4700, width=30)
    fit = phase.fit_sigmoid(STEPS, y)
    assert fit["midpoint"] == pytest.approx(4700, abs=1) and fit["r2"] == pytest.approx(1.0, abs=1e-9)
    x = np.arange(0, 1001, 10.0)
    y = 1.0 + 0.5 / (1 + np.exp(-(x - 300) / 80)) + 0.05 * np.sin(x / 7)
    fit = phase.fit_sigmoid(x, y)
    sse = np.sum((fit["base"] + fit["amplitude"] / (1 + np.exp(-(x - fit["midpoint"]) / fit["width"])) - y) ** 2)
    for dm in (-2, 0, 2):
        for fw in (0.98, 1.0, 1.02):
            mid, w = fit["midpoint"] + dm, fit["width"] * fw
            s = 1 / (1 + np.exp(-(x - mid) / w))
            A = np.stack([np.ones_like(s), s], 1)
            res = y - A @ np.linalg.lstsq(A, y, rcond=None)[0]
            assert np.sum(res ** 2) >= sse - 1e-9


def test_detect_many_equals_detect_per_curve_with_gaps():
    """Curves with NaN gaps (different finite steps) and flat curves in one batch: each result is
    what detect gives that curve alone."""
    a = sigmoid_curve(mid=1500)
    b = sigmoid_curve(mid=3500).copy()
    b[10:14] = np.nan
    flat = np.full(len(STEPS), 2.0)
    many = phase.detect_many(STEPS, np.stack([a, b, flat]), direction="decrease", threshold=2.0, min_amplitude=1.0)
    for y, r in zip((a, b, flat), many):
        assert r == phase.detect(STEPS, y, direction="decrease", threshold=2.0, min_amplitude=1.0)
    assert [r["detected"] for r in many] == [True, True, False]
    assert abs(many[1]["midpoint"] - 3500) < 20
