"""plot_run must draw every figure for the run shapes the trainer can leave behind: with and
without phase info or attention snapshots, one seed, no phase change, a killed run.

Rendering is slow (~0.5 s a figure), so only the full run draws every figure; the variants
draw the figures whose code paths they change."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # fake_run and lab, with no shared conftest or install

from fake_run import make_fake_run  # noqa: E402
from lab.plots import FIGURES, _transition, load_metrics, plot_run  # noqa: E402

SMALL = dict(steps=12, T=16)


def _check_written(paths, out_dir, expected):
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in expected)
    for p in paths:
        assert p.parent == out_dir and p.stat().st_size > 1000, p
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_run_draws_every_figure(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    _check_written(plot_run(run), run / "plots", FIGURES)


def test_one_seed_without_summary(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=1, **SMALL)
    (run / "summary.json").unlink()
    out = tmp_path / "figs"
    # no phase marks anywhere; attention still drawn, with the strongest heads taken from the metrics
    figures = ["loss", "attention", "loss_by_position"]
    _check_written(plot_run(run, out, figures=figures), out, figures)


def test_without_phase_info_or_attention(tmp_path):
    run = make_fake_run(tmp_path / "run", with_phase=False, with_attention=False, **SMALL)
    paths = plot_run(run, figures=["loss", "attention"])  # attention is skipped, not an error
    _check_written(paths, run / "plots", ["loss"])


def test_no_phase_change_detected_is_reported(tmp_path):
    run = make_fake_run(tmp_path / "run", detected=False, **SMALL)
    summary = json.loads((run / "summary.json").read_text())
    assert _transition(summary).describe().startswith("no phase change detected")
    _check_written(plot_run(run, figures=["loss"]), run / "plots", ["loss"])


def test_phase_summary_text():
    per_seed = [{"detected": True, "midpoint": m, "onset": m - 100, "end": m + 100} for m in (1000.0, 1200.0)]
    summary = {"phase": {"loss_repeat": {"per_seed": per_seed + [{"detected": False, "reason": "flat"}],
                                         "aggregate": {"n_detected": 2, "n_seeds": 3, "midpoint_mean": 1100.0,
                                                       "midpoint_std": 100.0}}}}
    tr = _transition(summary)
    assert tr.describe() == "phase change at step 1100 ± 100 (2/3 seeds)"
    assert (tr.onset, tr.end) == (1000.0, 1200.0)  # from per-seed values where the aggregate lacks them
    assert _transition({}) is None


def test_unknown_figure_name_is_rejected(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    with pytest.raises(ValueError, match="unknown figures"):
        plot_run(run, figures=["lose"])


def test_load_metrics_shapes(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=3, layers=2, heads=4, T=16, steps=7)
    m = load_metrics(run)
    assert m["step"].shape == (7,) and m["step"].dtype.kind == "i"
    for key in ("train_loss", "loss", "loss_repeat", "acc_repeat", "icl_score"):
        assert m[key].shape == (7, 3), key
    assert m["loss_by_pos"].shape == (7, 3, 15)
    for key in ("induction", "prev_token", "prev_token_corrected", "copying"):
        assert m[key].shape == (7, 3, 2, 4), key
    assert m["time"].shape == m["lr"].shape == (7,)


def test_unknown_keys_and_missing_values(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(recs):
        r["grad_norm"] = [1.0, 2.0]
        r["note"] = "text is ignored"
        if i == 0:
            del r["icl_score"]  # logged from the second record on
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = load_metrics(run)
    assert m["grad_norm"].shape == (12, 2) and "note" not in m
    assert m["icl_score"].shape == (12, 2) and np.isnan(m["icl_score"][0]).all()


def test_truncated_last_line_is_skipped(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    text = (run / "metrics.jsonl").read_text()
    last = text.splitlines()[-1]
    (run / "metrics.jsonl").write_text(text + last[: len(last) // 2])  # a killed run's half line
    with pytest.warns(UserWarning, match="truncated"):
        m = load_metrics(run)
    assert m["step"].shape == (12,) and m["loss"].shape == (12, 2)


def test_corrupt_middle_line_is_an_error(tmp_path):
    run = make_fake_run(tmp_path / "run", **SMALL)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 4"):
        load_metrics(run)


def test_lab_plot_cli_on_a_run_and_a_multirun_dir(tmp_path, capsys):
    from lab.cli import plot_main
    for job in ("0", "1"):
        make_fake_run(tmp_path / "sweep" / job, seeds=1, steps=12)
    with pytest.raises(SystemExit) as exit_:
        plot_main([str(tmp_path / "sweep")])
    assert exit_.value.code == 0
    assert (tmp_path / "sweep" / "0" / "plots" / "loss.png").is_file()
    assert (tmp_path / "sweep" / "1" / "plots" / "loss.png").is_file()
    with pytest.raises(SystemExit) as exit_:
        plot_main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "not a run directory" in capsys.readouterr().err
