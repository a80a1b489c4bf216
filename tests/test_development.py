"""Critical points of the LLC, essential dynamics and the stage report (lab.analysis.development)
on curves and summaries whose answers are known by construction."""
import json

import numpy as np
import pytest

from lab.analysis.development import (KINDS, critical_points, essential_dynamics, log_time, smoothed_curve,
                                      stage_report, steepest_point)

STEPS = np.arange(0, 3001, 50)          # s1 = 50: u = log(step + 50)
U = log_time(STEPS)


def bump(at: float, width: float = 0.25) -> np.ndarray:
    """A Gaussian bump in log-time centred on step `at`."""
    return np.exp(-((U - np.log(at + 50)) / width) ** 2)


def test_log_time_starts_one_interval_before_the_first_positive_step():
    assert log_time([0, 50, 100]) == pytest.approx(np.log([50, 100, 150]))
    assert log_time([10, 20]) == pytest.approx(np.log([20, 30]))
    with pytest.raises(ValueError):
        log_time([-1, 0])


def test_a_maximum_and_a_minimum_land_on_their_steps():
    y = 2.0 + bump(300) - 0.8 * bump(1500)
    got = critical_points(STEPS, y)
    assert [(p["step"], p["kind"]) for p in got] == [(300, "max"), (1500, "min")]
    assert all(isinstance(p["step"], int) for p in got)
    # the values are the smoothed curve's (sigma 2 grid points flattens the bumps a little)
    _, ys = smoothed_curve(STEPS, y)
    assert got[0]["value"] == pytest.approx(ys.max()) and got[1]["value"] == pytest.approx(ys[len(ys) // 3:].min())
    assert 2.6 < got[0]["value"] < 3.0 and 1.2 < got[1]["value"] < 1.5


def test_a_monotone_curve_has_no_critical_points_even_with_a_little_noise():
    assert critical_points(STEPS, U) == []
    assert critical_points(STEPS, -STEPS ** 0.5) == []
    rng = np.random.default_rng(0)
    assert critical_points(STEPS, U + 0.01 * rng.standard_normal(len(U))) == []   # smoothed away
    assert critical_points(STEPS, np.full(len(STEPS), 3.0)) == []                   # flat


def test_prominence_filter_drops_small_wiggles():
    """A bump of 1 and a wiggle of 0.05 on the same curve: smoothed, the wiggle's prominence is under
    5 % of the range, below the default 10 %, so only the bump is found; a 3 % threshold keeps both."""
    y = bump(300) + 0.05 * bump(1500, 0.2)
    assert [p["step"] for p in critical_points(STEPS, y)] == [300]
    found = critical_points(STEPS, y, min_prominence_frac=0.03)
    assert [(p["step"], p["kind"]) for p in found if p["kind"] == "max"] == [(300, "max"), (1500, "max")]


def test_missing_values_are_dropped_and_short_curves_have_none():
    y = 2.0 + bump(300)
    y_nan = y.copy()
    y_nan[[5, 20, 40]] = np.nan
    assert [p["step"] for p in critical_points(STEPS, y_nan)] == [300]
    assert critical_points(STEPS[:4], y[:4]) == []
    assert critical_points(STEPS, np.full(len(STEPS), np.nan)) == []


def test_endpoints_are_never_critical_points():
    # the curve peaks at the last step and dips at the first: neither is interior
    assert critical_points(STEPS, U ** 2) == []
    grid_steps, ys = smoothed_curve(STEPS, U)
    assert len(grid_steps) == len(STEPS) and grid_steps[0] == pytest.approx(0) and grid_steps[-1] == pytest.approx(3000)


# ----------------------------------------------------------------------------- steepest and plateau points


FINE = np.arange(0, 3001, 10)           # s1 = 10: u = log(step + 10), a grid of 301 points (sigma = 0.038 in u)
FINE_U = log_time(FINE)


def rise(at: float, width: float = 0.12) -> np.ndarray:
    """A logistic step from 0 to 1 in log-time, steepest at step `at` (on FINE)."""
    return 1 / (1 + np.exp(-(FINE_U - np.log(at + 10)) / width))


def test_a_logistic_in_log_time_is_steepest_at_its_midpoint_and_its_flat_ends_are_no_plateau():
    """A logistic's slope in u is largest at its midpoint and falls off monotonically on both sides,
    so the flat stretches before and after reach the ends: one steepest point, no plateau, no
    maximum or minimum; a falling copy is the same point with direction "fall"."""
    got = critical_points(FINE, 3 + 2 * rise(490), kinds=KINDS)
    assert [(p["step"], p["kind"], p["direction"]) for p in got] == [(490, "steepest", "rise")]
    # the slope of 2 / (1 + exp(-(u - c) / w)) at u = c is 2 / (4 w); the narrow smoothing barely lowers it
    assert got[0]["slope"] == pytest.approx(2 / (4 * 0.12), rel=0.03)
    assert got[0]["value"] == pytest.approx(4.0, abs=0.05)
    assert got[0]["prominence"] == pytest.approx(got[0]["slope"], rel=0.01)
    fall = critical_points(FINE, 3 - 2 * rise(490), kinds=KINDS)
    assert [(p["step"], p["kind"], p["direction"]) for p in fall] == [(490, "steepest", "fall")]
    assert fall[0]["slope"] == pytest.approx(-got[0]["slope"])
    # the default kinds are the maxima and minima only, as before: none here
    assert critical_points(FINE, 3 + 2 * rise(490)) == []
    assert steepest_point(FINE, 3 + 2 * rise(490)) == {"step": 490, "slope": got[0]["slope"], "direction": "rise",
                                                         "value": got[0]["value"], "at_end": False}


def test_a_staircase_has_plateau_points_before_and_after_its_middle_rise():
    """Rises at steps 90, 490, 2490 (u = log 100, log 500, log 2500: equally spaced): steepest at each,
    and between two equal rises the slope is least halfway in u, at step sqrt(100 x 500) - 10 = 213.6
    (nearest logged step 210: |log 223.6 - log 220| < |log 230 - log 223.6|) and sqrt(500 x 2500) - 10
    = 1108.0 (nearest 1110). The slope there (~0.02) is far below 0.1 x the largest (~2)."""
    got = critical_points(FINE, rise(90) + rise(490) + rise(2490), kinds=KINDS)
    assert [(p["step"], p["kind"]) for p in got] == [(90, "steepest"), (210, "plateau"), (490, "steepest"),
                                                       (1110, "plateau"), (2490, "steepest")]
    plateaus = [p for p in got if p["kind"] == "plateau"]
    top = max(abs(p["slope"]) for p in got)
    assert all(0 < p["slope"] < 0.1 * top for p in plateaus)
    assert [p["value"] for p in plateaus] == pytest.approx([1.0, 2.0], abs=1e-3)
    assert {p["direction"] for p in got if p["kind"] == "steepest"} == {"rise"}
    # flat_frac decides how flat a plateau must be: 1 % of the largest slope is below these
    assert [p["kind"] for p in critical_points(FINE, rise(90) + rise(490) + rise(2490), flat_frac=0.005,
                                               kinds=("plateau",))] == []


def test_a_plateau_is_not_reported_beside_a_maximum():
    """A bump's top is a maximum, where |slope| is also least: reported once, as the maximum; its two
    flanks are steepest points (rise, then fall)."""
    got = critical_points(STEPS, 2.0 + bump(300), kinds=KINDS)
    assert [(p["kind"], p.get("direction")) for p in got] == [("steepest", "rise"), ("max", None), ("steepest", "fall")]
    assert got[1]["step"] == 300 and got[0]["step"] < 300 < got[2]["step"]
    with pytest.raises(ValueError):
        critical_points(STEPS, U, kinds=("max", "saddle"))


def test_the_monotone_llc_of_a_real_run_is_steepest_in_the_loss_transition():
    """An LLC that only rises, fast between steps 300 and 375 (the loss falls from ~275 to ~375): no
    maximum or minimum, but a steepest point, and the steepest change, between 300 and 375."""
    steps = np.arange(0, 1501, 75)
    llc = [1.78, 2.44, 3.79, 4.61, 7.26, 15.04, 16.16, 16.31, 16.70, 17.09, 17.59, 17.83, 18.60, 19.03, 19.25, 19.61,
           19.06, 20.09, 19.87, 19.89, 19.06]
    assert critical_points(steps, llc) == []
    got = critical_points(steps, llc, kinds=KINDS)
    steepest = [p for p in got if p["kind"] == "steepest"]
    assert len(steepest) == 1 and 300 <= steepest[0]["step"] <= 375 and steepest[0]["direction"] == "rise"
    best = steepest_point(steps, llc)
    assert 300 <= best["step"] <= 375 and best["slope"] == steepest[0]["slope"] and not best["at_end"]
    summary = {"seeds": [0], "main_metric": "loss_repeat",
               "phase": {"loss_repeat": {"per_seed": [{"detected": False}],
                                         "stages": [{"transitions": [_transition(275, 375)]}]}}}
    r = stage_report(summary, {"steps": steps, "llc": np.array(llc)[:, None]}, None)
    seed = r["per_seed"][0]
    assert seed["llc_steepest"] == best["step"] and seed["llc_steepest_in_loss_window"] is True
    assert seed["llc_steepest_slope"] == pytest.approx(best["slope"]) and seed["llc_steepest_at_end"] is False
    assert seed["in_loss_window"]["llc"] is True
    assert [a["kind"] for a in seed["alignment"]["llc"]] == [p["kind"] for p in got]
    assert r["in_loss_window"]["llc_steepest"]["k"] == 1 and r["in_loss_window"]["llc_steepest"]["n"] == 1
    assert r["distribution"]["llc_steepest"]["mean"] == best["step"]


def test_steepest_point_needs_a_slope_that_stands_out():
    assert steepest_point(STEPS, U) is None                       # a straight line in log-time
    assert steepest_point(STEPS, np.full(len(STEPS), 3.0)) is None
    assert steepest_point(STEPS[:4], U[:4] ** 2) is None
    # -sqrt(step) falls ever faster in log-time: its steepest change is at the last step
    last = steepest_point(STEPS, -STEPS ** 0.5)
    assert last["step"] == 3000 and last["at_end"] and last["direction"] == "fall"
    assert [p for p in critical_points(STEPS, U, kinds=KINDS)] == []


def _l_shaped_outputs(n_seeds=2, D=20, noise=0.0):
    """A path that moves along e1 in log-time, turns a corner at step CORNER, then moves as far
    along e2 (equal legs in u), embedded in D dimensions along orthonormal e1, e2; seeds are offset copies."""
    steps = np.unique(np.round(np.geomspace(10, 20000, 41)).astype(int))
    steps = np.concatenate([[0], steps])
    u = log_time(steps)
    corner_index = len(steps) // 2
    c = u[corner_index]
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    e1, e2 = q[:, 0], q[:, 1]
    a, b = np.minimum(u, c) - u[0], np.maximum(u, c) - c
    path = a[:, None] * e1 + b[:, None] * e2 * (c - u[0]) / (u[-1] - c)   # legs of equal length
    outputs = np.stack([path + 0.2 * s * q[:, 2] + noise * rng.standard_normal(path.shape) for s in range(n_seeds)], 1)
    return steps, outputs, int(steps[corner_index])


def test_essential_dynamics_of_an_l_shaped_path_turns_at_the_corner():
    steps, outputs, corner = _l_shaped_outputs(n_seeds=3, noise=1e-3)
    ed = essential_dynamics(steps, outputs)
    ratio = ed["explained_variance_ratio"]
    assert ed["n_components"] == 3 and len(ratio) == 3
    # seeds differ only by a fixed offset along e3, which centring at the joint mean leaves as a
    # third direction; the path itself spans e1 and e2
    assert ratio[0] + ratio[1] > 0.97 and ratio[0] >= ratio[1] >= ratio[2]
    for seed in ed["per_seed"]:
        assert len(seed["pcs"]) == len(steps) and len(seed["pcs"][0]) == 3
        # an L of equal legs: PC1 runs along the diagonal (monotone), PC2 across it (turns at the corner)
        pc2 = [p for p in seed["turning_points"] if p["pc"] == 1]
        assert [p["step"] for p in pc2] == [corner]
        assert not [p for p in seed["turning_points"] if p["pc"] == 0]
        assert seed["boundaries"] == sorted({p["step"] for p in seed["turning_points"]})
    # signs fixed: seed 0 moves in the positive direction of PC1 from first to last step
    pc1 = np.array(ed["per_seed"][0]["pcs"])[:, 0]
    assert pc1[-1] > pc1[0]
    json.dumps(ed)


def test_essential_dynamics_moves_fastest_at_the_midpoint_of_a_logistic_run():
    """Outputs that travel along one direction by a logistic in log-time (steepest at step 490), the
    second seed later (at 1110) and with a small wobble along a second direction: PC1 carries the
    motion, and each seed's speed peaks at its own midpoint."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    paths = [rise(490)[:, None] * q[:, 0], rise(1110)[:, None] * q[:, 0] + 0.01 * np.sin(FINE_U)[:, None] * q[:, 1]]
    ed = essential_dynamics(FINE, np.stack(paths, 1))
    assert [p["fastest"] for p in ed["per_seed"]] == [490, 1110]
    # the speed is |d pc / du|, so a logistic of height 1 (all of it along PC1) peaks at 1 / (4 x 0.12)
    assert ed["per_seed"][0]["fastest_speed"] == pytest.approx(1 / (4 * 0.12), rel=0.05)
    # outputs that do not move have no fastest step
    still = essential_dynamics(FINE[:10], np.ones((10, 1, 3)))
    assert still["per_seed"][0]["fastest"] is None and still["per_seed"][0]["fastest_speed"] is None


def test_essential_dynamics_sign_is_deterministic_and_small_shapes_work():
    steps, outputs, _ = _l_shaped_outputs(n_seeds=2)
    a = essential_dynamics(steps, outputs)
    b = essential_dynamics(steps, -outputs + 5.0)     # a mirrored, shifted copy: the same PCs after the sign fix
    for sa, sb in zip(a["per_seed"], b["per_seed"]):
        assert np.allclose(sa["pcs"], sb["pcs"], atol=1e-9)
        key = lambda tp: [(p["step"], p["pc"], p["kind"], round(p["value"], 9)) for p in tp]  # noqa: E731
        assert key(sa["turning_points"]) == key(sb["turning_points"]) and sa["turning_points"]
    # D = 2 < n_components; one seed; a missing row projects to None
    small = outputs[:, :1, :2].copy()
    small[3] = np.nan
    ed = essential_dynamics(steps, small, n_components=3)
    assert ed["n_components"] == 2 and len(ed["explained_variance_ratio"]) == 2
    assert ed["per_seed"][0]["pcs"][3] == [None, None]
    assert sum(ed["explained_variance_ratio"]) == pytest.approx(1.0)
    # fewer rows than components
    ed = essential_dynamics(steps[:2], outputs[:2, :1], n_components=3)
    assert ed["n_components"] == 2 and ed["per_seed"][0]["turning_points"] == []


# ----------------------------------------------------------------------------- the stage report


def _transition(onset, end, censored=False):
    return {"onset": float(onset), "midpoint": (onset + end) / 2, "end": float(end), "width": float(end - onset),
            "before": 4.0, "after": 1.0, "change": -3.0, "censored_start": censored}


def _head_entry(onsets):
    """A head's curve entry: a change-point rise per seed at `onsets` (None: no rise)."""
    stages = [{"transitions": [] if o is None else [_transition(o, o + 200)]} for o in onsets]
    return {"per_seed": [{"detected": False, "threshold_step": o} for o in onsets], "stages": stages}


def _summary():
    """Three seeds: seed 0's loss falls at 800-1200 (after an initial descent from step 0), seed 1's at
    1500-1700, seed 2 only falls from the start (censored: no timed transition)."""
    stages = [{"transitions": [_transition(0, 200, True), _transition(800, 1200)]},
              {"transitions": [_transition(1500, 1700)]},
              {"transitions": [_transition(0, 300, True)]}]
    return {"seeds": [0, 1, 2], "main_metric": "loss_repeat",
            "phase": {"loss_repeat": {"per_seed": [{"detected": False}] * 3, "stages": stages},
                      "induction": {"L1H0": _head_entry([850, 1450, None]), "L1H1": _head_entry([None, None, None])},
                      "prev_token": {"L0H0": _head_entry([700, 1300, 900])}},
            "induction_heads_per_seed": [["L1H0"], [], []]}


def _llc():
    """LLC bumps at steps 1000 (seed 0: inside its loss window), 600 (seed 1: far before its window)
    and 1200 (seed 2: no timed loss transition to compare with). Each bump is also steepest on its
    flanks: the Gaussian exp(-((u - c) / 0.25)^2) (variance 0.25^2 / 2) smoothed by sigma = 2 grid
    points of log(3050 / 50) / 60 in u is a Gaussian of variance 0.25^2 / 2 + (2 log(61) / 60)^2, sd
    0.2236, whose inflection points lie at u = c -/+ 0.2236: steps 1050 e^-/+0.2236 - 50 = 789.6 and
    1263.4 (nearest logged steps in u: 800 and 1250), 650 e^-/+0.2236 - 50 = 469.8 and 762.9 (450,
    750), 1250 e^-/+0.2236 - 50 = 949.6 and 1513.0 (950, 1500)."""
    llc = np.stack([10 + 5 * bump(1000), 10 + 5 * bump(600), 10 + 5 * bump(1200)], 1)
    N, S, C, M = len(STEPS), 3, 2, 4
    return {"steps": STEPS, "llc": llc, "llc_std": np.full((N, S), 0.1), "chains": np.repeat(llc[:, :, None], C, 2),
            "loss_trace": np.zeros((N, S, C, M)), "distance": np.zeros((N, S, C, M)), "init_loss": np.ones((N, S)),
            "nonfinite": np.zeros((N, S, C), bool), "not_settled": np.zeros((N, S), bool), "burn_in": 1, "nbeta": 5.0,
            "source": "online", "settings": "{}"}


def test_stage_report_alignment_and_distributions_by_hand():
    llc = _llc()
    r = stage_report(_summary(), llc, None)
    assert json.loads(json.dumps(r)) == r                                # plain JSON throughout
    assert r["measured"] == {"loss": True, "llc": True, "essential_dynamics": False, "heads": True}
    assert [[(c["step"], c["kind"]) for c in p["boundaries"]["llc"]] for p in r["per_seed"]] == [
        [(800, "steepest"), (1000, "max"), (1250, "steepest")],
        [(450, "steepest"), (600, "max"), (750, "steepest")],
        [(950, "steepest"), (1200, "max"), (1500, "steepest")]]
    flanks = [c["direction"] for c in r["per_seed"][0]["boundaries"]["llc"] if c["kind"] == "steepest"]
    assert flanks == ["rise", "fall"]
    assert [p["boundaries"]["loss"] for p in r["per_seed"]] == [[800, 1200], [1500, 1700], []]
    assert [p["boundaries"]["loss_censored"] for p in r["per_seed"]] == [[200], [], [300]]

    # windows: seed 0 [800 - 100, 1200 + 100] (a quarter of the 400-step width beats the 50-step log
    # interval); seed 1 [1500 - 50, 1700 + 50] (the log interval beats 200 / 4)
    s0, s1, s2 = r["per_seed"]
    assert s0["loss_transitions"][1]["windows"]["llc"] == [700, 1300]
    assert s1["loss_transitions"][0]["windows"]["llc"] == [1450, 1750]
    assert s0["loss_transitions"][0]["windows"] == {} and s0["loss_transitions"][0]["censored_start"]
    assert s0["loss_transitions"][1]["matched"] == {"llc": True, "essential_dynamics": None}
    assert s1["loss_transitions"][0]["matched"]["llc"] is False
    assert r["in_loss_window_per_seed"]["llc"] == [True, False, None]      # seed 2: not measured
    assert r["in_loss_window_per_seed"]["essential_dynamics"] == [None, None, None]
    assert r["in_loss_window"]["llc"]["k"] == 1 and r["in_loss_window"]["llc"]["n"] == 2
    assert r["in_loss_window"]["llc"]["fraction"] == 0.5
    assert s0["alignment"]["llc"] == [
        {"step": step, "kind": kind, "in_loss_window": True, "transition": 1, "nearest_onset": 800.0,
         "to_nearest_onset": step - 800.0} for step, kind in ((800, "steepest"), (1000, "max"), (1250, "steepest"))]
    assert [a["to_nearest_onset"] for a in s1["alignment"]["llc"]] == [-1050.0, -900.0, -750.0]
    assert all(a["in_loss_window"] is None for a in s2["alignment"]["llc"])

    # the single steepest change per seed: a symmetric bump's two flanks are equally steep, so either
    # may win; both of seed 0's lie in [700, 1300], neither of seed 1's in [1450, 1750]
    assert s0["llc_steepest"] in (800, 1250) and s1["llc_steepest"] in (450, 750) and s2["llc_steepest"] in (950, 1500)
    assert [p["llc_steepest_in_loss_window"] for p in r["per_seed"]] == [True, False, None]
    assert r["in_loss_window_per_seed"]["llc_steepest"] == [True, False, None]
    assert r["in_loss_window"]["llc_steepest"]["k"] == 1 and r["in_loss_window"]["llc_steepest"]["n"] == 2
    assert r["in_loss_window"]["llc_steepest"]["ci95"] == pytest.approx(r["in_loss_window"]["llc"]["ci95"])
    assert r["distribution"]["llc_steepest"]["n"] == 3
    assert r["in_loss_window_per_seed"]["ed_fastest"] == [None, None, None] and s0["ed_fastest"] is None

    # first LLC maximum over the three seeds: (1000 + 600 + 1200) / 3, sample std by hand
    first = r["distribution"]["llc_max"][0]
    assert first["ordinal"] == 1 and first["n"] == 3
    assert first["mean"] == pytest.approx(2800 / 3)
    dev = np.array([1000, 600, 1200]) - 2800 / 3
    assert first["std"] == pytest.approx(np.sqrt((dev ** 2).sum() / 2))
    assert first["ci95"][0] >= 600 and first["ci95"][1] <= 1200
    assert r["distribution"]["llc_min"] == [] and r["distribution"]["llc_plateau"] == []
    # the first boundary of any kind is now the rising flank; the second ordinal is the maximum
    assert r["distribution"]["llc"][0]["mean"] == pytest.approx((800 + 450 + 950) / 3)
    assert r["distribution"]["llc"][1] == {**first, "ordinal": 2}
    assert [d["mean"] for d in r["distribution"]["llc_steepest_points"]] == pytest.approx([2200 / 3, 3500 / 3])
    assert r["distribution"]["loss_onset"][0]["mean"] == 1150.0 and r["distribution"]["loss_onset"][0]["n"] == 2

    # the boundary nearest the main loss transition: offsets 0 (seed 0: its rising flank), -750 (seed 1:
    # its falling flank); seed 2 has none
    assert [p["nearest_to_main"]["llc"] for p in r["per_seed"]] == [{"step": 800, "offset": 0.0},
                                                                    {"step": 750, "offset": -750.0}, None]
    assert r["nearest_to_main"]["llc"]["offset"]["mean"] == -375.0
    assert r["nearest_to_main"]["llc"]["offset"]["n"] == 2

    # heads: timed onsets tagged with head and group; formed only for induction heads
    assert [(h["step"], h["head"], h["group"], h["formed"]) for h in s0["boundaries"]["heads"]] == [
        (700, "L0H0", "prev_token", None), (850, "L1H0", "induction", True)]
    assert [h["head"] for h in s2["boundaries"]["heads"]] == ["L0H0"]
    assert r["distribution"]["head_onsets"]["induction/L1H0"]["mean"] == 1150.0
    assert r["distribution"]["head_onsets"]["prev_token/L0H0"]["mean"] == pytest.approx(2900 / 3)
    assert "induction/L1H1" not in r["distribution"]["head_onsets"]
    assert r["nearest_to_main"]["heads"]["offset"]["mean"] == pytest.approx((50 - 50) / 2)

    # LLC levels around the first timed transition: plain means over the estimates in each stretch
    x, y = STEPS, llc["llc"][:, 0]
    lev = s0["llc_levels"][0]
    assert lev["transition"] == 1
    assert lev["before"] == pytest.approx(y[(x > 200) & (x < 800)].mean())
    assert lev["inside"] == pytest.approx(y[(x >= 800) & (x <= 1200)].mean())
    assert lev["after"] == pytest.approx(y[x > 1200].mean())
    assert s2["llc_levels"] == []
    d = r["llc_direction"]
    assert d["inside_minus_before"]["n"] == 2
    x1 = llc["llc"][:, 1]
    by_hand = [lev["inside"] - lev["before"],
               x1[(x >= 1500) & (x <= 1700)].mean() - x1[x < 1500].mean()]
    assert d["inside_minus_before"]["differences"] == pytest.approx(by_hand)
    assert d["inside_minus_before"]["mean"] == pytest.approx(np.mean(by_hand))
    assert r["llc"]["source"] == "online" and r["llc"]["nbeta"] == 5.0


def test_stage_report_without_llc_or_outputs_is_not_measured():
    r = stage_report(_summary(), None, None)
    assert r["measured"]["llc"] is False and r["llc_direction"] is None and r["llc"] is None
    assert r["in_loss_window_per_seed"]["llc"] == [None, None, None]
    assert r["in_loss_window"]["llc"] == {"k": 0, "n": 0, "fraction": None, "ci95": None}
    assert all(p["boundaries"]["llc"] is None and p["llc_levels"] is None for p in r["per_seed"])
    assert r["distribution"]["llc"] == []
    # a seed's LLC with fewer than 5 finite estimates is not measured, not "no boundary"
    llc = _llc()
    llc["llc"][4:, 2] = np.nan
    r = stage_report(_summary(), llc, None)
    assert r["per_seed"][2]["boundaries"]["llc"] is None and r["per_seed"][0]["boundaries"]["llc"]


def test_stage_report_with_essential_dynamics():
    steps, outputs, corner = _l_shaped_outputs(n_seeds=3)
    summary = _summary()
    # put seed 0's loss transition around the corner and seed 1's far after it
    summary["phase"]["loss_repeat"]["stages"][0]["transitions"][1] = _transition(corner - 20, corner + 30)
    summary["phase"]["loss_repeat"]["stages"][1]["transitions"][0] = _transition(corner * 10, corner * 10 + 100)
    r = stage_report(summary, None, {"steps": steps, "outputs": outputs, "kind": "logits"})
    assert r["measured"]["essential_dynamics"] is True
    assert r["essential_dynamics"]["kind"] == "logits"
    assert [p["boundaries"]["essential_dynamics"] for p in r["per_seed"]] == [[corner]] * 3
    assert r["in_loss_window_per_seed"]["essential_dynamics"] == [True, False, None]
    assert r["distribution"]["essential_dynamics"][0]["mean"] == corner
    assert r["per_seed"][0]["turning_points"][0]["pc"] == 1
    # the L is walked at one speed in log-time (slower only where smoothing cuts the corner): no
    # fastest step, so nothing to set against the windows
    assert [p["ed_fastest"] for p in r["per_seed"]] == [None] * 3
    assert r["in_loss_window_per_seed"]["ed_fastest"] == [None] * 3 and r["distribution"]["ed_fastest"]["n"] == 0
    # too few logged outputs: ED not measured
    r = stage_report(summary, None, {"steps": steps[:4], "outputs": outputs[:4]})
    assert r["measured"]["essential_dynamics"] is False and r["essential_dynamics"] is None


def test_stage_report_of_an_old_summary_falls_back_to_the_sigmoid():
    """A summary without change-point stages: the sigmoid's transition is the loss window."""
    per_seed = [{"detected": True, "onset": 900.0, "midpoint": 1000.0, "end": 1100.0, "width": 200.0},
                {"detected": False}]
    summary = {"seeds": [0, 1], "main_metric": "loss_repeat", "phase": {"loss_repeat": {"per_seed": per_seed}}}
    llc = {"steps": STEPS, "llc": np.stack([10 + bump(1000), 10 + bump(1000)], 1)}
    r = stage_report(summary, llc, None)
    assert r["in_loss_window_per_seed"]["llc"] == [True, None]
    assert r["per_seed"][0]["main_transition"]["detector"] == "sigmoid"
    assert r["measured"]["heads"] is False
