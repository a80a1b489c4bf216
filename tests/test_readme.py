"""The README's commands run as written.

- Every `lab-train` command of a bash block, and every command of the task-zoo table, composes and
  validates as lab-train's start-up would (the same override checks, Hydra composition and
  cross-key checks), for every value of a multirun sweep. Training them all would take hours; what
  can be wrong in a command as written (a key, a preset, a value, a `+`) fails here.
- Every other `lab-*` command exists and answers --help; every `make` target exists.
- The Python blocks run, as written, one after another in one interpreter.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import HANG_S
from lab.config.compose import check_override_keys, load_config, validate

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = ("lab-train", "lab-sweep", "lab-plot", "lab-ablate", "lab-llc", "lab-export")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _shell_commands() -> list[list[str]]:
    """Each command of the bash blocks as words: comments dropped, `\\` continuations joined, `&&` split."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(words[:cut])
                words = words[cut + 1:]
    return [w for w in out if w]


def _zoo_commands() -> list[list[str]]:
    """The task zoo table's rows: `| `<lab-train overrides>` ... |` (`same + X`: the row above plus X)."""
    section = README.split("## The task zoo", 1)[1].split("\n## ", 1)[0].split("Short runs that learn", 1)[1]
    rows, previous = [], []
    for cell in re.findall(r"^\| (.+?) \|", section, flags=re.M):
        if cell.startswith("(default)"):
            continue
        if cell.startswith("same + "):
            words = previous + shlex.split(cell[len("same + "):].replace("`", ""))
        elif cell.startswith("`"):
            words = shlex.split(cell.split("`")[1])
        else:
            continue
        rows.append(["lab-train", *words])
        previous = words
    return rows


def _name(words: list[str]) -> str:
    return Path(words[0]).name


LAB_TRAIN = [w for w in _shell_commands() if _name(w) == "lab-train"] + _zoo_commands()
SUBMIT = [w for w in _shell_commands() if _name(w) == "lab-sweep" and w[1:2] == ["submit"]]


def _overrides(words: list[str]) -> list[list[str]]:
    """The config overrides of a lab-train command, one list per composition to check: the first value
    of every sweep, and each further value of each sweep in turn. Hydra's own keys are left out."""
    args = [w for w in words[1:] if not w.startswith("-") and w != "job" and w != "..."]
    parsed = OverridesParser.create().parse_overrides(args)
    kept = [(a, o) for a, o in zip(args, parsed) if not o.key_or_group.startswith("hydra")]
    base = []
    for arg, o in kept:
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else None
        base.append(f"{o.get_key_element()}={values[0]}" if values else arg)
    combos = [base]
    for i, (arg, o) in enumerate(kept):
        if o.is_sweep_override():
            for v in list(o.sweep_string_iterator())[1:]:
                combos.append(base[:i] + [f"{o.get_key_element()}={v}"] + base[i + 1:])
    return combos


def test_the_readme_shows_commands():
    """The parsing above finds what the README shows (a test that checks nothing would pass too)."""
    assert len(LAB_TRAIN) >= 25 and len(_zoo_commands()) >= 10 and SUBMIT
    assert ["lab-train", "experiment=chan", "task.p_bursty=0"] in _zoo_commands()


@pytest.mark.parametrize("words", LAB_TRAIN + SUBMIT, ids=lambda w: " ".join(w)[:90])
def test_every_lab_train_command_composes_and_validates(words):
    words = [w for w in words if w != "submit"]
    for overrides in _overrides(words):
        check_override_keys(overrides)
        cfg = load_config(overrides)
        validate(cfg)


@pytest.mark.parametrize("command", sorted({_name(w) for w in _shell_commands() if _name(w) in COMMANDS}))
def test_every_lab_command_exists(command):
    """Each lab-* command the README uses is installed and answers --help (lab-train's is Hydra's)."""
    exe = Path(sys.executable).parent / command
    assert exe.exists(), f"{command} is not installed in {exe.parent} (pyproject.toml [project.scripts])"
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_every_make_target_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = {w[1] for w in _shell_commands() if w[0] == "make" and len(w) > 1}
    used |= set(re.findall(r"`make ([a-z][\w-]*)", README))
    assert used and used <= targets, sorted(used - targets)


def test_the_python_blocks_run_as_written(tmp_path):
    """The README's Python, block after block in one interpreter, in an empty directory (the one that trains
    the run the others load first). The lines that
    load an export into TransformerLens need torch: tests/tl_peer_check.py loads exports the same way in
    .venv-peers (tests/test_export.py)."""
    blocks = [b for b in _blocks("python") if "transformer_lens" not in b]
    first = [b for b in blocks if "lab.run(" in b]   # the blocks that train the run the others read, first
    code = "\n".join(first + [b for b in blocks if b not in first])
    assert first and "lab.load_run(" in code and "load_checkpoint_index" in code and len(blocks) >= 3
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
