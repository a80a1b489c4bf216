"""lab-sweep on fabricated multirun directories (no training): the table has one row per (job, seed)
with the swept parameters, phase steps, final metrics and error lines; the report holds every
file, and its HTML shows its figures in a real browser (headless Chromium)."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # fake_run and lab, with no shared conftest or install

from fake_run import make_fake_job  # noqa: E402
from lab.analysis.sweep import collect
from lab.app.sweep import main
from lab.plots.report import write_report  # noqa: E402

SMALL = dict(steps=12, T=16, layers=1, heads=2, with_attention=False)
VOCABS, LAYERS = (12, 16), (1, 2)
CONFIG_ERROR = "model.d_model=16 is not divisible by model.n_heads=3"


def _make_sweep(root: Path) -> Path:
    """A 2 × 2 grid of completed jobs (2 seeds each, the phase change later for the larger
    vocabulary), then a job that failed on its config (no run files) and one whose loss became NaN."""
    common = ["train=tiny", "task.seq_len=16"]
    n = 0
    for vocab in VOCABS:
        for layers in LAYERS:
            overrides = common + [f"task.vocab_size={vocab}", f"model.n_layers={layers}"]
            make_fake_job(root / str(n), overrides, seeds=2, mid_frac=0.3 + 0.02 * vocab + 0.05 * layers, **SMALL)
            n += 1
    make_fake_job(root / "4", common + ["task.vocab_size=12", "model.n_layers=3"], kind="config_error",
                  error=CONFIG_ERROR)
    make_fake_job(root / "5", common + ["task.vocab_size=16", "model.n_layers=3"], kind="nan", **SMALL)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return _make_sweep(tmp_path_factory.mktemp("multirun") / "02-50-00")


@pytest.fixture(scope="module")
def report(sweep):
    return write_report(sweep)


def test_collect_one_row_per_job_and_seed(sweep):
    rows = collect(sweep)
    assert len(rows) == 6 * 2
    assert [(r["job"], r["seed"]) for r in rows] == [(str(j), s) for j in range(6) for s in (0, 1)]
    # swept: the two parameters that differ (common overrides and the seed are not columns)
    assert "task.vocab_size" in rows[0] and "model.n_layers" in rows[0] and "task.seq_len" not in rows[0]
    assert [r["task.vocab_size"] for r in rows[:8:2]] == [12, 12, 16, 16]
    assert [r["model.n_layers"] for r in rows[:8:2]] == [1, 2, 1, 2]
    assert rows[0]["overrides"] == "train=tiny task.seq_len=16 task.vocab_size=12 model.n_layers=1"

    for r in rows[:8]:    # completed: the phase steps are those of the job's summary.json, seed by seed
        summary = json.loads((sweep / r["job"] / "summary.json").read_text())
        i = summary["seeds"].index(r["seed"])
        expected = summary["phase"]["loss_repeat"]["per_seed"][i]
        assert r["status"] == "completed" and r["error"] is None
        assert r["loss_repeat_detected"] is True
        assert r["loss_repeat_midpoint"] == pytest.approx(expected["midpoint"])
        assert r["loss_repeat_onset"] == pytest.approx(expected["onset"])
        assert r["loss_repeat_threshold_step"] == expected["threshold_step"]
        heads = summary["phase"]["induction"]
        earliest = min(h["per_seed"][i]["midpoint"] for h in heads.values() if h["per_seed"][i]["detected"])
        assert r["induction_midpoint"] == pytest.approx(earliest)
        last = json.loads((sweep / r["job"] / "metrics.jsonl").read_text().splitlines()[-1])
        for key in ("loss_repeat", "acc_repeat", "loss", "train_loss"):
            assert r[f"final_{key}"] == pytest.approx(last[key][i])
        assert r["last_step"] == last["step"]

    config_error, nan = rows[8:10], rows[10:12]
    for r in config_error:     # no summary.json, no metrics: seeds from .hydra/config.yaml, error from train.log
        assert r["status"] == "failed" and r["error"] == f"config error: {CONFIG_ERROR}"
        assert r["loss_repeat_midpoint"] is None and r["final_loss_repeat"] is None
    for r in nan:
        assert r["status"] == "failed"
        assert r["error"].startswith("training failed: failed: non-finite training loss")
        assert not r["error"].endswith("]")      # the run directory lab-train appends is dropped
    assert {r["model.n_layers"] for r in config_error + nan} == {3}


def test_killed_job_is_incomplete_and_resumable(tmp_path):
    root = tmp_path / "sweep"
    make_fake_job(root / "0", ["optim.lr=0.001"], **SMALL)
    make_fake_job(root / "1", ["optim.lr=0.003"], kind="killed", first_seed=5, **SMALL)
    with pytest.warns(UserWarning, match="truncated last line"):
        rows = collect(root)
    assert [(r["job"], r["seed"], r["optim.lr"]) for r in rows] == [("0", 0, 0.001), ("0", 1, 0.001),
                                                                    ("1", 5, 0.003), ("1", 6, 0.003)]
    assert rows[2]["status"] == "incomplete (killed?)" and rows[2]["loss_repeat_midpoint"] is None
    assert rows[2]["final_loss_repeat"] is not None
    with pytest.warns(UserWarning):
        paths = write_report(root, tmp_path / "out")
    assert "phase_grid" not in paths              # one swept parameter: no grid
    page = paths["html"].read_text()
    assert "train.resume=true" in page and f"hydra.run.dir={(root / '1').resolve()}" in page


def test_report_writes_every_file(sweep, report):
    assert set(report) == {"csv", "json", "phase_vs_params", "loss_curves", "phase_grid", "html"}
    for name in ("phase_vs_params", "loss_curves", "phase_grid"):
        assert report[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report[name].stat().st_size > 5000
    assert all(p.parent == sweep / "report" for p in report.values())
    with open(report["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and table[8]["error"] == f"config error: {CONFIG_ERROR}"
    doc = json.loads(report["json"].read_text())
    assert doc["swept"] == ["task.vocab_size", "model.n_layers"]
    assert doc["common_overrides"] == ["train=tiny", "task.seq_len=16"]
    assert doc["counts"] == {"jobs": 6, "seeds": 12, "completed": 4, "failed": 2, "incomplete": 0,
                             "seeds_completed": 8, "seeds_with_phase_change": 8}

    page = report["html"].read_text()
    assert page.count("<img ") == 3 and page.count('src="data:image/png;base64,') == 3
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)       # nothing fetched from anywhere
    for job in ("4", "5"):    # each failed job's rerun command, in its own directory or a fresh one
        overrides = " ".join(_overrides(sweep / job))
        assert f"lab-train {overrides} hydra.run.dir=" in page
    assert f"config error: {CONFIG_ERROR}" in page


def _overrides(job: Path) -> list[str]:
    import yaml
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def test_one_swept_parameter_has_no_grid(tmp_path):
    root = tmp_path / "sweep"
    for i, vocab in enumerate(VOCABS):
        make_fake_job(root / str(i), [f"task.vocab_size={vocab}"], seeds=1, **SMALL)
    paths = write_report(root)
    assert set(paths) == {"csv", "json", "phase_vs_params", "loss_curves", "html"}
    assert not (root / "report" / "phase_grid.png").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_every_image_in_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report["html"].as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stdout[:2000]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, body.group(0)
    assert int(loaded.group(1)) == int(total.group(1)) == 3


def test_cli_prints_table_failures_and_paths(sweep, tmp_path, capsys):
    main([str(sweep), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "6 jobs, 12 seeds; 4 completed, 2 failed" in out
    assert re.search(r"^4 +0 +12 +3 +failed", out, re.M)
    assert f"4: config error: {CONFIG_ERROR}" in out
    assert str(tmp_path / "out" / "report.html") in out


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_cli_without_jobs_fails_in_one_line(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    make(target)
    with pytest.raises(SystemExit) as exit_:
        main([str(target)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0]


def test_condition_rows_are_statistics_over_each_conditions_seeds(sweep):
    """One row per completed condition (the failed n_layers=3 jobs have none); each value is a
    statistic over that condition's two seeds: k/n with Clopper-Pearson, mean and sample std."""
    from lab.analysis.sweep import condition_rows, scan
    rows = collect(sweep)
    table = condition_rows(scan(sweep))
    assert [r["condition"] for r in table] == [f"task.vocab_size={v}, model.n_layers={n}" for v in VOCABS for n in LAYERS]
    for cond, per_seed in zip(table, [rows[i:i + 2] for i in range(0, 8, 2)]):
        assert cond["seeds"] == 2 and cond["with_transition"] == 2
        assert cond["with_transition_ci95"] == pytest.approx((0.025 ** 0.5, 1.0), abs=1e-6)   # 2 of 2
        final = [r["final_loss_repeat"] for r in per_seed]
        assert cond["final_mean"] == pytest.approx(np.mean(final))
        assert cond["final_std"] == pytest.approx(np.std(final, ddof=1))
        lo, hi = cond["final_ci95"]
        assert min(final) - 1e-9 <= lo <= hi <= max(final) + 1e-9


