"""Checkpoints where the transition is (issue 26): the log-plus-linear grid, the online transition
detector and the plan that spends a budget of checkpoints on each transition, on hand-computed cases;
then a tiny run whose repeat loss falls at a known step (an ideal induction pattern and perfect copying
switched on for the measures at step 120), its checkpoints loaded back, and a run interrupted during
the transition and continued, which keeps the same checkpoints as an uninterrupted one."""
import json

import numpy as np
import pytest

import lab
from conftest import records
from lab.core import ConfigError
from lab.rundir import checkpoint_steps, load_checkpoint_index
from lab.train.schedule import ONSET_FRAC, TransitionDetector, TransitionPlan, due, grid_steps

TOL = ONSET_FRAC * 1.25   # the default run's: 0.1 x the smallest phase-change fall (0.3 ln 64 ~ 1.25)


def test_log_linear_grid_of_the_default_run_length():
    # 1500^(i/9) = 1, 2.25, 5.08, 11.4, 25.8, 58.1, 131.0, 295.3, 665.6, 1500
    assert grid_steps(1500, 10, 0) == [1, 2, 5, 11, 26, 58, 131, 295, 666, 1500]
    assert grid_steps(1500, 0, 3) == [500, 1000, 1500]
    both = grid_steps(1500, 10, 3)
    assert both == [1, 2, 5, 11, 26, 58, 131, 295, 500, 666, 1000, 1500]
    assert grid_steps(100, 1, 0) == [100] and grid_steps(100, 0, 0) == []
    # snapped up to the default run's log steps (every 25): 1, 2, 5 and 11 all land on 25
    log_steps = range(25, 1501, 25)
    snapped = [s for prev, s in zip([0, *log_steps], log_steps) if due(both, prev, s)]
    assert snapped == [25, 50, 75, 150, 300, 500, 675, 1000, 1500]
    assert due([25], 0, 25) and not due([25], 25, 50) and due([26], 25, 50)


def run_detector(steps, values, tol=TOL):
    det = TransitionDetector(1, tol)
    onsets, ends = [], []
    for s, y in zip(steps, values):
        o, e = det.update(int(s), [y])
        onsets += [int(s)] * len(o)
        ends += [int(s)] * len(e)
    return onsets, ends


def test_detector_on_a_clean_fall_hand_computed():
    # flat at 4 to step 500, then 0.5 lower every log step (25 steps) down to 0.5, flat after
    steps = np.arange(0, 1001, 25)
    values = np.clip(4.0 - 0.5 * np.maximum(steps - 500, 0) / 25, 0.5, None)
    onsets, ends = run_detector(steps, values)
    # onset: 525 is 0.5 below the flat trend of 275..500 (> tol 0.125). End: the first window of five
    # values whose fitted line moves by <= max(tol, 0.1 x (4 - 0.5)) = 0.35: 650..750 = 1, .5, .5, .5, .5
    # moves 0.4; 675..775, all 0.5, moves 0
    assert onsets == [525] and ends == [775]


def test_detector_finds_a_sigmoid_drop_at_its_onset():
    # 4 - 3.5 s((t - 1000) / 40): the sigmoid's 10 % point is 1000 - 40 ln 9 = 912. At 875 the fall is
    # 0.147, only 0.09 below the line through 650..850 (which already bends down); at 900 it is 0.266,
    # 0.16 below the line through 675..875 (extrapolated 0.104 down): more than tol
    steps = np.arange(0, 2001, 25)
    values = 4 - 3.5 / (1 + np.exp(-(steps - 1000) / 40))
    onsets, ends = run_detector(steps, values)
    assert onsets == [900]
    assert len(ends) == 1 and 1088 < ends[0] <= 1250   # after the 90 % point (1000 + 40 ln 9), once flat


@pytest.mark.parametrize("name", ["flat", "slow drift", "fall from initialisation", "noise", "noisy drift"])
def test_detector_sees_no_transition(name):
    steps = np.arange(0, 3001, 25)
    rng = np.random.default_rng(0)
    values = {"flat": np.full(len(steps), 4.0),
              "slow drift": 4.0 - 0.0005 * steps,                     # 1.5 in all, but never faster
              "fall from initialisation": 2.0 + 2.0 * np.exp(-steps / 150),   # fast, but slowing down
              "noise": 4.0 + TOL * rng.standard_normal(len(steps)),   # noise as large as tol itself
              "noisy drift": 4.0 - 0.0005 * steps + 0.5 * TOL * rng.standard_normal(len(steps))}[name]
    assert run_detector(steps, values) == ([], [])


