"""The development figures (development, essential_dynamics, llc_chains) on fabricated run
directories: drawn when llc.npz / outputs.npz exist, skipped when they do not, and drawn from a
stage report computed on the fly when summary.json predates "stages"."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # fake_run and lab, with no shared conftest or install

from fake_run import make_fake_run  # noqa: E402
from lab.plots.run import DEVELOPMENT_FIGURES, FIGURES, _gather, _llc_picks, plot_run  # noqa: E402
from lab.rundir import load_llc, load_outputs  # noqa: E402

SMALL = dict(steps=24, T=16, layers=2, heads=2, with_attention=False)


def _check_written(paths, out_dir, expected):
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in expected)
    for p in paths:
        assert p.parent == out_dir and p.stat().st_size > 1000, p
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_registered():
    assert set(DEVELOPMENT_FIGURES) <= set(FIGURES)


def test_fake_run_writes_llc_and_outputs_with_the_documented_shapes(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=3, with_development=True, **SMALL)
    llc, out = load_llc(run), load_outputs(run)
    N, S = 24, 3
    assert llc["llc"].shape == llc["llc_std"].shape == llc["init_loss"].shape == llc["not_settled"].shape == (N, S)
    C, M = llc["chains"].shape[2], llc["loss_trace"].shape[3]
    assert llc["chains"].shape == llc["nonfinite"].shape == (N, S, C)
    assert llc["loss_trace"].shape == llc["distance"].shape == (N, S, C, M)
    assert llc["source"] == "online" and json.loads(llc["settings"])["num_chains"] == C
    assert out["outputs"].shape[:2] == (N, S) and isinstance(out["kind"], str)
    stages = json.loads((run / "summary.json").read_text())["stages"]
    assert stages["measured"]["llc"] and stages["measured"]["essential_dynamics"]
    assert len(stages["per_seed"]) == S


def test_development_figures_drawn_from_summary_stages(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=3, with_development=True, **SMALL)
    out = tmp_path / "figs"
    _check_written(plot_run(run, out, figures=DEVELOPMENT_FIGURES), out, DEVELOPMENT_FIGURES)


def test_stage_report_computed_on_the_fly_when_summary_lacks_it(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=2, with_development=True, stages_in_summary=False, **SMALL)
    assert "stages" not in json.loads((run / "summary.json").read_text())
    gathered = _gather(run)
    gathered.llc, gathered.outputs = load_llc(run), load_outputs(run)
    stages = gathered.stages()
    assert stages["measured"] == {"loss": True, "llc": True, "essential_dynamics": True, "heads": True}
    _check_written(plot_run(run, figures=["development"]), run / "plots", ["development"])


def test_without_llc_or_outputs_the_figures_are_skipped(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    assert plot_run(run, figures=DEVELOPMENT_FIGURES) == []


def test_llc_only_and_outputs_only(tmp_path):
    run = make_fake_run(tmp_path / "run", with_development=True, stages_in_summary=False, **SMALL)
    (run / "outputs.npz").unlink()
    _check_written(plot_run(run, figures=DEVELOPMENT_FIGURES), run / "plots", ["development", "llc_chains"])
    run = make_fake_run(tmp_path / "run2", with_development=True, stages_in_summary=False, **SMALL)
    (run / "llc.npz").unlink()
    _check_written(plot_run(run, figures=DEVELOPMENT_FIGURES), run / "plots", ["development", "essential_dynamics"])


def test_one_seed_without_summary(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=1, with_development=True, **SMALL)
    (run / "summary.json").unlink()
    _check_written(plot_run(run, figures=DEVELOPMENT_FIGURES), run / "plots", DEVELOPMENT_FIGURES)


def test_llc_picks_first_middle_last_and_the_first_flagged():
    n = 9
    llc = {"steps": np.arange(n) * 10, "nonfinite": np.zeros((n, 2, 3), bool), "not_settled": np.zeros((n, 2), bool)}
    assert _llc_picks(llc) == [(0, "first"), (4, "middle"), (8, "last")]
    llc["not_settled"][6, 1] = True
    llc["nonfinite"][2, 0, 1] = True
    assert _llc_picks(llc) == [(0, "first"), (2, "flagged"), (4, "middle"), (8, "last")]
    llc["nonfinite"][4, 0, 0] = True      # a pick already shows a flagged estimate
    assert [label for _, label in _llc_picks(llc)] == ["first", "middle", "last"]


def test_old_summary_with_sigmoid_only_still_draws(tmp_path):
    """summary.json with no change-point stages for the loss: the sigmoid's transition is the window."""
    run = make_fake_run(tmp_path / "run", with_development=True, stages_in_summary=False, **SMALL)
    summary = json.loads((run / "summary.json").read_text())
    assert "stages" not in summary["phase"]["loss_repeat"]
    paths = plot_run(run, figures=["development"])
    assert [p.name for p in paths] == ["development.png"]


