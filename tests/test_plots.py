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
import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # fake_run and lab, with no shared conftest or install

from fake_run import make_fake_run  # noqa: E402
from lab.plots.run import FIGURES, plot_run  # noqa: E402
from lab.plots.transition import phase_transition  # noqa: E402
from lab.rundir import load_metrics, load_run_config  # noqa: E402

SMALL = dict(steps=12, T=16)


def _check_written(paths, out_dir, expected):
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in expected)
    for p in paths:
        assert p.parent == out_dir and p.stat().st_size > 1000, p
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_run_draws_every_figure(tmp_path):
    run = make_fake_run(tmp_path / "run", with_development=True, **SMALL)   # llc.npz, outputs.npz too
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
    assert phase_transition(summary).describe().startswith("no phase change detected")
    _check_written(plot_run(run, figures=["loss"]), run / "plots", ["loss"])


def test_phase_summary_text():
    per_seed = [{"detected": True, "midpoint": m, "onset": m - 100, "end": m + 100} for m in (1000.0, 1200.0)]
    summary = {"phase": {"loss_repeat": {"per_seed": per_seed + [{"detected": False, "reason": "flat"}],
                                         "aggregate": {"n_detected": 2, "n_seeds": 3, "midpoint_mean": 1100.0,
                                                       "midpoint_std": 100.0}}}}
    tr = phase_transition(summary)
    assert tr.describe() == "phase change at step 1100 ± 100 (2/3 seeds)"
    assert (tr.onset, tr.end) == (1000.0, 1200.0)  # from per-seed values where the aggregate lacks them
    assert phase_transition({}) is None


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
    from lab.app.plot import plot_main
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


# ----------------------------------------------------------------------------- clamps

from fake_run import LOG_EVERY, clamp  # noqa: E402
from lab.plots import run as plots  # noqa: E402
from lab.plots.compare import config_differences, plot_compare  # noqa: E402
from lab.plots.clamp_windows import clamp_windows  # noqa: E402

CLAMPS = {
    "prev_token": clamp(stop=400),                                                 # trains, 0–400
    "ind_eval": clamp(site="blocks.1.attn.pattern", value="zero", heads=[2], start=200, apply="eval"),
    "probe": clamp(site="blocks.1.attn.pattern", value="zero", heads=None, apply="measure"),
    "ramped": clamp(value="induction", heads=[1, 3], start=100, stop=500, schedule="linear", ramp_steps=200,
                    strength=0.5, apply="train"),
}


def test_clamp_windows_from_config():
    windows = {w.name: w for w in clamp_windows({"clamps": CLAMPS}, last_step=550)}
    assert list(windows) == list(CLAMPS)
    pt, ev, probe, ramped = windows.values()
    assert (pt.start, pt.stop, pt.end, pt.ramp, pt.trains) == (0, 400, 400, None, True)
    assert (ev.start, ev.stop, ev.end) == (200, None, 550)            # null stop: the run's last step
    assert ev.eval_only and ev.drawn and not ev.trains
    assert not probe.drawn and probe.heads == "all heads"              # measure-only: a metric, no band
    assert ramped.ramp == (100, 300) and ramped.heads == "H1,3"
    assert ramped.legend_label() == ("clamp ramped: induction on blocks.0.attn.pattern H1,3 "
                                     "(×0.5, linear ramp 200, train only)")
    assert pt.legend_label() == "clamp prev_token: prev_token on blocks.0.attn.pattern H0"
    assert pt.describe() == "prev_token (blocks.0.attn.pattern H0, 0–400)"
    assert len({w.colour for w in windows.values()}) == 4
    release = clamp_windows({"clamps": {"r": clamp(start=100, schedule="release", ramp_steps=50)}}, 550)[0]
    assert release.ramp == (500, 550) and release.ramp_level(0.0) == 1.0 and release.ramp_level(1.0) == 0.0
    # heads: auto are named from summary.json; the window opens when they were chosen
    auto = clamp_windows({"clamps": {"a": clamp(heads="auto", start=0)}}, 550,
                         {"clamps": {"a": {"heads_per_seed": [[1], [1]], "chosen_at_step": 150}}})[0]
    assert auto.heads == "auto → H1" and auto.start == 150
    assert clamp_windows({"clamps": {"a": clamp(heads="auto")}}, 550)[0].heads == "auto"   # no summary entry
    for config in ({}, {"clamps": {}}, {"clamps": None}, None):
        assert clamp_windows(config, 550) == []
    with pytest.warns(UserWarning, match="not a mapping"):
        assert clamp_windows({"clamps": {"bad": 3}}, 550) == []


@pytest.fixture
def captured(monkeypatch):
    """Keep the figures plot_run draws open, by output name, instead of saving them."""
    figs = {}

    def keep(fig, path):
        figs[Path(path).stem] = fig
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield figs
    for fig in figs.values():
        plots.plt.close(fig)


def _clamp_patches(ax, name):
    return [p for p in ax.patches if (p.get_gid() or "").split(":")[:2] == ["clamp", name]]


