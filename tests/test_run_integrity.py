"""Runs that cannot be corrupted (issue 27): stop signals only between chunks, one writer per run
directory, refused commands that write nothing, resumes that refuse any other config, honest
summaries, and a metrics file with a gap rewritten from an earlier checkpoint.
No test waits on a wall clock: they poll for what they observe (the timeouts are safety nets)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lab
from conftest import HANG_S, records

LAB_TRAIN = [sys.executable, "-m", "lab"]
NET = HANG_S


def _steps(run):
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def _status(run):
    return json.loads((run / "summary.json").read_text())["status"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the config the signal tests interrupt."""
    from conftest import TINY
    args = TINY + ["train.steps=80", "train.log_every=10", "train.checkpoint_every=20"]
    ref = tmp_path_factory.mktemp("ref") / "run"
    lab.run(lab.load_config(args), ref, plots=False)
    return args, ref


@pytest.mark.parametrize("where", ["chunk", "checkpoint write"])
def test_two_signals_stop_after_the_chunk_with_a_checkpoint_that_matches_its_label(tmp_path, reference, monkeypatch,
                                                                                   where):
    """Two SIGINTs delivered to this process while chunk 6 (steps 51-60) runs, or while its checkpoint
    is written: the handler only counts them, the run stops after that chunk, the checkpoint labelled 60
    holds the state after step 60, the plots are skipped (second signal), and the same command again
    continues to the uninterrupted run's metrics record for record. (Before: the second signal raised
    wherever Python was, and a checkpoint labelled 150 held the state after 175.)"""
    from lab.train.checkpoint import Checkpoints
    from lab.train.trainer import Trainer
    args, ref = reference
    fetch, save, calls = Trainer.fetch, Checkpoints.save, []

    def two_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    def fetch_with_signals(out):
        calls.append(1)
        if len(calls) == 6:
            two_signals()
        return fetch(out)

    def save_with_signals(self, step, state, *reasons):
        if step == 60:
            two_signals()
        return save(self, step, state, *reasons)

    if where == "chunk":
        monkeypatch.setattr(Trainer, "fetch", staticmethod(fetch_with_signals))
    else:
        monkeypatch.setattr(Checkpoints, "save", save_with_signals)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        lab.run(lab.load_config(args), run)
    monkeypatch.undo()
    assert _status(run) == "interrupted at step 60"
    assert 60 in _steps(run)
    assert not (run / "plots").exists()            # a second signal skips the slow analysis
    assert [r["step"] for r in records(run)][-1] == 60

    lab.run(lab.load_config(args), run, plots=False)   # the same command again continues it
    assert records(run) == records(ref)
    assert _status(run) == "completed"


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (/proc/<pid>/status, SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _wait_for(predicate, proc):
    deadline = time.time() + NET
    while not predicate():
        assert proc.poll() is None, "the process ended before the test could signal it"
        assert time.time() < deadline
        time.sleep(0.01)


def test_ctrl_c_during_start_up_exits_130_in_one_line(tmp_path, tiny_overrides):
    """Ctrl-C while lab-train is still importing: one line and exit 130, no traceback, no run directory.
    (Before: a traceback from inside an import, a segfault or an abort, or the signal swallowed.)"""
    run = tmp_path / "run"
    proc = subprocess.Popen(LAB_TRAIN + tiny_overrides + [f"hydra.run.dir={run}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc)   # lab/__main__.py's handlers are in place
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=NET)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted during start-up, before training began"
    assert "Traceback" not in err and not run.exists()


def test_ctrl_c_before_the_first_chunk_is_honoured(tmp_path, tiny_overrides):
    """Ctrl-C once the run has started but before training (config checked, run directory written,
    compiling): the run stops before its first chunk and exits 130 with the command that starts it again.
    (Before: "Exception ignored in ... KeyboardInterrupt", then the whole run trained and exited 0.)"""
    run = tmp_path / "run"
    proc = subprocess.Popen(LAB_TRAIN + tiny_overrides + ["train.steps=2000", f"hydra.run.dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / ".hydra" / "overrides.yaml").exists(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=NET)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "lab-train" in err.strip().splitlines()[-1] and f"hydra.run.dir={run}" in err
    assert _status(run).startswith("interrupted")
    assert max([r["step"] for r in records(run)] or [0]) < 2000


def test_a_locked_run_directory_is_refused_and_left_untouched(tmp_path, tiny_overrides):
    """Another process holds the run directory: lab-train refuses in one line naming it, and writes nothing
    there (no .hydra/, no train.log, no config.yaml). A lock whose owner died is taken over."""
    from lab.rundir import OWNER_FILE, RunDirBusy, lock_run_dir, unlock_run_dir
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lab.rundir import lock_run_dir; "
                               f"lock_run_dir({str(run)!r}); print('locked', flush=True); time.sleep({NET})"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(RunDirBusy, match=f"in use by another run \\(pid {holder.pid} on "):
            lock_run_dir(run)
        p = subprocess.run(LAB_TRAIN + tiny_overrides + [f"hydra.run.dir={run}"], capture_output=True, text=True,
                           timeout=NET)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1].startswith(f"error: config error: {run} is in use by another run")
        assert sorted(x.name for x in run.iterdir()) == [OWNER_FILE]
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match="took over the lock of a run that ended"):
        lock_run_dir(run)            # the holder died: its lock went with it
    unlock_run_dir(run)
    assert not (run / OWNER_FILE).exists()


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """Hydra's default directory is named by the second; lab-train makes it atomically, with a suffix
    when it is taken, so two runs never share one."""
    import hydra.core.utils  # noqa: F401  (registers the ${now:...} resolver)
    from omegaconf import OmegaConf
    from lab.app import cli
    cfg = OmegaConf.create({"hydra": {"run": {"dir": f"{tmp_path}/out/" + "${now:%Y}"}}})
    first, second = cli._claim_output_dir(cfg, False), cli._claim_output_dir(cfg, False)
    year = time.strftime("%Y")
    assert first == [f"hydra.run.dir={tmp_path}/out/{year}"] and second == [f"hydra.run.dir={tmp_path}/out/{year}-2"]
    explicit = OmegaConf.create({"hydra": {"run": {"dir": f"{tmp_path}/mine"}}})
    assert cli._claim_output_dir(explicit, False) == []           # a directory the user chose is theirs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import TINY
    run = tmp_path_factory.mktemp("finished") / "run"
    args = TINY + ["train.steps=40", "train.checkpoint_every=20", f"hydra.run.dir={run}"]
    p = subprocess.run(LAB_TRAIN + args, capture_output=True, text=True, timeout=NET)
    assert p.returncode == 0, p.stderr[-2000:]
    return args, run


def _snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("extra, message", [
    (["optim.lr=0.005", "train.resume=true", "train.steps=60"], "holds a run with another config (optim.lr: 0.001 then, 0.005 now)"),
    (["clamp=perfect_prev_token", "train.resume=true", "train.steps=60"], "absent then"),
    (["+clamps.x={site: blocks.0.attn.z, value: zero}", "train.resume=true", "train.steps=60"], "clamps.x."),
    (["train.resume=true", "train.steps=20"], "train.steps=20 is below the run's newest checkpoint (step 40)"),
    (["train.resume=true"], "already finished its 40 steps; set train.steps higher"),
    ([], "already holds a finished run"),
], ids=["other lr", "clamp group added", "clamp key added", "fewer steps", "resume finished", "rerun finished"])
def test_a_refused_command_writes_nothing(finished, extra, message):
    """Every refusal is one line and leaves the run directory byte for byte as it was: .hydra/ included
    (before: a refused command still overwrote .hydra/overrides.yaml, and lab-sweep listed a job at the lr
    it had not trained at), and a clamp added on resume is refused (before: accepted, and the summary
    said it was active over the whole run)."""
    args, run = finished
    before = _snapshot(run)
    p = subprocess.run(LAB_TRAIN + args + extra, capture_output=True, text=True, timeout=NET)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config error:") and message in last, last
    assert "Traceback" not in p.stderr
    assert _snapshot(run) == before


def test_logging_keys_may_change_on_resume(finished, tmp_path):
    """train.log_every is a logging key: extending a run with another log interval is accepted."""
    import shutil
    args, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    p = subprocess.run(LAB_TRAIN + args + [f"hydra.run.dir={copy}", "train.resume=true", "train.steps=60",
                                           "train.log_every=10"], capture_output=True, text=True, timeout=NET)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [r["step"] for r in records(copy)][-3:] == [40, 50, 60]


def test_a_refused_run_in_a_default_directory_leaves_no_directory(tmp_path, tiny_overrides):
    """A command refused after Hydra started (here: resume without a checkpoint) in the default,
    timestamped directory removes the directory it made: no empty outputs/<date>/<time>/ left behind."""
    p = subprocess.run(LAB_TRAIN + tiny_overrides + ["train.resume=true"], capture_output=True, text=True,
                       timeout=NET, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "holds no checkpoint" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "outputs").exists()


_OOM_IN_TRAINING = """
import sys
from lab.train.trainer import Trainer
def oom(out):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12345 bytes.")
Trainer.fetch = staticmethod(oom)
from lab.app.cli import train_main
sys.argv = ["lab-train", *sys.argv[1:]]
train_main()
"""


def test_a_crash_after_compiling_is_failed_in_the_summary_and_one_line(tmp_path, tiny_overrides):
    """An out-of-memory error (or any crash) inside training: summary.json says "failed: out of memory ...",
    never "running", and lab-train prints one line (exit 1) with the traceback kept in train.log.
    (A subprocess, because Hydra's logging set-up replaces pytest's own handlers.)"""
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", _OOM_IN_TRAINING, *tiny_overrides, f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=NET)
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(
        "error: training failed: out of memory; lower train.batch_size"), p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Traceback" in (run / "train.log").read_text()
    assert _status(run).startswith("failed at step 0: out of memory")


_SLOW_FIGURES = """
import os, sys, time
import lab.plots.parallel as parallel
def slow(run_dir, out_dir=None, figures=None):
    open(os.path.join(run_dir, "drawing"), "w").close()
    time.sleep(600)       # a figure that would take ten minutes
parallel.plot_run = slow
from lab.app.cli import train_main
sys.argv = ["lab-train", *sys.argv[1:]]
train_main()
"""


def test_ctrl_c_while_the_figures_are_drawn_is_answered_at_once(tmp_path, tiny_overrides):
    """Ctrl-C after training, while figures are drawn by forked workers (here each figure would take ten
    minutes): the drawing stops at once, summary.json is written ("completed"), and one message
    says the run is complete and how to draw the plots; exit 130. (Before: the first Ctrl-C waited for
    every figure.)"""
    run = tmp_path / "run"
    env = {**os.environ, "LAB_PLOT_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_FIGURES, *tiny_overrides, "train.steps=20",
                             f"hydra.run.dir={run}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(lambda: (run / "drawing").exists(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)     # well before a single figure's ten minutes
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted after training: the run is complete in {run}" in err and f"lab-plot {run}" in err
    assert _status(run) == "completed"


_DISK_FULL_AT_STEP_40 = """
import errno, sys
from lab.train.checkpoint import Checkpoints
save = Checkpoints.save
def full(self, step, state, *reasons):
    if step == 40:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "40"))
    return save(self, step, state, *reasons)
Checkpoints.save = full
from lab.app.cli import train_main
sys.argv = ["lab-train", *sys.argv[1:]]
train_main()
"""


def test_a_full_disk_is_one_line_and_the_same_command_continues(tmp_path, reference):
    """The disk fills while checkpoint 40 is written: one line naming the last intact checkpoint (exit 1,
    no traceback), summary.json says failed, and the same command once space is back continues from step
    20 to the uninterrupted run's metrics. (Before: about 270 lines of traceback.)"""
    args, ref = reference
    run = tmp_path / "run"
    cmd = [*args, f"hydra.run.dir={run}"]
    p = subprocess.run([sys.executable, "-c", _DISK_FULL_AT_STEP_40, *cmd], capture_output=True, text=True, timeout=NET)
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: no space left on {run / 'checkpoints' / '40'}; the last checkpoint, at step 20, is intact; "
        "free space and run the same command again to continue"), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert _status(run).startswith("failed at step 40")
    p = subprocess.run(LAB_TRAIN + cmd, capture_output=True, text=True, timeout=NET)
    assert p.returncode == 0, p.stderr[-2000:]
    assert records(run) == records(ref) and _status(run) == "completed"


def test_an_old_run_directory_resumes_with_its_defaults_and_names_dropped_keys(finished, tmp_path):
    """A run directory written by an earlier version: a key its config.yaml lacks takes the default it
    ran with, and the run extends; a key this version no longer has is named, with the fix that works
    (deleting that line), which is then accepted."""
    import shutil
    args, run = finished
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = (old / "config.yaml").read_text()
    assert "  on_nonfinite: stop\n" in config
    (old / "config.yaml").write_text(config.replace("  on_nonfinite: stop\n", "  retired_key: 3\n"))
    extend = LAB_TRAIN + args + [f"hydra.run.dir={old}", "train.resume=true", "train.steps=60"]
    p = subprocess.run(extend, capture_output=True, text=True, timeout=NET)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: config error: {old / 'config.yaml'} has keys this version of the lab no longer has "
        "(train.retired_key); delete those lines from it to continue the run with this version, or continue it "
        "with the version that wrote it")
    (old / "config.yaml").write_text(config.replace("  on_nonfinite: stop\n", ""))   # the fix it names
    p = subprocess.run(extend, capture_output=True, text=True, timeout=NET)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [r["step"] for r in records(old)][-1] == 60


def test_a_metrics_file_with_a_gap_is_rewritten_from_an_earlier_checkpoint(tmp_path, reference):
    """metrics.jsonl cut in the middle (records of steps 35-80 lost) while checkpoints at 40..80 exist:
    the resume notices the gap, continues from the newest checkpoint the records cover (or from the
    start, if the checkpoints kept are all past the gap), rewrites the records from there and ends with the uninterrupted run's metrics. (Before: steps after the cut
    were silently missing and the run said "completed".)"""
    import shutil
    args, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    text = (run / "metrics.jsonl").read_text()
    cut = text.index('{"step": 40')
    (run / "metrics.jsonl").write_text(text[:cut - 200])             # a cut inside the record of step 30
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted at step 80"
    (run / "summary.json").write_text(json.dumps(summary))
    lab.run(lab.load_config(args), run, plots=False)
    assert records(run) == records(ref)