@pytest.mark.parametrize("bad", ["llc", "outputs"])
def test_malformed_files_are_skipped_with_a_warning(tmp_path, bad):
    run = make_fake_run(tmp_path / "run", with_development=True, **SMALL)
    (run / f"{bad}.npz").write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match=bad):
        paths = plot_run(run, figures=DEVELOPMENT_FIGURES)
    assert paths


# ----------------------------------------------------------------------------- the sweep


def _stage_sweep(root: Path, with_development=True) -> Path:
    """Two conditions (the phase change early or late), one job of three seeds each."""
    from fake_run import make_fake_job
    for n, lr in enumerate((0.001, 0.003)):
        make_fake_job(root / str(n), ["train=tiny", f"optim.lr={lr}"], seeds=3, mid_frac=0.4 + 0.2 * n,
                      with_development=with_development, **{**SMALL, "steps": 40})
    return root


def test_sweep_condition_table_has_stage_boundaries(tmp_path):
    from lab.analysis.sweep import STAGE_COLUMNS, condition_cells, condition_header, condition_rows, scan, collect
    root = _stage_sweep(tmp_path / "multirun")
    sweep = scan(root)
    assert sweep.has_stages
    rows = collect(root)
    assert all(set(STAGE_COLUMNS) <= set(r) for r in rows)
    table = condition_rows(sweep)
    assert [r["condition"] for r in table] == ["optim.lr=0.001", "optim.lr=0.003"]
    for n, cond in enumerate(table):
        stages = json.loads((root / str(n) / "summary.json").read_text())["stages"]
        firsts = [min(c["step"] for c in p["boundaries"]["llc"]) if p["boundaries"]["llc"] else None
                  for p in stages["per_seed"]]
        assert [r["llc_first_step"] for r in rows[3 * n:3 * n + 3]] == firsts
        found = [f for f in firsts if f is not None]
        assert cond["llc_first_n"] == len(found)
        if found:
            assert cond["llc_first_mean"] == pytest.approx(np.mean(found))
        eds = [min(p["boundaries"]["essential_dynamics"]) for p in stages["per_seed"]]
        assert cond["ed_first_mean"] == pytest.approx(np.mean(eds)) and cond["ed_first_n"] == 3
        flags = [f for f in stages["in_loss_window_per_seed"]["llc"] if f is not None]
        assert (cond["llc_in_window"], cond["llc_in_window_n"]) == (sum(flags), len(flags))
        assert [r["llc_first_kind"] for r in rows[3 * n:3 * n + 3]] == [
            min(p["boundaries"]["llc"], key=lambda c: c["step"])["kind"] if p["boundaries"]["llc"] else None
            for p in stages["per_seed"]]
        # the LLC's steepest change per seed, and the seeds where it falls in a loss window
        steepest = [p["llc_steepest"] for p in stages["per_seed"]]
        assert [r["llc_steepest_step"] for r in rows[3 * n:3 * n + 3]] == steepest
        assert cond["llc_steepest_n"] == sum(v is not None for v in steepest)
        flags_steepest = [f for f in stages["in_loss_window_per_seed"]["llc_steepest"] if f is not None]
        assert (cond["llc_steepest_in_window"], cond["llc_steepest_in_window_n"]) == (sum(flags_steepest),
                                                                                    len(flags_steepest))
        assert [r["ed_fastest_step"] for r in rows[3 * n:3 * n + 3]] == [p["ed_fastest"] for p in stages["per_seed"]]
        cells = condition_cells(cond)
        assert len(cells) == len(condition_header(sweep)) == 10
        assert cells[6].startswith(f"{sum(flags)}/{len(flags)} [") or (not flags and cells[6] == "—")
        assert cells[9].startswith(f"{sum(flags_steepest)}/{len(flags_steepest)} [") or (
            not flags_steepest and cells[9] == "—")


def test_sweep_without_stage_reports_keeps_its_table(tmp_path):
    from lab.analysis.sweep import STAGE_COLUMNS, condition_header, condition_rows, scan
    sweep = scan(_stage_sweep(tmp_path / "multirun", with_development=False))
    assert not sweep.has_stages
    assert not set(STAGE_COLUMNS) & set(sweep.rows[0])
    assert len(condition_header(sweep)) == 4 and "llc_first_mean" not in condition_rows(sweep)[0]


def test_sweep_report_shows_the_stage_columns(tmp_path):
    from lab.plots.report import write_report
    root = _stage_sweep(tmp_path / "multirun")
    written = write_report(root)
    assert "stage_boundaries" in written and written["stage_boundaries"].stat().st_size > 1000
    html = written["html"].read_text()
    assert "first LLC critical point (steps)" in html and "LLC boundary in the loss window" in html
    assert "LLC steepest change in the loss window" in html
    doc = json.loads(written["json"].read_text())
    assert "llc_first_mean" in doc["conditions"][0] and "llc_in_window" in doc["rows"][0]