def _x_extent(patches):
    return min(p.get_x() for p in patches), max(p.get_x() + p.get_width() for p in patches)


def test_clamp_windows_are_shaded(tmp_path, captured):
    run = make_fake_run(tmp_path / "run", clamps=CLAMPS, **SMALL)
    last = (SMALL["steps"] - 1) * LOG_EVERY
    plot_run(run, figures=["loss", "heads_lines", "all_scalars"])
    assert set(captured) == {"loss", "heads_lines", "all_scalars"}
    for name, fig in captured.items():
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
        for ax in axes:
            if not _clamp_patches(ax, "prev_token"):   # the ICL score's twin axis holds no bands
                assert ax.get_ylabel() == plots.metric_label("icl_score"), name
                continue
            assert _x_extent(_clamp_patches(ax, "prev_token")) == (0, 400)
            eval_band = _clamp_patches(ax, "ind_eval")
            assert _x_extent(eval_band) == (200, last) and not eval_band[0].get_fill()
            assert eval_band[0].get_linestyle() == "--"
            ramp = [p for p in _clamp_patches(ax, "ramped") if p.get_gid().endswith(":ramp")]
            assert _x_extent(ramp) == (100, 300) and _x_extent(_clamp_patches(ax, "ramped")) == (100, 500)
            alphas = [p.get_alpha() for p in sorted(ramp, key=lambda p: p.get_x())]
            assert alphas == sorted(alphas) and alphas[0] < alphas[-1]    # fades in
            assert not _clamp_patches(ax, "probe")                         # measure-only: no band
        legend_text = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        assert "clamp prev_token: prev_token on blocks.0.attn.pattern H0" in legend_text, name
        assert "clamps: prev_token 0–400" in fig.get_suptitle(), name
    loss_ax = captured["loss"].axes[0]
    labels = [line.get_label() for line in loss_ax.lines]
    assert "loss under clamp probe" in labels
    clamped = loss_ax.lines[labels.index("loss under clamp probe")]
    assert clamped.get_linestyle() == "--"
    assert any("under clamp probe" in ax.get_title() for ax in captured["all_scalars"].axes)


def test_runs_without_clamps_look_as_before(tmp_path):
    """No config.yaml (an old run), no `clamps` key, and `clamps: {}` draw the same bytes."""
    figures = ["loss", "heads_lines", "all_scalars"]
    drawn = {}
    for variant, kwargs in (("old", dict(with_config=False)), ("nokey", {}), ("empty", dict(clamps={}))):
        run = make_fake_run(tmp_path / variant / "run", **SMALL, **kwargs)
        if variant == "nokey":
            config = load_run_config(run)
            del config["clamps"]
            (run / "config.yaml").write_text(yaml.safe_dump(config))
        drawn[variant] = {p.name: p.read_bytes() for p in plot_run(run, figures=figures)}
    assert drawn["old"] == drawn["nokey"] == drawn["empty"]


def _aggregate(run):
    return json.loads((run / "summary.json").read_text())["phase"]["loss_repeat"]["aggregate"]


def test_plot_compare_writes_png_json_and_table(tmp_path, capsys):
    plain = make_fake_run(tmp_path / "plain", **SMALL)
    clamped = make_fake_run(tmp_path / "clamped", mid_frac=0.3, clamps={"prev_token": clamp()}, **SMALL)
    flat = make_fake_run(tmp_path / "flat", detected=False,
                         clamps={"ind_off": clamp(site="blocks.1.attn.pattern", value="zero", heads=[2],
                                                  start=100, stop=300, apply="eval")}, **SMALL)
    out = plot_compare([plain, clamped, flat], tmp_path / "figs" / "cmp.png")
    assert out == tmp_path / "figs" / "cmp.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((tmp_path / "figs" / "cmp.json").read_text())
    assert table["metric"] == "loss_repeat"
    rows = table["runs"]
    assert [r["label"] for r in rows] == [
        "clamps: none", "clamps: prev_token (blocks.0.attn.pattern H0, 0–end)",
        "clamps: ind_off=zero (blocks.1.attn.pattern H2, 100–300, eval only)"]
    for run, row in zip((plain, clamped), rows):
        agg = _aggregate(run)
        assert row["midpoint_mean"] == pytest.approx(agg["midpoint_mean"])
        assert row["midpoint_std"] == pytest.approx(agg["midpoint_std"])
        assert (row["n_detected"], row["n_seeds"], row["seeds"]) == (2, 2, 2)
    assert rows[1]["midpoint_mean"] < rows[0]["midpoint_mean"]        # the clamp brought it forward
    assert rows[2]["midpoint_mean"] is None and rows[2]["n_detected"] == 0
    final = load_metrics(plain)["loss_repeat"][-1]
    assert rows[0]["final_mean"] == pytest.approx(final.mean()) and rows[0]["final_std"] == pytest.approx(final.std(ddof=1))
    assert rows[1]["clamps"]["prev_token"]["site"] == "blocks.0.attn.pattern"
    printed = capsys.readouterr().out
    assert "phase-change midpoint" in printed and "clamps: none" in printed and "0/2" in printed
    assert f"{_aggregate(plain)['midpoint_mean']:.0f} ± {_aggregate(plain)['midpoint_std']:.0f}" in printed


