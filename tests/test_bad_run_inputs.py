"""Bad input to lab-plot, lab-ablate and lab-train's startup checks ends in one line, `error: <what is
wrong>; <how to fix>`, with exit code 2 (bad input) or 1 (a failure while computing), never a
traceback; and a run whose loss never left chance says so in its summary (issue 27, item 11).

Two finished runs serve the module: a fabricated one (tests/fake_run.py, no training) for lab-plot and
a real tiny one (with a checkpoint, trained at a learning rate too small to move it) for lab-ablate and
the summary of a run that did not train. Each case damages a copy of one of them. The CLIs run in
this process (their `main(argv)`), except the out-of-memory case, which runs in a subprocess under an
address-space limit so that it can never take the machine's memory."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HANG_S, TINY
from fake_run import make_fake_run
from lab.analysis.summary import NOT_MEASURED, summarize
from lab.app import ablate as ablate_cli
from lab.app.plot import plot_main
from lab.app.run import run
from lab.config.compose import load_config, validate
from lab.core import ConfigError
from lab.tasks import make_task, registry

ABLATE = ["--eval-size", "8", "--draws", "2"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    return make_fake_run(tmp_path_factory.mktemp("fake") / "run", seeds=1, steps=12, layers=2, heads=2, T=16,
                         with_attention=False)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real tiny run with its checkpoint; lr 1e-9 leaves its loss at chance (ln 12) by construction."""
    d = tmp_path_factory.mktemp("real") / "run"
    run(load_config(TINY + ["optim.lr=1e-9"]), d, plots=False)
    return d


def copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def cli(main, argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of a CLI's main(argv) run in this process; an exception escaping it fails the test."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected: int, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == expected, err[-2000:]
    assert lines and lines[-1].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    assert all(n in lines[-1] for n in needles), lines[-1]
    assert "; " in lines[-1], f"no fix in {lines[-1]!r}"    # error: <what is wrong>; <how to fix>
    return lines[-1]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_records(run_dir, recs) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def cut(path, keep: float = 0.5) -> None:
    """Cut a file in the middle of a line, as a kill during its writing would."""
    data = path.read_bytes()
    at = int(len(data) * keep)
    while data[at - 1:at] == b"\n":
        at -= 1
    path.write_bytes(data[:at])


GARBAGE = bytes(range(256)) * 8 + b"\n\xff\xfe\x00 not json \x80\x81\n"


# ----------------------------------------------------------------------------- 1. metrics.jsonl
def _empty(run):
    (run / "metrics.jsonl").write_text("")


def _only_line_cut(run):
    (run / "metrics.jsonl").write_text(json.dumps(records(run)[0])[:40])


def _middle_line_cut(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:30]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _garbage(run):
    (run / "metrics.jsonl").write_bytes(GARBAGE)


def _no_steps(run):
    write_records(run, [{k: v for k, v in r.items() if k != "step"} for r in records(run)] + [[1, 2]])


@pytest.mark.parametrize("damage", [_empty, _only_line_cut, _middle_line_cut, _garbage, _no_steps],
                         ids=["empty", "only-line-cut", "middle-line-cut", "binary-garbage", "no-record-has-a-step"])
def test_plot_damaged_metrics(fake_run, tmp_path, capsys, damage):
    run = copy(fake_run, tmp_path)
    damage(run)
    code, err = cli(plot_main, [run], capsys)
    assert_one_line_error(code, err, 2, "metrics.jsonl")
    assert not (run / "plots").exists()          # nothing drawn, no empty plots/ left behind


@pytest.mark.parametrize("damage", ["records-lack-keys", "a-step-is-null"])
def test_plot_partial_records_still_plots(fake_run, tmp_path, capsys, damage):
    """Records that lack some keys plot what they have (before: KeyError 'loss'); a record whose step is
    null or text is skipped with a warning (before: TypeError from int(None))."""
    run = copy(fake_run, tmp_path)
    recs = records(run)
    if damage == "records-lack-keys":
        recs = [{k: v for k, v in r.items() if k not in ("loss", "train_loss") and (i % 2 or k != "loss_repeat")}
                for i, r in enumerate(recs)]
    else:
        recs[3]["step"], recs[5]["step"] = None, "five"
    write_records(run, recs)
    code, err = cli(plot_main, [run], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert (run / "plots" / "loss.png").stat().st_size > 10_000


def test_ablate_ignores_damaged_metrics(real_run, tmp_path, capsys):
    """lab-ablate reads the checkpoint and config.yaml, never metrics.jsonl: a damaged one does not stop it.
    (A guard, not a repair: this held before issue 27 too.)"""
    run = copy(real_run, tmp_path)
    (run / "metrics.jsonl").write_bytes(GARBAGE)
    code, err = cli(ablate_cli.main, [run, *ABLATE], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert json.loads((run / "ablation" / "ablation.json").read_text())["eval_size"] == 8


# ----------------------------------------------------------------------------- 2. unwritable --out
def unwritable_out(out: str, tmp_path):
    """"/proc/..." as it is; "a-file": a regular file where the output directory should go."""
    if out != "a-file":
        return out
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("out", ["/proc/lab-x", "a-file"])
def test_plot_unwritable_out(fake_run, tmp_path, capsys, out):
    run = copy(fake_run, tmp_path)
    out = unwritable_out(out, tmp_path)
    code, err = cli(plot_main, [run, "--out", out], capsys)
    line = assert_one_line_error(code, err, 2, f"cannot write the plots to {out}", "--out")
    assert out == "/proc/lab-x" or "a file, not a directory" in line


@pytest.mark.parametrize("out", ["/proc/lab-x", "a-file"])
def test_ablate_unwritable_out(real_run, tmp_path, capsys, out):
    """Refused before the ablation is computed (no compile), not after it."""
    run = copy(real_run, tmp_path)
    out = unwritable_out(out, tmp_path)
    code, err = cli(ablate_cli.main, [run, *ABLATE, "--out", out], capsys)
    line = assert_one_line_error(code, err, 2, f"cannot write the ablation to {out}", "--out")
    assert out == "/proc/lab-x" or "a file, not a directory" in line


# ----------------------------------------------------------------------------- 3. out of memory
# lab-ablate under 32 GiB of address space, set in the child itself (a preexec_fn would fork this
# multithreaded JAX process): XLA's allocation of the 96 GB batch below fails there on any machine,
# instead of taking its memory.
CAPPED_ABLATE = """
import resource, runpy, sys
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
cap = 32 * 2 ** 30 if hard == resource.RLIM_INFINITY else min(32 * 2 ** 30, hard)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
sys.argv = ["lab-ablate", *sys.argv[1:]]
runpy.run_module("lab.app.ablate", run_name="__main__")
"""


def test_ablate_out_of_memory(real_run, tmp_path):
    run = copy(real_run, tmp_path)
    n = 10 ** 9      # tokens alone: 10^9 x 24 positions x 4 bytes = 96 GB
    p = subprocess.run([sys.executable, "-c", CAPPED_ABLATE, str(run), "--eval-size", str(n), "--draws", "1"],
                       capture_output=True, text=True, timeout=HANG_S)
    assert_one_line_error(p.returncode, p.stderr, 1, f"out of memory evaluating {n} sequences", "lower --eval-size")
    assert not (run / "ablation").exists()       # no empty output directory left behind


def test_ablate_memory_error_in_python(real_run, tmp_path, capsys, monkeypatch):
    """The same message for Python's MemoryError (e.g. numpy's) as for XLA's RESOURCE_EXHAUSTED."""
    run = copy(real_run, tmp_path)

    def ablate(*args, **kwargs):
        raise MemoryError("Unable to allocate 96.0 GiB for an array")
    monkeypatch.setattr(ablate_cli, "ablate", ablate)
    code, err = cli(ablate_cli.main, [run, "--eval-size", "123456"], capsys)
    assert_one_line_error(code, err, 1, "out of memory evaluating 123456 sequences; lower --eval-size")


# ----------------------------------------------------------------------------- 4. cut summary / config
@pytest.mark.parametrize("damage", ["summary-cut", "summary-garbage", "summary-not-an-object",
                                    "config-cut", "config-garbage", "config-not-a-mapping"])
def test_plot_damaged_summary_or_config(fake_run, tmp_path, capsys, damage):
    run = copy(fake_run, tmp_path)
    name = "summary.json" if damage.startswith("summary") else "config.yaml"
    path = run / name
    if damage.endswith("cut"):
        cut(path)
    elif damage.endswith("garbage"):
        path.write_bytes(GARBAGE)
    else:
        path.write_text("[1, 2]\n" if name == "summary.json" else "- a list\n")
    code, err = cli(plot_main, [run], capsys)
    line = assert_one_line_error(code, err, 2, name)
    assert "cut" in line or "damaged" in line


@pytest.mark.parametrize("name", ["attention.npz", "llc.npz"])
def test_plot_damaged_npz_skips_its_figure(tmp_path, capsys, name):
    """A cut attention.npz or llc.npz skips its figures with a warning, as their readers promise for a
    malformed file, and the rest is drawn (before: BadZipFile from numpy)."""
    run = make_fake_run(tmp_path / "run", seeds=1, steps=12, layers=1, heads=2, T=16, with_development=True)
    cut(run / name)
    with pytest.warns(UserWarning, match=f"{name}: unreadable"):
        code, err = cli(plot_main, [run], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert (run / "plots" / "loss.png").is_file()
    assert not (run / "plots" / ("attention.png" if name == "attention.npz" else "llc_chains.png")).exists()


def test_compare_damaged_summary(fake_run, tmp_path, capsys):
    """`lab-plot --compare` refuses a cut summary.json too, instead of comparing without it."""
    a, b = copy(fake_run, tmp_path), shutil.copytree(fake_run, tmp_path / "other")
    cut(b / "summary.json")
    code, err = cli(plot_main, ["--compare", a, b, "--out", tmp_path / "compare.png"], capsys)
    assert_one_line_error(code, err, 2, "summary.json is cut")
    assert not (tmp_path / "compare.png").exists()


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_ablate_cut_config(real_run, tmp_path, capsys, keep):
    """A config.yaml cut anywhere is named as such, before JAX compiles anything (before: a message about
    the checkpoint, or no message at all when the cut fell in the last section)."""
    run = copy(real_run, tmp_path)
    cut(run / "config.yaml", keep)
    code, err = cli(ablate_cli.main, [run, *ABLATE], capsys)
    assert_one_line_error(code, err, 2, "config.yaml is cut", "restore it")
    assert not (run / "ablation").exists()


# ----------------------------------------------------------------------------- 5. startup values
@pytest.mark.parametrize("overrides,message", [
    (["task.vocab_size=1"], "task.vocab_size=1 gives every random token the same id: there is nothing to predict"),
    (["task.vocab_size=2"], "task.vocab_size=2 is smaller than task.min_repeat_len=3: every repeated segment"),
    (["task=copy", "task.vocab_size=3"], "task.vocab_size=3 is smaller than task.min_len=4: every snippet"),
    (["task=triggers", "task.vocab_size=5"], "task.vocab_size=5 with task.n_triggers=4 leaves one non-trigger token"),
    (["task=reddy", "task.n_labels=1"], "task.n_labels=1 gives every class the same label"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_startup_values_that_cannot_train(overrides, message):
    """`validate` (which lab-train runs before compiling) refuses a vocabulary too small for its task, in one
    line that says why and what to set. tests/test_errors.py feeds these and the learning rates that cannot
    train (inf, -inf, .nan, 0, negative: refused already by `positive`) to the CLI."""
    task = [o for o in overrides if o.startswith("task=")]
    cfg = load_config(task + ([] if task else TINY) + [o for o in overrides if o not in task])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_auto_measure_that_is_not_logged_is_refused_before_compiling():
    """`heads: auto` with an auto_measure the task does not log (a typo): refused when the Trainer is
    built, naming the measures there are. (Before: found at the switch step, after compiling, with
    summary.json left at "running".)"""
    from lab.train.trainer import Trainer
    clamp = "+clamps.auto={site: blocks.0.attn.pattern, value: zero, heads: auto, start: 20, auto_measure: %s}"
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(TINY + [clamp % "prev_tokn"]))
    assert str(e.value) == ("clamps.auto.auto_measure='prev_tokn' is not a per-head measure of task induction; "
                            "choose one of copying, induction, induction_recent, prev_token, prev_token_corrected")
    assert Trainer(load_config(TINY + [clamp % "prev_token"])).clamps.auto["auto"]["measure"] == "prev_token"


def test_smallest_vocabularies_are_accepted():
    validate(load_config(TINY + ["task.vocab_size=3"]))                  # = min_repeat_len
    validate(load_config(["task=triggers", "task.vocab_size=6"]))        # n_triggers + 2
    validate(load_config(["task=copy", "task.vocab_size=4"]))            # = min_len


# ----------------------------------------------------------------------------- 6. runs that did not train
STEPS = np.arange(0, 2000, 50)


def _metrics(curves, chance):
    """A run's metric arrays (steps, seeds) with the given loss_repeat curves (per seed, relative to chance)."""
    rng = np.random.default_rng(0)
    loss = np.stack([c + 0.005 * rng.standard_normal(len(STEPS)) for c in curves], 1)
    S = loss.shape[1]
    flat = np.full((len(STEPS), S, 2, 2), 0.05)
    return {"step": STEPS, "loss_repeat": loss, "loss": loss, "acc_repeat": np.full_like(loss, 1 / 12),
            "induction": flat, "prev_token_corrected": flat}


def _fall(chance):
    return chance - (chance - 0.3) / (1 + np.exp(-(STEPS - 1000) / 60.0))


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(TINY + ["train.seeds=2"])
    return cfg, make_task(cfg.task)


def test_summary_of_a_run_at_chance(tiny):
    cfg, task = tiny
    chance = math.log(12)
    s = summarize(_metrics([np.full(len(STEPS), chance)] * 2, chance), cfg, task, [0, 1])
    assert s["status"] == "completed"                      # training itself completed
    assert s["trained"] is False and s["trained_per_seed"] == [False, False]
    assert s["verdict"].startswith("did not train: final loss_repeat ")
    assert "are at chance (ln 12 = 2.485)" in s["verdict"]
    assert s["verdict"].endswith("phase change, stages and induction heads not measured")
    assert s["outcome_per_seed"] == [NOT_MEASURED] * 2


def test_summary_of_a_run_that_blew_up(tiny):
    """optim.lr=1e6 on the tiny run ends with loss_repeat ~1.7e13, status completed."""
    cfg, task = tiny
    chance = math.log(12)
    s = summarize(_metrics([np.geomspace(chance, 1.7e13, len(STEPS))] * 2, chance), cfg, task, [0, 1])
    assert s["trained"] is False and s["verdict"].startswith("did not train: final loss_repeat 1.7e+13")
    assert "are above chance (ln 12 = 2.485)" in s["verdict"]


def test_summary_of_runs_that_trained(tiny):
    """A run that trained keeps its verdict; one seed that did not is named and left out of the counts."""
    cfg, task = tiny
    chance = math.log(12)
    both = summarize(_metrics([_fall(chance)] * 2, chance), cfg, task, [0, 1])
    assert both["trained"] is True and both["verdict"].startswith("transition in loss on repeated part in 2/2 seeds")
    mixed = summarize(_metrics([_fall(chance), np.full(len(STEPS), chance)], chance), cfg, task, [0, 1])
    assert mixed["trained"] is False and mixed["trained_per_seed"] == [True, False]
    assert mixed["verdict"].startswith("seed 1 did not train: final loss_repeat ")
    assert "in the 1 that trained: transition in loss on repeated part in 1/1 seeds" in mixed["verdict"]
    assert mixed["outcome_per_seed"][1] == NOT_MEASURED and mixed["outcome_per_seed"][0] != NOT_MEASURED


def test_real_run_at_chance_says_so(real_run):
    """The real tiny run trained at lr 1e-9: its summary.json, as lab-train wrote it."""
    s = json.loads((real_run / "summary.json").read_text())
    assert s["status"] == "completed" and s["trained"] is False, s.get("verdict")
    assert s["verdict"].startswith("did not train: final loss_repeat ")
    assert "is at chance (ln 12 = 2.485)" in s["verdict"]


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_task_can_tell_a_run_that_did_not_train(name):
    """Each task's check: a chance level, how it is computed, and a bar below it (at most chance)."""
    task = make_task(load_config([f"task={name}"]).task)
    check = task.trained_check()
    assert check.chance > 0 and check.bar <= check.chance and check.chance_text and check.metric