def test_html_fits_a_1400px_screen_in_chromium(report, tmp_path):
    """No sideways scrolling at 1400 px: not the page, not the tables (the script measures both)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           report["html"].as_uri()], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout)
    overflow = re.search(r'data-overflow-x="(-?\d+)"', body.group(0)) if body else None
    assert overflow, proc.stdout[:2000]
    assert int(overflow.group(1)) == 0


def test_html_links_each_jobs_plots(tmp_path):
    """Each job's run figures are linked from the report, relative to it, in the run figures' order; a job
    without plots says how to draw them."""
    root = _make_sweep(tmp_path / "multirun" / "02-50-00")
    for name in ("heads_lines", "loss"):
        (root / "0" / "plots").mkdir(exist_ok=True)
        (root / "0" / "plots" / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    written = write_report(root)
    page = written["html"].read_text()
    links = re.findall(r'<a href="([^"]+)">(\w+)</a>', page)
    job0 = [(href, name) for href, name in links if href.startswith("../0/")]
    assert ("../0/plots/loss.png", "loss") in job0 and ("../0/plots/heads_lines.png", "heads_lines") in job0
    assert [name for _, name in job0 if name != "0"].index("loss") < [n for _, n in job0 if n != "0"].index("heads_lines")
    for href, _ in job0:
        assert (written["html"].parent / href).resolve().is_file()
    assert '<a href="../0/plots/loss.png">0</a>' in page      # the job's cell in the table links to its loss figure
    assert f"lab-plot {root / '1'}" in page


def test_accuracy_grid_cells_by_hand(tmp_path):
    """Reddy's (B, K) phase diagram cells: the mean of final_acc_ic over each cell's completed seeds.
    (B=0, K=512): seeds 0.1, 0.3 -> 0.2 (2); (B=4, K=512): 0.9 and a failed seed's 0.0, left out -> 0.9 (1);
    (B=0, K=2048): only a failed seed -> NaN (0); (B=4, K=2048): 0.5, 0.7, 0.6 -> 0.6 (3), each with its
    sample std. A job that has not
    logged K yet (None) gives no row or column. Then the figure itself is drawn."""
    from lab.analysis.sweep import COMPLETED, FAILED, Sweep
    from lab.plots.sweep import SWEEP_FIGURES, accuracy_grid_cells

    def row(B, K, acc, category=COMPLETED):
        return {"task.burstiness": B, "task.n_classes": K, "final_acc_ic": acc, "final_acc_iw": 1 - acc,
                "_category": category}
    rows = [row(0, 512, 0.1), row(0, 512, 0.3), row(4, 512, 0.9), row(4, 512, 0.0, FAILED), row(0, 2048, 0.4, FAILED),
            row(4, 2048, 0.5), row(4, 2048, 0.7), row(4, 2048, 0.6), row(2, None, 0.8)]
    sweep = Sweep(dir=tmp_path, jobs=[], swept=["task.burstiness", "task.n_classes"], common=[], command=None, rows=rows)
    xs, ys, mean, sd, count = accuracy_grid_cells(sweep, "acc_ic", "task.burstiness", "task.n_classes")
    assert xs == [0, 4] and ys == [512, 2048]
    np.testing.assert_allclose(mean, [[0.2, 0.9], [np.nan, 0.6]])
    # sample std: (0.1, 0.3) -> sqrt(0.02 / 1) = 0.1414; (0.5, 0.7, 0.6) -> sqrt(0.02 / 2) = 0.1; one seed: NaN
    np.testing.assert_allclose(sd, [[0.141421, np.nan], [np.nan, 0.1]], rtol=1e-5)
    assert count.tolist() == [[2, 1], [0, 3]]
    path = SWEEP_FIGURES["accuracy_grid"].draw(sweep, tmp_path / "accuracy_grid.png")
    assert path is not None and path.stat().st_size > 0
