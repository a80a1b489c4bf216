"""A small multirun through each launcher (basic, joblib, submitit_local): every job runs, a job
that diverges fails alone (the multirun exits 1 once all have ended, naming it), and lab-sweep's
table counts the seeds and reports the failure."""
import subprocess
import sys

import pytest

from conftest import HANG_S, TINY


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_multirun_on_each_launcher(launcher, tmp_path):
    from lab.analysis.sweep import collect
    sweep = tmp_path / "sweep"
    # job 0 trains, job 1 diverges (SGD at lr 1e30); each job holds two seeds
    cmd = [sys.executable, "-m", "lab", "-m", *TINY, "optim=sgd", "optim.lr=0.1,1e30", "train.seeds=2",
           f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 1, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: 1 job(s) of the sweep did not complete (1: failed: "
                                                        "non-finite training loss"), p.stderr[-3000:]
    rows = collect(sweep)
    assert len(rows) == 4                                              # 2 jobs x 2 seeds
    ok = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"].startswith("failed")]
    assert sorted(r["seed"] for r in ok) == [0, 1]
    assert len(failed) == 2 and all("non-finite" in r["error"] for r in failed)
    assert all(float(r["optim.lr"]) == 0.1 for r in ok)
    if launcher == "basic":   # lab-plot on a sweep directory also writes the sweep report
        p = subprocess.run([sys.executable, "-c", "from lab.app.plot import plot_main; plot_main()", str(sweep)],
                           capture_output=True, text=True, timeout=HANG_S)
        assert p.returncode == 0, p.stderr[-2000:]
        assert (sweep / "report" / "report.html").stat().st_size > 10_000
        assert (sweep / "0" / "plots" / "loss.png").exists()