def test_detector_needs_a_trend_first_and_skips_nan():
    det = TransitionDetector(2, TOL)
    for s in range(0, 225, 25):   # nine points: one short of a trend
        assert det.update(s, [4.0, np.nan]) == ([], [])
    assert det.update(225, [0.5, np.nan]) == ([], [])       # a fall, but no trend to fall below yet
    assert det.update(250, [0.5, 0.5]) == ([], [])
    assert det.in_transition == [False, False]


def test_detector_state_round_trips_mid_transition():
    steps = np.arange(0, 1001, 25)
    values = np.clip(4.0 - 0.5 * np.maximum(steps - 500, 0) / 25, 0.5, None)
    a = TransitionDetector(1, TOL)
    for s, y in zip(steps[:24], values[:24]):   # up to step 575, inside the transition
        a.update(int(s), [y])
    b = TransitionDetector(1, TOL)
    b.from_json(json.loads(json.dumps(a.to_json())))
    for s, y in zip(steps[24:], values[24:]):
        assert a.update(int(s), [y]) == b.update(int(s), [y])
    assert b.in_transition == [False]


def plan_run(budget, onset, end, every=10):
    """Saves and drops of a plan for one seed in transition from `onset` to `end` (log steps every 10)."""
    plan, saved, dropped = TransitionPlan(budget), [], []
    for step in range(onset - 2 * every, end + 3 * every, every):
        save, drop = plan.decide(step, [0] if step == onset else [], onset <= step < end)
        saved += [step] * save
        dropped += drop
    return plan, saved, dropped


def test_plan_saves_every_log_step_of_a_short_transition():
    plan, saved, dropped = plan_run(8, 100, 150)
    assert saved == [100, 110, 120, 130, 140, 150] and dropped == []
    assert plan.kept == saved and plan.transitions == [{"onset": 100, "end": 150, "seeds": [0]}]


def test_plan_thins_a_long_transition_to_its_budget():
    # budget 4 over onset 100 .. end 200: 100-130 kept; at 140 every other one goes (110, 130) and the
    # stride doubles; 160; at 180 again (120, 160 go), stride 4; the end (200) has room
    plan, saved, dropped = plan_run(4, 100, 200)
    assert saved == [100, 110, 120, 130, 140, 160, 180, 200]
    assert dropped == [110, 130, 120, 160]
    assert plan.kept == [100, 140, 180, 200]


def test_plan_end_replaces_the_newest_when_full_and_small_budgets():
    plan, saved, dropped = plan_run(3, 100, 130)   # 100, 110, 120 kept; the end (130) replaces 120
    assert plan.kept == [100, 110, 130] and dropped == [120]
    assert plan_run(1, 100, 150)[0].kept == [100]     # a budget of one keeps the onset
    plan, saved, _ = plan_run(0, 100, 150)            # none saved, the transition still recorded
    assert saved == [] and plan.transitions == [{"onset": 100, "end": 150, "seeds": [0]}]


def test_plan_with_seeds_runs_from_the_first_onset_until_every_seed_has_ended():
    plan = TransitionPlan(8)
    assert plan.decide(100, [1], True) == (True, [])    # seed 1 starts
    assert plan.decide(110, [0], True) == (True, [])    # seed 0 joins
    assert plan.decide(120, [], True) == (True, [])     # seed 1 ended, seed 0 not yet
    assert plan.decide(130, [], False) == (True, [])    # both ended: the end
    assert plan.decide(140, [], False) == (False, [])
    assert plan.transitions == [{"onset": 100, "end": 130, "seeds": [0, 1]}]


def test_bad_checkpoint_keys_fail_at_startup():
    from lab.config.compose import validate
    for key in ("checkpoint_log_points", "checkpoint_linear_points", "checkpoints_around_transition"):
        with pytest.raises(ConfigError, match=rf"^train\.{key}=-1 must be >= 0 \(0 turns it off\)$"):
            validate(lab.load_config([f"train.{key}=-1"]))


