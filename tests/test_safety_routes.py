"""The `_target_` allowlist covers every route by which lab-train's Hydra finds a config (issue 27):
`--config-path`/`-cp`, `--config-dir`/`-cd` (symlinked groups included), `--config-name`/`-cn`,
`hydra.searchpath`, and Hydra's own part (callbacks, logging). Unreadable files in a config dir fail
in one line naming the file. Most tests call `precheck` in-process; one runs `python -m lab`."""
import re
import subprocess
import sys

import pytest

from lab.app.safety import precheck
from lab.config.compose import CONFIG_DIR
from lab.core import ConfigError
from conftest import HANG_S

CALLBACK = r"hydra\.callbacks\.mk\._target_='tempfile\.mkdtemp' is not allowed"
MKDTEMP = r"_target_='tempfile\.mkdtemp' is not allowed"     # as written in a file with a package header


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def out_dirs(tmp_path):
    return [f"hydra.run.dir={tmp_path}/r", f"hydra.sweep.dir={tmp_path}/s"]


def callback_tree(root, made):
    """A primary config whose Hydra part names `tempfile.mkdtemp(dir=made)` as a callback."""
    write(root / "config.yaml", f"hydra:\n  callbacks:\n    mk:\n      _target_: tempfile.mkdtemp\n      dir: {made}\n")
    return root


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# (a) --config-path: the tree Hydra composes instead of the lab's, in every spelling Hydra's parser accepts
@pytest.mark.parametrize("flag", ["-cp", "--config-path", "--config-path=", "--config-pa"])
def test_config_path_tree_is_checked(tmp_path, flag):
    tree = str(callback_tree(tmp_path / "shared", tmp_path / "made"))
    argv = [flag + tree] if flag.endswith("=") else [flag, tree]
    with pytest.raises(ConfigError, match=CALLBACK):
        precheck(str(CONFIG_DIR), argv + out_dirs(tmp_path))


def test_relative_config_path_resolves_as_hydra_does(tmp_path, monkeypatch):
    """Hydra 1.3 resolves a relative --config-path inside the package of hydra.main's task function
    (lab.app.cli), not in the working directory; that package has no such dir, so the config does
    not compose, and precheck says so instead of checking the lab's own tree."""
    callback_tree(tmp_path / "shared", tmp_path / "made")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"Primary config module 'lab\.app\.shared' not found"):
        precheck(str(CONFIG_DIR), ["-cp", "shared"] + out_dirs(tmp_path))


# (b) --config-dir holding a symlinked group directory
@pytest.mark.parametrize("select", [[], ["+cb=mk"]], ids=["scanned", "selected"])
def test_symlinked_group_in_config_dir_is_checked(tmp_path, select):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "mk.yaml", "# @package hydra.callbacks.mk\n_target_: tempfile.mkdtemp\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "cb").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match=MKDTEMP) as e:
        precheck(str(CONFIG_DIR), ["-cd", str(extra), *select] + out_dirs(tmp_path))
    assert one_line(e).startswith(str(extra / "cb" / "mk.yaml"))


# (c) --config-name: a primary config in an extra dir, drawing a callback from its own hydra.searchpath
@pytest.mark.parametrize("flags", [["-cn", "mine"], ["--config-name=mine"]])
def test_config_name_in_config_dir_is_checked(tmp_path, flags):
    more = tmp_path / "more"
    write(more / "cb" / "mk.yaml", "# @package hydra.callbacks.mk\n_target_: tempfile.mkdtemp\n")
    extra = tmp_path / "extra"
    write(extra / "mine.yaml", f"defaults:\n  - config\n  - cb: mk\n  - _self_\n\nhydra:\n  searchpath:\n    - file://{more}\n")
    with pytest.raises(ConfigError, match=MKDTEMP):
        precheck(str(CONFIG_DIR), ["-cd", str(extra), *flags] + out_dirs(tmp_path))


