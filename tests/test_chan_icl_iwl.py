"""experiments/chan_icl_iwl.py's measures on hand-computed curves: the ICL peak and drop of a seed,
normalised accuracies, and the transience claims' handling of seeds whose ICL never rose."""
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.chan_icl_iwl import _transience_claims, normalised, transience
from experiments.common import Run

STEPS = np.array([0, 100, 200, 300, 400, 500])
RISE_FADE = [0.5, 0.6, 0.9, 0.9, 0.3, 0.6]


def test_transience_by_hand():
    # centred 3-point moving average, edges padded with the edge value:
    # [0.5, 0.5, 0.6, 0.9, 0.9, 0.3, 0.6, 0.6] -> 0.533, 0.667, 0.8, 0.7, 0.6, 0.5: peak 0.8 at step 200;
    # final = mean of the last three raw points (0.9 + 0.3 + 0.6) / 3 = 0.6; drop 0.2; 0.8 >= 0.5 + 0.2: rose
    r = transience(STEPS, RISE_FADE)
    assert r["peak"] == pytest.approx(0.8) and r["peak_step"] == 200
    assert r["final"] == pytest.approx(0.6) and r["drop"] == pytest.approx(0.2) and r["rose"]
    flat = transience(STEPS, [0.5] * 6)                 # at chance throughout: no ICL to fade
    assert flat["peak"] == pytest.approx(0.5) and flat["drop"] == pytest.approx(0.0) and not flat["rose"]


def test_normalised_by_hand():
    # (acc - chance) / (1 - chance): 0.75 on a 2-way task is halfway; 1/32 on 32 labels is chance
    np.testing.assert_allclose(normalised([0.75, 0.5, 1.0], 0.5), [0.5, 0.0, 1.0])
    assert normalised(1 / 32, 1 / 32) == pytest.approx(0.0)
    assert normalised(16.5 / 32, 1 / 32) == pytest.approx(0.5)        # (15.5 / 32) / (31 / 32)


def _run(icl_curves, iwl_curves, loss_curves):
    cfg = OmegaConf.create({"task": {"n_labels": 32, "n_classes": 64}})
    metrics = {"step": STEPS, "acc_icl_restricted": np.array(icl_curves).T, "acc_iwl": np.array(iwl_curves).T,
               "loss_query": np.array(loss_curves).T, "acc_icl": np.array(icl_curves).T / 2}
    return Run("t", cfg, {}, metrics, None)


def test_transience_claims_count_only_seeds_whose_icl_rose_and_iwl_took_over():
    iwl_up = [0.0, 0.0, 0.1, 0.4, 0.8, 0.9]          # final mean (0.4 + 0.8 + 0.9) / 3 = 0.7: took over
    loss_down = [3.4, 2.0, 1.0, 0.8, 0.6, 0.5]
    run = _run([RISE_FADE, RISE_FADE, [0.5] * 6], [iwl_up] * 3, [loss_down] * 3)
    rows = [transience(STEPS, c) for c in run.curve("acc_icl_restricted").T]
    fade, loss = _transience_claims(run, rows, 1000)
    assert fade["values"] == pytest.approx([0.2, 0.2, None]) and fade["held"] is True   # both seeds: 0.2 > 0.1
    # loss at the peak (step 200) 1.0, final (0.8 + 0.6 + 0.5) / 3 = 0.633: -0.367
    assert loss["values"][0] == pytest.approx(-0.3667, abs=1e-3) and loss["held"] is True
    assert "seed 2" in fade["note"] and "ICL never rose" in fade["note"]

    def claims_of(icl, iwl, losses):
        r = _run(icl, iwl, losses)
        return _transience_claims(r, [transience(STEPS, c) for c in r.curve("acc_icl_restricted").T], 1000)
    flat = claims_of([[0.5] * 6] * 2, [iwl_up] * 2, [loss_down] * 2)
    assert all(c["held"] is None and "never rose" in c["not_measured"] for c in flat)
    no_iwl = claims_of([RISE_FADE] * 2, [[0.03] * 6] * 2, [loss_down] * 2)        # ICL rose, IWL stayed at chance
    assert all(c["held"] is None and "never took over" in c["not_measured"] for c in no_iwl)
    untrained = claims_of([RISE_FADE] * 2, [iwl_up] * 2, [[math.log(32)] * 6] * 2)   # loss at chance: no claim
    assert all(c["held"] is None and "did not train" in c["not_measured"] for c in untrained)