# An abrupt fall of the repeat loss at step 120 of a tiny run, for the measures only (training is untouched):
# layer 1 head 0 attends as an ideal induction head and the logits copy what it attends to.
FALL = ["+clamps.ind={site: blocks.1.attn.pattern, value: induction, heads: [0], start: 120, apply: eval}",
        "+clamps.copy={site: logits, value: perfect_copy, copy_from: L1H0, start: 120, apply: eval}"]
ARGS = ["train.steps=200", "train.log_every=10", "train.checkpoint_every=50", "train.keep_checkpoints=1",
        "train.checkpoint_log_points=3", "train.checkpoints_around_transition=3"] + FALL
# grid: 200^(i/2) = 1, 14, 200 -> log steps 10, 20, 200. Transition: onset 120 (the fall), 130 and 140
# kept; at 150 the budget (3) is full, so 130 goes and the stride doubles; it ends at 160 (flat since
# 120), saved. Periodic: 50, 100, 150, 200, of which the newest rolling one (200 is kept for good) stays.
EXPECTED = {10: ["schedule"], 20: ["schedule"], 120: ["transition"], 140: ["transition"], 150: ["periodic"],
            160: ["transition"], 200: ["final", "periodic", "schedule"]}


def test_transition_checkpoints_of_a_run_load_and_survive_an_interruption(tmp_path, tiny_overrides, monkeypatch):
    from lab.train.restore import load_run
    from lab.train.trainer import Trainer

    ref = tmp_path / "ref"
    result = lab.run(lab.load_config(tiny_overrides + ARGS), ref, plots=False)
    index = load_checkpoint_index(ref)
    assert index["checkpoints"] == EXPECTED and checkpoint_steps(ref) == sorted(EXPECTED)
    assert index["transitions"] == [{"onset": 120, "end": 160, "seeds": [0]}]
    # every checkpoint has its manifest and callback state, and nothing pruned left one behind
    for folder, suffix in (("checkpoint_manifests", ".json"), ("callback_state", ".npz")):
        assert sorted(int(p.name.removesuffix(suffix)) for p in (ref / folder).iterdir()) == sorted(EXPECTED)
    losses = {r["step"]: r["loss_repeat"][0] for r in records(ref)}
    assert losses[110] > 2 and losses[120] < 0.1          # the fall the checkpoints surround
    before, during = load_run(ref, step=20), load_run(ref, step=140)
    assert (before.step, during.step) == (20, 140)
    w = [np.asarray(r.params["W_E"]) for r in (before, during)] + [np.asarray(result.params["W_E"])]
    assert not np.array_equal(w[0], w[1]) and not np.array_equal(w[1], w[2])

    # interrupted by a second signal inside the chunk of steps 151-160 (nothing saved then, as after a
    # SIGKILL): the newest checkpoint is 150, saved before 130 was dropped. Continued, it must
    # write the same records and keep the same checkpoints.
    fetch, calls = Trainer.fetch, []

    def interrupt_in_chunk_16(out):
        calls.append(1)
        if len(calls) == 16:
            raise KeyboardInterrupt("signal 2")
        return fetch(out)

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "fetch", staticmethod(interrupt_in_chunk_16))
    with pytest.raises(KeyboardInterrupt):
        lab.run(lab.load_config(tiny_overrides + ARGS), run, plots=False)
    monkeypatch.setattr(Trainer, "fetch", staticmethod(fetch))
    assert checkpoint_steps(run) == [10, 20, 120, 140, 150]
    lab.run(lab.load_config(tiny_overrides + ARGS), run, plots=False)
    assert records(run) == records(ref)
    assert load_checkpoint_index(run) == index
    assert checkpoint_steps(run) == sorted(EXPECTED)
    assert sorted(p.name for p in (run / "checkpoint_manifests").iterdir()) == \
        sorted(p.name for p in (ref / "checkpoint_manifests").iterdir())


