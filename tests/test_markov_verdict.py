"""The Markov task's own rule for "an induction head formed" (MarkovTask.head_formed): its corrected
statistical-induction score is 0 for uniform attention, so a head that ends above the score threshold
formed even when its rise starts at the first log steps, with no plateau before it (which the general
rule, a transition after a plateau or an abrupt sigmoid, does not count)."""
from __future__ import annotations

import numpy as np
import pytest

from lab.analysis.summary import summarize
from lab.config.compose import load_config
from lab.tasks import make_task
from lab.tasks.base import Task
from lab.tasks.markov import MarkovTask

STEPS = np.arange(0, 1525, 25)


@pytest.fixture(scope="module")
def markov():
    cfg = load_config(["task=markov", "train.seeds=1"])
    return cfg, make_task(cfg.task)


def _early_rise(top: float) -> np.ndarray:
    """Rises from 0 at once (no plateau), fast then slowly, to about `top` (as Edelman et al.'s heads do)."""
    return top * (0.6 * (1 - np.exp(-STEPS / 60.0)) + 0.4 * (1 - np.exp(-STEPS / 500.0)))


def test_head_formed_judges_the_level_reached(markov):
    cfg, task = markov
    pc = cfg.measures.phase
    assert task.head_formed(_early_rise(0.75), pc) is True
    assert task.head_formed(_early_rise(0.3), pc) is False                          # below the threshold (0.4)
    assert task.head_formed(np.full(len(STEPS), 0.5), pc) is False                   # high from the start: no rise
    assert task.head_formed(np.r_[_early_rise(0.75)[:-5], np.full(5, 0.1)], pc) is False   # fell back at the end
    assert Task.head_formed(task, _early_rise(0.75), pc) is None                     # other tasks: the general rule


def _metrics(task) -> dict:
    L, H = 2, 4
    uni, bi = task.baseline_losses()
    loss = (bi + (uni - bi) * np.exp(-STEPS / 300.0) + 0.05 * np.exp(-STEPS / 40.0))[:, None]
    ind = np.zeros((len(STEPS), 1, L, H))
    for h, top in enumerate((0.74, 0.76, 0.71, 0.2)):         # three heads at 0.71-0.76, one that did not form
        ind[:, 0, 1, h] = _early_rise(top)
    prev = np.zeros((len(STEPS), 1, L, H))
    prev[:, 0, 0, 3] = _early_rise(0.6)
    return {"step": STEPS, "loss_markov": loss, "loss": loss, "acc_markov": np.full_like(loss, 0.4),
            "induction": ind, "prev_token_corrected": prev}


def test_verdict_counts_heads_that_rose_from_the_start(markov, monkeypatch):
    cfg, task = markov
    metrics = _metrics(task)
    s = summarize(metrics, cfg, task, [0])
    assert s["induction_heads_per_seed"] == [["L1H0", "L1H1", "L1H2"]]
    assert "induction head formed in 1/1 seeds" in s["verdict"]
    # the general rule alone (what the verdict said before): no plateau before the rise, so not formed
    monkeypatch.setattr(MarkovTask, "head_formed", Task.head_formed)
    general = summarize(metrics, cfg, task, [0])
    assert "induction head formed in 0/1 seeds" in general["verdict"]