# (d) Hydra's part of the lab's own config (callbacks, job logging) from an option file in an extra dir
@pytest.mark.parametrize("group, text, refused", [
    ("hydra/callbacks", "mk:\n  _target_: tempfile.mkdtemp\n", CALLBACK),
    ("hydra/job_logging", "version: 1\nhandlers:\n  h:\n    class: subprocess.Popen\n",
     r"hydra\.job_logging\.handlers\.h\.class='subprocess\.Popen' is not allowed"),
], ids=["callbacks", "job_logging"])
def test_hydra_part_from_extra_dir_is_checked(tmp_path, group, text, refused):
    extra = tmp_path / "extra"     # a harmless group option, so the lab's config dir alone does not compose
    write(extra / "model" / "mine.yaml", "defaults:\n  - attn_only_1l\n  - _self_\nn_heads: 2\n")
    more = tmp_path / "more"
    write(more / group / "evil.yaml", text)
    argv = ["-cd", str(extra), "model=mine", f"hydra.searchpath=[file://{more}]", f"{group}=evil"]
    with pytest.raises(ConfigError, match=refused):
        precheck(str(CONFIG_DIR), argv + out_dirs(tmp_path))


# (e) files Hydra could not read: one line naming the file and the problem
@pytest.mark.parametrize("content, problem", [
    (b"n_heads: 2\nname: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 20\)"),
    (b"n_heads: [2\n", r"not valid YAML: while parsing a flow sequence expected ',' or ']'.*\(line 2, column 1\)"),
], ids=["latin-1", "yaml-syntax"])
def test_unreadable_file_in_config_dir_is_one_line(tmp_path, content, problem):
    extra = tmp_path / "extra"
    bad = extra / "model" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        precheck(str(CONFIG_DIR), ["-cd", str(extra)] + out_dirs(tmp_path))
    msg = one_line(e)
    assert msg.startswith(f"{bad}: ")
    assert re.search(problem, msg), msg


# (f) a harmless extra config dir (with a symlink cycle in it) still passes, and is really composed
def test_harmless_config_dir_passes_and_is_composed(tmp_path):
    extra = tmp_path / "extra"
    write(extra / "model" / "mine.yaml", "defaults:\n  - attn_only_1l\n  - _self_\nn_heads: 2\n")
    (extra / "model" / "loop").symlink_to(extra, target_is_directory=True)   # the scan must end
    precheck(str(CONFIG_DIR), ["-cd", str(extra), "model=mine", "train=tiny"] + out_dirs(tmp_path))
    precheck(str(CONFIG_DIR), ["-m", "-cd", str(extra), "model=mine,attn_only_2l"] + out_dirs(tmp_path))
    # composed with the extra dir, so the later checks run too (they used to be skipped) ...
    with pytest.raises(ConfigError, match="cannot write the output directory /proc/lab-run"):
        precheck(str(CONFIG_DIR), ["-cd", str(extra), "model=mine", "hydra.run.dir=/proc/lab-run"])
    # ... and a config that does not compose is reported, not let through
    with pytest.raises(ConfigError, match=r"Could not find 'model/absent'"):
        precheck(str(CONFIG_DIR), ["-cd", str(extra), "model=absent"] + out_dirs(tmp_path))


def test_experimental_rerun_is_refused(tmp_path):
    pickle = tmp_path / "config.pickle"
    pickle.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="--experimental-rerun is not supported"):
        precheck(str(CONFIG_DIR), ["--experimental-rerun", str(pickle)])


def test_lab_train_refuses_config_path_callback_end_to_end(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    tree = callback_tree(tmp_path / "shared", made)
    p = subprocess.run([sys.executable, "-m", "lab", "-cp", str(tree), f"hydra.run.dir={tmp_path}/run"],
                       capture_output=True, text=True, timeout=HANG_S)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "tempfile.mkdtemp" in lines[0]
    assert list(made.iterdir()) == []        # the callback never ran
    assert not (tmp_path / "run").exists()
