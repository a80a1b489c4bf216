"""Run figures are titled with what the run is (task, model shape, the overrides that made it) and
what it found, never with the run directory's name; a run without a phase change says so."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fake_run import make_fake_run  # noqa: E402
import lab.plots.run as run_plots  # noqa: E402
from lab.plots.compare import run_identity  # noqa: E402
from lab.plots.transition import finding  # noqa: E402

SMALL = dict(steps=12, T=16, with_attention=False)
FIGURES = ["loss", "heads_heatmap", "heads_lines", "loss_by_position", "all_scalars"]


def _titles(run, monkeypatch) -> dict[str, str]:
    titles = {}

    def record(fig, path):
        titles[Path(path).stem] = fig.get_suptitle() or fig.axes[0].get_title()
        run_plots.plt.close(fig)
        return path
    monkeypatch.setattr(run_plots, "save_figure", record)
    run_plots.plot_run(run, figures=FIGURES)
    return titles


def _with_overrides(run: Path, overrides: list[str]) -> Path:
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run


def test_titles_name_the_run_and_its_phase_change(tmp_path, monkeypatch):
    run = _with_overrides(make_fake_run(tmp_path / "2026-12-03" / "07-12-55", **SMALL),
                          ["train.steps=480", "train.progress=false", "hydra.run.dir=/x", "clamp=none"])
    titles = _titles(run, monkeypatch)
    assert set(titles) == set(FIGURES)
    for name, title in titles.items():
        assert "07-12-55" not in title, name                                   # not the directory's timestamp
        assert "induction task, 2-layer 4-head transformer (train.steps=480, clamp=none)" in title.replace("\n", " ")
        assert "train.progress" not in title and "hydra" not in title           # how it ran, not what it is
        assert "induction phase change at step" in title and "in 2/2 seeds" in title, (name, title)


def test_titles_without_a_phase_change_say_so(tmp_path, monkeypatch):
    run = make_fake_run(tmp_path / "flat", detected=False, **SMALL)
    for name, title in _titles(run, monkeypatch).items():
        assert "no phase change detected" in title, name
        assert "the induction phase change" not in title and "phase change at step" not in title, name


def test_finding_follows_the_verdicts_count():
    """The initial descent (a transition under way at the first step) is no phase change; a transition
    after a plateau is; seeds that did not train are left out."""
    def entry(censored, detected=False):
        return {"per_seed": [{"detected": detected, "midpoint": 300.0}],
                "stages": [{"transitions": [{"onset": 0.0, "midpoint": 40.0, "end": 90.0, "change": -1.0,
                                             "censored_start": censored}]}]}
    early = {"main_metric": "loss_repeat", "phase": {"loss_repeat": entry(True)}}
    assert finding(early) == "no phase change detected"
    later = {"main_metric": "loss_repeat", "phase": {"loss_repeat": entry(False)}, "induction_head_formed": [True]}
    assert finding(later) == "induction phase change at step 40 in 1/1 seed; induction head formed in 1/1 seed"
    markov = {"main_metric": "loss_markov", "main_metric_label": "loss after burn-in",
              "phase": {"loss_markov": entry(True, detected=True)}}
    assert finding(markov) == "phase change in loss after burn-in at step 300 in 1/1 seed"
    assert finding({**later, "trained_per_seed": [False]}) == "did not train: no phase change measured"
    assert finding({}) == "no phase analysis (no summary.json)"


@pytest.mark.parametrize("overrides, expected", [
    (["task=markov", "model=reddy"], "markov task, 2-layer 1-head transformer (model=reddy)"),
    (None, "markov task, 2-layer 1-head transformer"),
    (["train.tensorboard=false", "hydra.job.chdir=true"], "markov task, 2-layer 1-head transformer"),
])
def test_run_identity(overrides, expected):
    config = {"task": {"name": "markov"}, "model": {"n_layers": 2, "n_heads": 1}}
    assert run_identity(config, overrides) == expected
