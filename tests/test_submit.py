"""`lab-sweep submit` / `lab-sweep status` (lab/app/submit.py) without a scheduler: the jobs a sweep
expands to, each job's state from its files and from (fake) squeue states, and a backgrounded sweep on
a local launcher from submit to collection. The SLURM path is in tests/test_slurm.py."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import HANG_S, TINY
from lab.app import submit
from lab.core import ConfigError

LAB_SWEEP = [sys.executable, "-c", "from lab.app.sweep import main; main()"]


def test_jobs_expand_in_hydras_order():
    jobs = submit.expand_jobs(["a=1", "b=x,y", "c=3,4", "hydra/launcher=joblib", "hydra.sweep.dir=/tmp/s"])
    assert jobs == [["a=1", "b=x", "c=3"], ["a=1", "b=x", "c=4"], ["a=1", "b=y", "c=3"], ["a=1", "b=y", "c=4"]]
    with pytest.raises(ConfigError):
        submit.expand_jobs(["a=[1,"])


def test_default_sweep_dir_is_new_even_within_one_second(tmp_path):
    first = submit.default_sweep_dir(tmp_path)
    first.mkdir(parents=True)
    second = submit.default_sweep_dir(tmp_path)
    assert second != first and second.parent == first.parent and second.name.startswith(first.name)


def write_job(sweep, num, overrides, summary=None, steps=None, log=None, hydra=True):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True) if hydra else d.mkdir(parents=True)
    if summary is not None:
        (d / "summary.json").write_text(json.dumps({"status": summary}))
    if steps is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(0, steps + 1, 10)))
        (d / "config.yaml").write_text("train:\n  steps: 100\n")
    if log is not None:
        (d / "train.log").write_text(log)


def test_status_of_each_job_from_files_and_the_queue(tmp_path):
    sweep = tmp_path / "s"
    jobs = [{"num": i, "dir": str(i), "overrides": [f"x={i}"], "scheduler_id": f"9_{i}"} for i in range(7)]
    sweep.mkdir()
    (sweep / "submission.json").write_text(json.dumps({"jobs": jobs, "pid": 0, "host": "elsewhere"}))
    write_job(sweep, 0, ["x=0"], summary="completed", steps=100)
    write_job(sweep, 1, ["x=1"], summary="failed at step 3: non-finite loss")
    write_job(sweep, 2, ["x=2"], log="[2026-01-01 00:00:00,000][lab][ERROR] - config error: bad x [/s/2]\n")
    write_job(sweep, 3, ["x=3"], steps=40)                                     # running
    write_job(sweep, 4, ["x=4"], summary="interrupted at step 50", steps=50)   # requeued, waiting
    write_job(sweep, 5, ["x=5"], steps=30)                                     # gone from the queue, no summary
    queue = {"9_3": ("RUNNING", "None"), "9_4": ("PENDING", "BeginTime"), "9_6": ("PENDING", "Priority")}
    got = {s.num: s for s in submit.job_statuses(sweep, scheduler=queue)}
    assert [got[i].state for i in range(7)] == ["completed", "failed", "failed", "running", "requeued", "lost", "queued"]
    assert got[1].detail == "at step 3: non-finite loss" and got[2].detail == "config error: bad x"
    assert got[3].detail == "step 40/100" and "BeginTime" in got[4].detail and "step 50/100" in got[4].detail
    table = submit.status_table(list(got.values()))
    assert table.splitlines()[0].split() == ["job", "scheduler", "id", "state", "detail", "overrides"]
    assert "9_5" in table and "x=5" in table


def test_status_of_a_local_sweep_follows_its_process(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "submission.json").write_text(json.dumps({"jobs": [
        {"num": i, "dir": str(i), "overrides": [f"x={i}"], "scheduler_id": None} for i in range(3)]}))
    write_job(sweep, 0, ["x=0"], summary="completed", steps=100)
    write_job(sweep, 1, ["x=1"], steps=20)
    alive = [s.state for s in submit.job_statuses(sweep, sweeper_alive=True)]
    dead = [s.state for s in submit.job_statuses(sweep, sweeper_alive=False)]
    assert alive == ["completed", "running", "queued"]
    assert dead == ["completed", "lost", "not started"]


def test_submit_refuses_bad_input_before_starting_anything(tmp_path):
    for argv, message in ([["task.vocab_sise=3"], "vocab_size"], [[], "usage: lab-sweep submit"]):
        p = subprocess.run([*LAB_SWEEP, "submit", *argv, f"hydra.sweep.dir={tmp_path / 's'}"] if argv else
                           [*LAB_SWEEP, "submit"], capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert message in p.stderr + p.stdout
    assert not (tmp_path / "s").exists() and not (tmp_path / "multirun").exists()


def test_submit_on_a_local_launcher_returns_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    p = subprocess.run([*LAB_SWEEP, "submit", *TINY, "train.seed=0,1", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "2 job(s) queued (joblib launcher)" in p.stdout
    manifest = json.loads((sweep / "submission.json").read_text())
    assert manifest["launcher"] == "joblib" and [j["overrides"][-1] for j in manifest["jobs"]] == ["train.seed=0", "train.seed=1"]
    returned_after = time.monotonic() - start
    deadline = time.monotonic() + 600
    while submit.process_alive(manifest["pid"]) and time.monotonic() < deadline:
        # the submitting command returned while the jobs still had to run: the background process does them
        time.sleep(0.1)
    assert not submit.process_alive(manifest["pid"]), "the background sweep never ended"
    assert [s.state for s in submit.job_statuses(sweep)] == ["completed", "completed"]
    p = subprocess.run([*LAB_SWEEP, "status", str(sweep)], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0 and "2 jobs; 2 completed" in p.stdout
    p = subprocess.run([*LAB_SWEEP, str(sweep)], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0 and "2 jobs, 2 seeds; 2 completed" in p.stdout, p.stderr[-2000:]
    assert returned_after < 600   # (not a speed claim: the assertion above on the process is the real one)