def test_keep_checkpoints_prunes_only_the_rolling_ones(tmp_path):
    """keep=2 bounds the periodic/final checkpoints; schedule and transition ones stay, a thinned-out
    transition checkpoint goes (with its manifest and callback state) unless another reason keeps it, and
    the index read back after a restart says why each one is there."""
    import jax.numpy as jnp
    from lab.train.checkpoint import Checkpoints

    run = tmp_path / "run"
    ck = Checkpoints(run / "checkpoints", keep=2)
    saves = {10: ["schedule"], 20: ["periodic"], 30: ["transition"], 40: ["periodic", "transition"],
             50: ["periodic"], 60: ["transition"], 70: ["final", "periodic"]}
    for step, reasons in saves.items():
        ck.save_callback_state(step, [])
        ck.save(step, {"w": jnp.full((4,), float(step))}, reasons)
    # rolling: 20, 50, 70 (40 is also a transition checkpoint) -> the newest two, 50 and 70
    assert checkpoint_steps(run) == [10, 30, 40, 50, 60, 70]
    ck.drop_reason(30, "transition")     # nothing else keeps it: deleted
    ck.drop_reason(40, "transition")     # periodic, now rolling and the oldest of three: pruned
    ck.drop_reason(10, "transition")     # not a reason it has: nothing happens
    ck.close()
    kept = [10, 50, 60, 70]
    assert checkpoint_steps(run) == kept
    for folder, suffix in (("checkpoint_manifests", ".json"), ("callback_state", ".npz")):
        assert sorted(int(p.name.removesuffix(suffix)) for p in (run / folder).iterdir()) == kept
    again = Checkpoints(run / "checkpoints", keep=2)
    assert again.reasons == {10: ["schedule"], 50: ["periodic"], 60: ["transition"], 70: ["final", "periodic"]}
    assert again.rolling() == [50, 70]
    again.close()


def test_checkpoint_index_of_an_older_or_damaged_run(tmp_path):
    for step in (5, 10):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    assert load_checkpoint_index(tmp_path) == {"checkpoints": {5: [], 10: []}, "transitions": []}   # no index
    (tmp_path / "checkpoints.json").write_text('{"checkpoints": {"10": ["transition"], "99": ["schedule"]}}')
    assert load_checkpoint_index(tmp_path)["checkpoints"] == {5: [], 10: ["transition"]}   # 99 is not on disk
    (tmp_path / "checkpoints.json").write_text('{"checkpoints": ')
    with pytest.warns(UserWarning, match="checkpoints.json is unreadable"):   # none pruned: kept as unknown
        assert load_checkpoint_index(tmp_path)["checkpoints"] == {5: ["unknown"], 10: ["unknown"]}


def test_a_checkpoint_saved_on_several_devices_loads_on_one(tmp_path):
    """lab-train makes one XLA device per CPU core and saves the state sharded over them; a notebook
    (or this test process) has one device. Restoring used to fail there ("topology mismatch", reported
    as a damaged checkpoint), so load_run could not open a lab-train run's checkpoints."""
    import os
    import subprocess
    import sys

    import jax
    import jax.numpy as jnp
    from conftest import HANG_S
    from lab.train.checkpoint import Checkpoints

    save = ("import os, sys; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
            "import jax, jax.numpy as jnp, numpy as np\n"
            "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
            "from lab.train.checkpoint import Checkpoints\n"
            "assert len(jax.devices()) == 2\n"
            "mesh = Mesh(np.array(jax.devices()), ('seeds',))\n"
            "w = jax.device_put(jnp.arange(8.0).reshape(2, 4), NamedSharding(mesh, P('seeds')))\n"
            "ck = Checkpoints(sys.argv[1], keep=1); ck.save(5, {'w': w}); ck.close()\n")
    p = subprocess.run([sys.executable, "-c", save, str(tmp_path / "checkpoints")], capture_output=True, text=True,
                       timeout=HANG_S, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(jax.devices()) == 1
    ck = Checkpoints(tmp_path / "checkpoints", keep=1)
    try:
        step, state = ck.restore(jax.eval_shape(lambda: {"w": jnp.zeros((2, 4))}))
    finally:
        ck.close()
    assert step == 5 and np.array_equal(np.asarray(state["w"]), np.arange(8.0).reshape(2, 4))