def test_compare_labels_from_config_differences(tmp_path):
    base = {"model": {"n_layers": 2, "n_heads": 4}, "train": {"seed": 0, "progress": True}, "clamps": {}}
    other = {"model": {"n_layers": 1, "n_heads": 4}, "train": {"seed": 0, "progress": False}}
    assert config_differences([base, other, None]) == [{"model.n_layers": 2}, {"model.n_layers": 1}, {}]
    assert config_differences([base, base]) == [{}, {}]
    # nothing differs: the directory names tell the runs apart, a multirun job's with its sweep's
    runs = [make_fake_run(tmp_path / "sweep" / job, seeds=1, steps=8, T=16, with_attention=False) for job in "01"]
    one_layer = make_fake_run(tmp_path / "one", seeds=1, steps=8, T=16, with_attention=False,
                              config={"model.n_layers": 1})
    assert plot_compare(runs, tmp_path, quiet=True) == tmp_path / "compare.png"    # a directory: compare.png in it
    assert [r["label"] for r in json.loads((tmp_path / "compare.json").read_text())["runs"]] == ["sweep/0", "sweep/1"]
    assert plot_compare(runs, tmp_path / "named", labels=["a", "b"], quiet=True) == tmp_path / "named.png"
    assert [r["label"] for r in json.loads((tmp_path / "named.json").read_text())["runs"]] == ["a", "b"]
    plot_compare([runs[0], one_layer], tmp_path / "diff.png", metric="acc_repeat", labels=None, quiet=True)
    rows = json.loads((tmp_path / "diff.json").read_text())["runs"]
    assert [r["label"] for r in rows] == ["model.n_layers=2", "model.n_layers=1"]
    assert rows[0]["phase_metric"] == "loss_repeat"   # acc_repeat has no phase entry of its own
    with pytest.raises(ValueError, match="no metric 'nope'"):
        plot_compare(runs, tmp_path / "x.png", metric="nope", quiet=True)
    with pytest.raises(ValueError, match="not a run directory"):
        plot_compare([runs[0], tmp_path], tmp_path / "x.png", quiet=True)


def test_lab_plot_compare_cli(tmp_path, capsys, monkeypatch):
    from lab.app.plot import plot_main
    for job in ("0", "1"):
        make_fake_run(tmp_path / "sweep" / job, seeds=1, steps=8, T=16, with_attention=False,
                      config={"optim.lr": [1e-3, 3e-3][int(job)]})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:   # a multirun directory expands to its jobs
        plot_main(["--compare", "sweep"])
    assert exit_.value.code == 0
    assert (tmp_path / "compare.png").is_file() and (tmp_path / "compare.json").is_file()
    out = capsys.readouterr().out
    assert "optim.lr=0.001" in out and "optim.lr=0.003" in out and "compare.png" in out
    with pytest.raises(SystemExit) as exit_:
        plot_main(["--compare", "sweep/0", "sweep/1", "--metric", "acc_repeat", "--out", "figs/acc.png"])
    assert exit_.value.code == 0 and (tmp_path / "figs" / "acc.json").is_file()
    capsys.readouterr()
    for argv, message in ((["--compare", "sweep/0", "nowhere"], "nowhere"),
                          (["--compare", "sweep", "--metric", "nope"], "no metric 'nope'")):
        with pytest.raises(SystemExit) as exit_:
            plot_main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 2])
def test_figures_drawn_by_worker_processes_are_the_figures_plot_run_draws(tmp_path, workers):
    """draw_run_figures (what a run draws at its end) writes the same figures as
    plot_run alone, whether in forked workers or in this process; an earlier drawing's stale file of a
    figure the run lacks is not reported as drawn."""
    from lab.plots.parallel import draw_run_figures
    run = make_fake_run(tmp_path / "run", with_development=True, **SMALL)
    alone = plot_run(run, tmp_path / "alone")
    stale = tmp_path / "par" / "nonexistent_figure.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    drawn, finished = draw_run_figures(run, tmp_path / "par", workers=workers)
    assert finished
    assert sorted(p.name for p in drawn) == sorted(p.name for p in alone)
    assert stale not in drawn


def test_a_stop_request_ends_the_drawing(tmp_path):
    """should_stop saying yes at once: no worker draws to the end, and draw_run_figures says so."""
    from lab.plots.parallel import draw_run_figures
    run = make_fake_run(tmp_path / "run", with_development=True, **SMALL)
    for workers in (0, 2):
        drawn, finished = draw_run_figures(run, tmp_path / f"w{workers}", workers=workers, should_stop=lambda: True)
        assert not finished and len(drawn) < len(FIGURES)
