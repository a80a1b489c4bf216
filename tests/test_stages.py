"""Change-point stages against curves whose transitions are known by construction."""
import numpy as np
import pytest

from lab.analysis.stages import detect_stages, detect_stages_many

STEPS = np.arange(0, 3001, 25)


def two_step_curve():
    """1.0 until step 1000, straight down to 0.6 at 1200, flat until 2000, down to 0.2 at 2200, flat."""
    return np.interp(STEPS, [0, 1000, 1200, 2000, 2200, 3000], [1.0, 1.0, 0.6, 0.6, 0.2, 0.2])


def test_two_transitions_found_exactly_on_a_noise_free_curve():
    r = detect_stages(STEPS, two_step_curve(), direction="decrease", min_change=0.1)
    assert r["n_stages"] == 3
    got = [(t["onset"], t["midpoint"], t["end"], t["width"]) for t in r["transitions"]]
    assert got == [(1000, 1100, 1200, 200), (2000, 2100, 2200, 200)]
    assert [t["change"] for t in r["transitions"]] == pytest.approx([-0.4, -0.4])
    assert r["levels"] == pytest.approx([1.0, 0.6, 0.2])
    assert not any(t["censored_start"] for t in r["transitions"])


def test_min_change_and_direction():
    # a rise is not a transition of a curve expected to decrease; a 0.4 step is not one of >= 0.5
    y = two_step_curve()
    assert detect_stages(STEPS, y[::-1].copy(), direction="decrease", min_change=0.1)["transitions"] == []
    assert detect_stages(STEPS, y, direction="decrease", min_change=0.5)["transitions"] == []
    up = detect_stages(STEPS, 1 - y, direction="increase", min_change=0.1)
    assert [t["onset"] for t in up["transitions"]] == [1000, 2000]


def test_noisy_sigmoid_has_one_transition_around_its_rise():
    rng = np.random.default_rng(0)
    mid, width = 1500, 60
    y = 0.5 + 3.5 / (1 + np.exp((STEPS - mid) / width)) + 0.03 * rng.standard_normal(len(STEPS))
    r = detect_stages(STEPS, y, direction="decrease", min_change=1.0)
    assert len(r["transitions"]) == 1
    t = r["transitions"][0]
    # the change-point onset is the knee, before the sigmoid's 10 % point (mid - width ln 9 = 1368)
    assert mid - 4 * width <= t["onset"] <= mid - width * np.log(9) + 25
    assert mid + width * np.log(9) - 25 <= t["end"] <= mid + 4 * width
    assert abs(t["midpoint"] - mid) <= 50


def test_slow_drift_and_flat_curve_have_no_transition():
    rng = np.random.default_rng(1)
    drift = 4 - 3 * STEPS / STEPS[-1] + 0.02 * rng.standard_normal(len(STEPS))
    r = detect_stages(STEPS, drift, direction="decrease", min_change=0.5)
    assert r["transitions"] == [] and "gradual" in r["reason"]
    flat = detect_stages(STEPS, np.full(len(STEPS), 2.0), direction="decrease", min_change=0.5)
    assert flat["transitions"] == [] and flat["n_stages"] == 1


def test_transition_under_way_at_the_first_step_is_censored():
    y = np.interp(STEPS, [0, 300, 3000], [4.0, 1.0, 1.0])
    t = detect_stages(STEPS, y, direction="decrease", min_change=1.0)["transitions"]
    assert len(t) == 1 and t[0]["onset"] == 0 and t[0]["end"] == 300 and t[0]["censored_start"]


def test_many_curves_and_bad_direction():
    rs = detect_stages_many(STEPS, np.stack([two_step_curve(), np.full(len(STEPS), 1.0)]), direction="decrease",
                            min_change=0.1)
    assert [r["n_stages"] for r in rs] == [3, 1]
    with pytest.raises(ValueError, match="direction"):
        detect_stages(STEPS, two_step_curve(), direction="down", min_change=0.1)


def test_split_at_valleys_by_hand():
    from lab.analysis.stages import _split_at_valleys, _steep_runs
    # segment slopes: steep, slow, slow, steep, steep; all >= 0.05 count as steep, so one run 0..4 that
    # slows down twice in a row between two falls: split once, after segment 0 (edge pairs are
    # (first segment, last segment + 1))
    slopes = [1.0, 0.1, 0.1, 1.0, 1.0]
    runs = _steep_runs(slopes, 0.05)
    assert runs == [[0, 4]]
    assert _split_at_valleys(runs, slopes, 0.6) == [(0, 1), (2, 5)]
    assert _split_at_valleys([[0, 2]], [1.0, 0.8, 0.9], 0.6) == [(0, 3)]      # one transition, no valley
    assert _steep_runs([0.0, 1.0, 0.0, 1.0], 0.5) == [[1, 1], [3, 3]]
