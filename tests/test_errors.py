"""Every bad input the lab knows about fails at startup with one line and a non-zero exit code.
The README's error table lists the same cases (keep them in step)."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HANG_S, TINY

# (overrides, exit code, start of the last stderr line)
CASES = [
    (["model.n_layer=1"], 2, "error: unknown config key 'model.n_layer'; did you mean 'model.n_layers'?"),
    (["model.n_layers=two"], 2, "error: Error merging override model.n_layers=two: Value 'two' of type 'str' could not be converted to Integer"),
    (["model=attn_only_3l"], 2, "error: In 'config': Could not find 'model/attn_only_3l'; available: attn_only_1l, attn_only_2l, edelman, linear_attn, reddy, singh, smeared_1l, transformer_2l"),
    (["optim.name=adamm"], 2, "error: config error: optim.name='adamm' is not allowed; choose one of adam, adamw, sgd"),
    (["model.d_model=0"], 2, "error: config error: model.d_model=0 must be positive"),
    (["optim.lr=nan"], 2, "error: config error: optim.lr=nan must be a finite number"),
    (["model.n_heads=3"], 2, "error: config error: model.d_model=16 is not divisible by model.n_heads=3"),
    (["task.seq_len=12"], 2, "error: config error: task.seq_len=12 cannot hold 2 copies of task.max_repeat_len=8 tokens after BOS"),
    (["clamps.prev_token.heads=[7]"], 2,
     "error: clamps.prev_token.heads: this config has no clamp named 'prev_token'; add it with "
     "'+clamps.prev_token={site: ..., value: ...}', or choose the preset that defines it"),
    (["+model.n_layer=1"], 2, "error: unknown config key 'model.n_layer'; did you mean 'model.n_layers'?"),
    (["clamp=perfect_prev_token", "clamps.prev_token.heads=[7]"], 2,
     "error: config error: clamps.prev_token.heads=[7]: head 7 does not exist (model.n_heads=2: 0..1)"),
    (["+clamps.c={site: blocks.5.attn.z, value: zero}"], 2,
     "error: config error: clamps.c.site='blocks.5.attn.z': layer 5 does not exist (model.n_layers=2, layers 0..1)"),
    (["clamp=perfect_prev_token", "clamps.prev_token.start=30", "clamps.prev_token.stop=10"], 2,
     "error: config error: clamps.prev_token.stop=10: the window [start, stop) ends before it starts (start=30)"),
    (["+clamps.c={site: blocks.0.resid_post, value: prev_token}"], 2,
     "error: config error: clamps.c.site='blocks.0.resid_post': value=prev_token is an attention pattern"),
    (["+clamps.c={site: blocks.0.resid_post, value: graft, source: /nonexistent}"], 2,
     "error: config error: clamps.c.source='/nonexistent': not a run directory with config.yaml and checkpoints/"),
    (["train.resume=true", "hydra.run.dir={tmp}/empty"], 2, "error: config error: train.resume=true but {tmp}/empty/checkpoints holds no checkpoint"),
    (["hydra.run.dir=/proc/lab-run"], 2, "error: cannot write the output directory /proc/lab-run"),
    (["hydra.launcher._target_=os.system"], 2, "error: override 'hydra.launcher._target_=os.system' names _target_='os.system', which is not allowed"),
    (["train.on_nonfinite=ignore"], 2, "error: config error: train.on_nonfinite='ignore' is not allowed; choose one of stop, skip"),
    # values that cannot train (issue 27): refused before anything is compiled
    (["optim.lr=inf"], 2, "error: config error: optim.lr=inf must be a finite number"),
    (["optim.lr=-inf"], 2, "error: config error: optim.lr=-inf must be positive"),
    (["optim.lr=.nan"], 2, "error: Error merging override optim.lr=.nan: Value '.nan' of type 'str' could not be converted to Float"),
    (["optim.lr=0"], 2, "error: config error: optim.lr=0.0 must be positive"),
    (["optim.lr=-1e-3"], 2, "error: config error: optim.lr=-0.001 must be positive"),
    (["task.vocab_size=1"], 2, "error: config error: task.vocab_size=1 gives every random token the same id: there is nothing to predict"),
    (["task.vocab_size=2"], 2, "error: config error: task.vocab_size=2 is smaller than task.min_repeat_len=3"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")

    def run(case):
        overrides = [o.replace("{tmp}", str(tmp)) for o in case[0]]
        if not any(o.startswith("hydra.run.dir") for o in overrides):
            overrides.append(f"hydra.run.dir={tmp}/run{CASES.index(case)}")
        return subprocess.run([sys.executable, "-m", "lab", *TINY, *overrides],
                              capture_output=True, text=True, timeout=HANG_S)
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(range(len(CASES)), pool.map(run, CASES))), tmp


@pytest.mark.parametrize("i", range(len(CASES)), ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_fails_in_one_line(results, i):
    procs, tmp = results
    p, (_, code, message) = procs[i], CASES[i]
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, p.stderr[-2000:]
    assert lines and lines[-1].startswith(message.replace("{tmp}", str(tmp))), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not (tmp / f"run{i}" / "metrics.jsonl").exists()      # nothing that looks like a run


@pytest.mark.parametrize("argv", [["--cfg", "hydra", "train=tiny"], ["--info", "defaults", "train=tiny"],
                                  ["-m", "train.seed=0,1", "hydra/launcher=joblib"], ["-c", "job"]])
def test_precheck_passes_hydra_flags(argv, tmp_path):
    from lab.config.compose import CONFIG_DIR
    from lab.app.safety import precheck
    precheck(CONFIG_DIR, argv + [f"hydra.run.dir={tmp_path}/r", f"hydra.sweep.dir={tmp_path}/s"])


def test_allowlist_unit():
    from lab.core import ConfigError
    from lab.app.safety import check_targets, register_target
    check_targets({"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}}})
    with pytest.raises(ConfigError, match="x.y._target_='builtins.eval' is not allowed"):
        check_targets({"x": {"y": {"_target_": "builtins.eval"}}})
    with pytest.raises(ConfigError, match=r"h\[0\].\(\)='os.system'"):
        check_targets({"h": [{"()": "os.system"}]})
    register_target("my_lab.Launcher")
    check_targets({"_target_": "my_lab.Launcher"})


def test_help_lists_what_users_choose():
    """--help lists the groups' options without the ConfigStore's schema entries (schema_chan, ...)."""
    p = subprocess.run([sys.executable, "-m", "lab", "--help"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("lab-train is powered by Hydra.")
    assert "schema_" not in p.stdout and "clamp_schema" not in p.stdout
    assert "\ntask: chan, copy, induction, markov, reddy, regression, singh, triggers\n" in p.stdout
    assert "\nexperiment: bi_induct, " in p.stdout


def test_the_quick_exit_keeps_exit_codes_and_atexit(tmp_path):
    """lab-train ends with lab.__main__.exit_now (os._exit, skipping the interpreter's teardown): the
    exit code is sys.exit's (a message: printed, code 1), atexit's handlers still run (logging closes
    its files there) and buffered output still arrives."""
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, sys, lab.__main__ as m\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
            "sys.stdout.write('buffered, no newline')\n"
            "m.exit_now(sys.argv[1] if sys.argv[1] != '3' else 3)\n")
    p = subprocess.run([sys.executable, "-c", code, "bad thing"], capture_output=True, text=True, timeout=HANG_S)
    assert (p.returncode, p.stdout, p.stderr.strip()) == (1, "buffered, no newline", "bad thing")
    assert marker.read_text() == "yes"
    p = subprocess.run([sys.executable, "-c", code, "3"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 3, p.stderr
