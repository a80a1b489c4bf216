"""A run directory written by an older lab (tests/fixtures/run_v0, from before lab/ was split into
subpackages) still plots, ablates, resumes and serves as a graft source. Only public entry points are
used (the installed commands, lab.load_config and lab.run), so this file holds across refactors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lab
from conftest import HANG_S

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"
BIN = Path(sys.executable).parent
# the fixture's own overrides (tests/fixtures/README.md), without its output directory
OVERRIDES = ["train=tiny", "train.steps=30", "train.checkpoint_every=10", "train.keep_checkpoints=1",
             "model.d_model=16", "model.n_heads=2", "task.vocab_size=16", "task.seq_len=32",
             "task.max_repeat_len=8", "task.probe_size=8", "train.seeds=2"]


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run_v0"
    shutil.copytree(FIXTURE, run)
    return run


def test_old_run_plots(old_run):
    p = subprocess.run([BIN / "lab-plot", old_run], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("loss", "heads_heatmap", "heads_lines", "attention", "loss_by_position"):
        assert (old_run / "plots" / f"{name}.png").stat().st_size > 10_000, name


def test_old_run_ablates(old_run):
    p = subprocess.run([BIN / "lab-ablate", old_run, "--draws", "2", "--eval-size", "8"],
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((old_run / "ablation" / "ablation.json").read_text())
    assert result["step"] == 30
    assert len(result["seeds"]) == 2


def test_old_run_resumes_and_grafts(old_run, tmp_path):
    cache = f"train.compile_cache={tmp_path / 'cache'}"
    cfg = lab.load_config(OVERRIDES + ["train.steps=40", "train.resume=true", "train.tensorboard=false", cache])
    result = lab.run(cfg, old_run, plots=False)
    steps = [json.loads(line)["step"] for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20, 30, 40]       # the old records kept, the new ones appended
    assert result.summary["status"] == "completed" and result.summary["steps"] == 40
    before = json.loads((FIXTURE / "metrics.jsonl").read_text().splitlines()[-1])
    after_30 = json.loads((old_run / "metrics.jsonl").read_text().splitlines()[3])
    assert after_30 == before

    graft = ("+clamps.g={site: blocks.0.attn.pattern, value: graft, source: " + str(FIXTURE) + ", source_step: 30}")
    cfg = lab.load_config(OVERRIDES + ["train.steps=10", "train.tensorboard=false", cache, graft])
    result = lab.run(cfg, plots=False)
    assert result.summary["status"] == "completed"
    assert result.summary["clamps"]["g"]["sites"] == ["blocks.0.attn.pattern"]
