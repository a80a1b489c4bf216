"""Runs that survive: SIGKILL mid-run then resume gives the uninterrupted metrics; a damaged newest
checkpoint is skipped for the previous one."""
import json
import signal
import subprocess
import sys
import time

import numpy as np

import lab
from conftest import HANG_S, records

LAB_TRAIN = [sys.executable, "-m", "lab"]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, tiny_overrides):
    # a clamp switched on mid-run and several seeds: resume must restore all of it
    args = tiny_overrides + ["train.steps=600", "train.log_every=10", "train.checkpoint_every=100",
                             "train.keep_checkpoints=2", "train.seeds=2", "clamp=late_prev_token",
                             "clamps.late_prev_token.start=150", "clamps.late_prev_token.ramp_steps=40"]
    ref = tmp_path / "ref"
    p = subprocess.run(LAB_TRAIN + args + [f"hydra.run.dir={ref}"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(LAB_TRAIN + args + [f"hydra.run.dir={run}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_S
    while time.time() < deadline and not (run / "checkpoints" / "200").is_dir():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_S)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()          # killed before the end: nothing looks finished
    assert len(records(run)) < len(records(ref))

    p = subprocess.run(LAB_TRAIN + args + [f"hydra.run.dir={run}", "train.resume=true"],
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    assert records(run) == records(ref)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    # callback state (the attention snapshots) came back too
    with np.load(ref / "attention.npz") as a, np.load(run / "attention.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_overrides, caplog):
    overrides = tiny_overrides + ["train.checkpoint_every=10", "train.keep_checkpoints=3"]
    first = lab.run(lab.load_config(overrides), tmp_path, plots=False)
    newest = tmp_path / "checkpoints" / "40"
    # the run was stopped right after its last checkpoint (a finished run is not resumed: it is extended)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "interrupted at step 40"}))
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    resumed = lab.run(lab.load_config(overrides + ["train.resume=true"]), tmp_path, plots=False)
    assert "checkpoints/40 is damaged" in caplog.text
    assert [r["step"] for r in resumed.trainer.records] == [0, 10, 20, 30, 40]
    np.testing.assert_array_equal(resumed.metrics["train_loss"], first.metrics["train_loss"])
    jax_tree_equal = [np.array_equal(a, b) for a, b in zip(
        __import__("jax").tree.leaves(resumed.params), __import__("jax").tree.leaves(first.params))]
    assert all(jax_tree_equal)


def test_nonfinite_updates_can_be_skipped(tiny_overrides, tmp_path):
    """NaN logits on steps 26 and 27 only (a NaN-scaling clamp with window [25, 27)): with
    train.on_nonfinite=skip those two updates are dropped and counted; with the default (stop) the
    run fails at step 26; a whole chunk of non-finite updates fails even with skip."""
    import jax
    import pytest
    from lab.core import TrainingDiverged

    poison = "+clamps.nan={site: logits, value: scale, factor: nan, start: %d, stop: %d}"
    r = lab.run(lab.load_config(tiny_overrides + ["train.on_nonfinite=skip", poison % (25, 27)]),
                tmp_path / "skip", plots=False)
    assert r.summary["status"] == "completed" and r.summary["skipped_updates"] == [2]
    assert [rec["skipped_updates"] for rec in r.trainer.records[1:]] == [[0], [0], [2], [0]]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(r.params))
    with pytest.raises(TrainingDiverged, match="non-finite training loss at step 26 "):
        lab.run(lab.load_config(tiny_overrides + [poison % (25, 27)]), tmp_path / "stop", plots=False)
    with pytest.raises(TrainingDiverged, match="every update of steps 21-30 was non-finite"):
        lab.run(lab.load_config(tiny_overrides + ["train.on_nonfinite=skip", poison % (20, 30)]),
                tmp_path / "stuck", plots=False)


def test_rerunning_into_an_interrupted_run_continues_it(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = LAB_TRAIN + tiny_overrides + ["train.steps=400", "train.log_every=5", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_S
    while time.time() < deadline and (not (run / "metrics.jsonl").exists() or len(records(run)) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130
    interrupted_at = json.loads((run / "summary.json").read_text())["status"]
    assert interrupted_at.startswith("interrupted")

    p = subprocess.run(args + ["optim.lr=0.01"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 2
    assert "holds a run with another config (optim.lr: 0.001 then, 0.01 now)" in p.stderr.splitlines()[-1]

    p = subprocess.run(args, capture_output=True, text=True, timeout=HANG_S)   # the same command again
    assert p.returncode == 0, p.stderr[-2000:]
    assert "continuing it from its checkpoint" in p.stderr + p.stdout + (run / "train.log").read_text()
    assert [r["step"] for r in records(run)] == list(range(0, 401, 5))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_second_signal_inside_a_chunk_leaves_a_consistent_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    """A second Ctrl-C / SIGTERM arrives while the loop waits for a chunk (driven here by raising in
    Trainer.fetch, where the signal would land): the chunk has replaced the state, the step has not
    advanced. Nothing may be saved under the old step's label; the run continues from its newest
    checkpoint to the uninterrupted run's metrics. (Before, the state after step 60 was saved as 50.)"""
    import pytest
    from lab.train.trainer import Trainer

    args = tiny_overrides + ["train.steps=80", "train.log_every=10", "train.checkpoint_every=20"]
    ref = tmp_path / "ref"
    lab.run(lab.load_config(args), ref, plots=False)

    fetch, calls = Trainer.fetch, []

    def second_signal_in_chunk_6(out):
        calls.append(1)
        if len(calls) == 6:   # the chunk of steps 51-60; the newest checkpoint is at 40
            raise KeyboardInterrupt("signal 2")
        return fetch(out)

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "fetch", staticmethod(second_signal_in_chunk_6))
    with pytest.raises(KeyboardInterrupt):
        lab.run(lab.load_config(args), run, plots=False)
    monkeypatch.setattr(Trainer, "fetch", staticmethod(fetch))
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    status = json.loads((run / "summary.json").read_text())["status"]
    assert status == "interrupted after step 50 by a second signal during the next chunk"

    lab.run(lab.load_config(args), run, plots=False)   # the same command again continues it
    assert records(run) == records(ref)


def test_rerun_after_a_crash_while_summarising_completes_the_run(tmp_path, tiny_overrides):
    """Training finished and wrote its final checkpoint, then the process died before summary.json
    said "completed" (a crash in the analysis): the same command again resumes at the final step,
    has no step left to train, and must not fail on saving the checkpoint that already exists."""
    run = tmp_path / "run"
    args = LAB_TRAIN + tiny_overrides + ["train.steps=40", f"hydra.run.dir={run}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted at step 40"          # as if the process died before finishing
    (run / "summary.json").write_text(json.dumps(summary))
    before = records(run)
    p = subprocess.run(args, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert records(run) == before                            # nothing retrained, nothing logged twice
