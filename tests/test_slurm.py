"""Sweeps through a real scheduler: a one-node SLURM started by scripts/slurm-local (installed where
root and apt-get allow; otherwise these tests skip, saying why). `lab-sweep submit` returns once the
jobs are queued; a sweep with one bad member finishes with that member failed alone and reported with
its rerun command; a job that SLURM requeues (`scontrol requeue`: SIGTERM) or pre-empts the way
submitit asks for (SIGUSR2) checkpoints, is requeued, and continues in its run directory to metrics
identical to an uninterrupted run.

The waits below end on what they observe (a job's state, a file); their deadlines only stop a hung
scheduler from hanging the suite."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, records

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm-local"
LAB_SWEEP = [sys.executable, "-c", "from lab.app.sweep import main; main()"]
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1"]
HANG = 900   # seconds: only a hung scheduler gets here


@pytest.fixture(scope="session")
def slurm():
    """A running one-node SLURM (one per machine, in scripts/slurm-local's folder: a cluster already
    running is used and left running); SLURM_CONF is exported for the commands the tests start."""
    env = dict(os.environ)
    ran_before = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    p = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=HANG)
    if p.returncode == 3:
        pytest.skip(f"no SLURM here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr[-3000:]
    conf = p.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not ran_before:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)


def sweep_cmd(*args):
    return subprocess.run([*LAB_SWEEP, *args], capture_output=True, text=True, timeout=HANG)


def statuses(sweep):
    from lab.app.submit import job_statuses
    return job_statuses(sweep)


def wait_for(predicate, what):
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what} after {HANG} s (a hung scheduler?)")


def squeue_state(job_id):
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or None


def test_submit_returns_with_jobs_queued_and_a_bad_member_fails_alone(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    # three jobs of two seeds each; 3 heads do not divide d_model 16, so job 1 fails its config check
    p = sweep_cmd("submit", *TINY, "train.seeds=2", "model.n_heads=2,3,4", *LAUNCHER, f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "3 job(s) queued" in p.stdout and f"lab-sweep status {sweep}" in p.stdout
    manifest = json.loads((sweep / "submission.json").read_text())
    ids = [j["scheduler_id"] for j in manifest["jobs"]]
    assert manifest["launcher"] == "submitit_slurm" and len(ids) == 3 and all(ids)
    assert [[o for o in j["overrides"] if o.startswith("model.n_heads=")] for j in manifest["jobs"]] == \
        [[f"model.n_heads={h}"] for h in (2, 3, 4)]

    # once queued, the sweep lives in the scheduler: even the background lab-train -m may die
    os.kill(manifest["pid"], signal.SIGKILL)
    wait_for(lambda: not any(s.active for s in statuses(sweep)), "the sweep's jobs to end")
    final = {s.num: s for s in statuses(sweep)}
    assert [final[i].state for i in range(3)] == ["completed", "failed", "completed"]
    assert "n_heads" in final[1].detail

    p = sweep_cmd(str(sweep))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 jobs, 6 seeds; 2 completed, 1 failed" in p.stdout
    rerun = [line.strip() for line in p.stdout.splitlines() if line.strip().startswith("lab-train")]
    assert len(rerun) == 2 and all("model.n_heads=3" in r for r in rerun)   # here, and on SLURM again:
    assert "on the sweep's launcher" in p.stdout and "hydra/launcher=submitit_slurm" in rerun[1]
    from lab.analysis.sweep import collect
    rows = collect(sweep)
    assert sorted((r["model.n_heads"], r["seed"]) for r in rows if r["status"] == "completed") == \
        [(2, 0), (2, 1), (4, 0), (4, 1)]


@pytest.mark.parametrize("how", ["scontrol requeue", "SIGUSR2"])
def test_requeued_job_continues_to_the_uninterrupted_metrics(slurm, tmp_path, how):
    args = [*TINY, "train.steps=3000", "train.log_every=10", "train.checkpoint_every=100", "train.seeds=2"]
    ref = tmp_path / "ref"
    reference = subprocess.Popen([sys.executable, "-m", "lab", *args, f"hydra.run.dir={ref}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "sweep"
    p = sweep_cmd("submit", *args, *LAUNCHER, f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    job_id = json.loads((sweep / "submission.json").read_text())["jobs"][0]["scheduler_id"]
    run = sweep / "0"

    wait_for(lambda: (run / "checkpoints" / "100").is_dir(), "the first checkpoint")
    if how == "SIGUSR2":   # what SLURM sends before a time limit or on pre-emption (submitit's --signal)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    else:                  # SIGTERM to the job, then back to the queue
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait_for(lambda: squeue_state(job_id) == "PENDING", "the job to be back in the queue")
    interrupted = json.loads((run / "summary.json").read_text())["status"]
    assert interrupted.startswith("interrupted at step"), interrupted
    # SLURM holds a requeued job for a while before it may start again; a test need not wait for that
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    wait_for(lambda: squeue_state(job_id) is None, "the requeued job to finish")

    out, err = reference.communicate(timeout=HANG)
    assert reference.returncode == 0, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    log = (run / "train.log").read_text()
    step = int(interrupted.split()[-1])
    assert f"resumed from step {step}" in log
    assert 0 < step < 3000
    assert records(run) == records(ref)
    assert [s.state for s in statuses(sweep)] == ["completed"]
