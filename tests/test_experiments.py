"""Every experiment script runs end to end in smoke mode and writes a well-formed verdict.json and
its figures (smoke verdicts mean nothing; this keeps the scripts from rotting)."""
import importlib
import json

import numpy as np
import pytest

from experiments.report import experiment_modules

FIELDS = {"id", "claim", "quantity", "value", "spread", "n", "values", "threshold", "held", "kind", "unit", "ci95",
          "not_measured"}


@pytest.mark.parametrize("name", experiment_modules())
def test_experiment_smoke(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    module.main(["--smoke", "--out", str(tmp_path)])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["experiment"] == name and verdict["mode"] == "smoke"
    assert verdict["claims"], "an experiment checks at least one claim"
    for c in verdict["claims"]:
        assert FIELDS <= set(c), f"claim {c.get('id')} lacks {FIELDS - set(c)}"
        assert c["held"] in (True, False, None)
        assert isinstance(c["claim"], str) and c["claim"].endswith(".")
    assert len({c["id"] for c in verdict["claims"]}) == len(verdict["claims"]), "claim ids are unique"
    assert verdict["figures"], "an experiment draws at least one figure"
    for f in verdict["figures"]:
        assert (tmp_path / f).stat().st_size > 1000, f"figure {f} is missing or empty"


def test_cached_run_is_reused(tmp_path, capsys):
    """Rerunning an experiment reuses its finished runs instead of training again."""
    module = importlib.import_module("experiments.olsson_layers")
    module.main(["--smoke", "--out", str(tmp_path)])
    first = json.loads((tmp_path / "verdict.json").read_text())
    capsys.readouterr()
    module.main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "training" not in out and out.count("reusing the finished run") == 4
    second = json.loads((tmp_path / "verdict.json").read_text())
    assert [c["values"] for c in first["claims"]] == [c["values"] for c in second["claims"]]


def test_claim_statistics_over_seeds():
    from experiments.common import claim, value_text
    c = claim("x", "A claim.", "q", [1.0, None, 3.0], "> 0", True)
    # sample std (ddof 1) of 1 and 3 is sqrt(2); the bootstrap interval of two values is their range
    assert c["value"] == 2.0 and c["spread"] == pytest.approx(2 ** 0.5) and c["n"] == 2
    assert c["values"] == [1.0, None, 3.0] and c["ci95"] == [1.0, 3.0] or c["ci95"] == (1.0, 3.0)
    assert value_text(c) == "2 ± 1.4 [1, 3] (n=2)"
    frac = claim("y", "B.", "fraction", [True, False, True, True], "= 1", False)
    assert frac["value"] == 0.75 and frac["k"] == 3 and frac["spread"] is None
    lo, hi = frac["ci95"]                                     # Clopper-Pearson for 3 of 4
    assert lo == pytest.approx(0.1941, abs=1e-3) and hi == pytest.approx(0.9937, abs=1e-3)
    assert value_text(frac).startswith("3 of 4 seeds [0.194, 0.994]")
    zeros = claim("w", "D.", "crossing step", [0, 0, 1], "<= 10", True)        # numbers, not yes/no
    assert zeros["k"] is None and zeros["spread"] == pytest.approx(np.std([0, 0, 1], ddof=1))
    none = claim("z", "C.", "q", [None, None], "> 0", None)
    assert none["value"] is None and none["spread"] is None and none["held"] is None


def test_claim_outcomes_control_not_measured_and_conditions():
    from experiments.common import CONDITION, CONTROL, claim, outcome, value_text
    assert outcome(claim("a", "A.", "q", [1, 2], "> 0", True)) == "held"
    assert outcome(claim("b", "B.", "q", [1, 2], "> 0", True, kind=CONTROL)) == "control"
    nm = claim("c", "C.", "q", [1.6, 0.6], "< 1", False, not_measured="the model did not train (loss not below chance)")
    assert nm["held"] is None and outcome(nm) == "not measured"
    cond = claim("d", "D.", "q", [0.2, 0.4, 0.9], "> 0", True, unit=CONDITION)
    assert cond["spread"] is None and cond["ci95"] is None        # conditions are not a sample of seeds
    assert value_text(cond) == "3 conditions (values listed)"
    with pytest.raises(ValueError):
        claim("e", "E.", "q", [1], "> 0", True, kind="result")


def test_ci_beyond_and_trained():
    from experiments.common import ci_beyond, trained
    assert ci_beyond([1.0, 1.1, 0.9, 1.05, 0.95], 0.5, "above") is True
    assert ci_beyond([1.04, 0.95, 1.2, 1.0], 1.0, "above") is False      # a mean above 1 on noise is not enough
    assert ci_beyond([3.0], 1.0, "above") is None                        # one seed: no interval
    # onsets quantised to a log interval of 25: "at most +25" reaches it, "below 25" does not
    assert ci_beyond([0, 25, 0, 25], 25, "below", strict=False) is True
    assert ci_beyond([0, 25, 0, 25], 25, "below") is False
    assert trained([0.5, 1.62, None, float("nan")], chance=1.67) == [True, False, False, False]


def test_report_counts_tests_not_controls(tmp_path):
    from experiments.common import CONTROL, claim
    from experiments.report import write_readme
    verdict = {"experiment": "olsson_layers", "title": "T", "paper": "P", "mode": "default", "command": "c",
               "seconds": 60, "claims": [claim("a", "A.", "q", [1, 2], "> 0", True),
                                         claim("b", "B.", "q", [1, 2], "> 5", False),
                                         claim("c", "C.", "q", [1], "> 0", None, not_measured="did not train"),
                                         claim("d", "D.", "q", [1, 1], "= 1", True, kind=CONTROL)]}
    (tmp_path / "olsson_layers").mkdir()
    (tmp_path / "olsson_layers" / "verdict.json").write_text(json.dumps(verdict))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- verdicts:start (generated by python -m experiments.report) -->\n<!-- verdicts:end -->\n")
    body = write_readme(tmp_path, readme)
    assert body.startswith("1 of 2 measured claims held in 1 experiments (1 not measured; 1 controls shown but not counted)")
    assert "control (cannot fail; not counted)" in body and "— did not train" in body


def test_crossing_step():
    from experiments.common import crossing_step
    steps = [0, 10, 20, 30]
    assert crossing_step(steps, [1.0, 0.8, 0.2, 0.1], 0.5) == 20.0
    assert crossing_step(steps, [1.0, 0.8, 0.7, 0.6], 0.5) is None
    assert crossing_step(steps, [0.0, 0.1, 0.9, 1.0], 0.5, "increase") == 20.0


def test_report_table_from_verdicts(tmp_path):
    """The README table is generated from verdicts; smoke verdicts are left out, missing ones named."""
    from experiments import report
    from experiments.common import claim
    name = report.experiment_modules()[0]
    (tmp_path / name).mkdir()
    verdict = {"experiment": name, "title": "T", "paper": "P 2024", "mode": "default", "command": "python -m x",
               "seconds": 120.0, "claims": [claim("a", "It holds.", "q", [0.5, 0.7], "> 0.4", True),
                                            claim("b", "It fails.", "r", [0.1], "> 0.4", False)]}
    (tmp_path / name / "verdict.json").write_text(json.dumps(verdict))
    readme = tmp_path / "README.md"
    readme.write_text(f"# X\n\nintro\n{report.START}\nold table\n{report.END}\nafter\n")
    body = report.write_readme(tmp_path, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# X\n\nintro\n") and text.endswith("after\n")
    assert "1 of 2 measured claims held in 1 experiments" in body
    assert "| It holds. | q | 0.6 ± 0.14 [0.5, 0.7] (n=2) | 0.5, 0.7 | > 0.4 | ✅ held |" in body
    assert "❌ did not hold" in body
    assert all(n in body for n in report.experiment_modules()[1:])    # named as missing
    verdict["mode"] = "smoke"
    (tmp_path / name / "verdict.json").write_text(json.dumps(verdict))
    assert "0 of 0 measured claims" in report.write_readme(tmp_path, readme)


def test_report_keep_holds_published_rows_of_experiments_not_rerun(tmp_path):
    """--keep: an experiment without a verdict here keeps its rows (and its outcomes in the count)."""
    from experiments import report
    from experiments.common import claim
    first, second = report.experiment_modules()[:2]
    (tmp_path / first).mkdir()
    verdict = {"experiment": first, "title": "T", "paper": "P", "mode": "default", "command": f"python -m experiments.{first}",
               "seconds": 60.0, "claims": [claim("a", "New.", "q", [0.5, 0.7], "> 0.4", True)]}
    (tmp_path / first / "verdict.json").write_text(json.dumps(verdict))
    old = [f"| **Old** (Q; `python -m experiments.{second}`, 3 min) | Kept. | q | 1 | | > 0 | ❌ did not hold — why |",
           "|  | Also kept. | q | 1 | | > 0 | ◻ control (cannot fail; not counted) |"]
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n| experiment | claim |\n|---|---|\n"
                      f"| **T** (P; `python -m experiments.{first}`, 9 min) | Stale. | q | 1 | | > 0 | ✅ held |\n"
                      + "\n".join(old) + f"\n{report.END}\n")
    body = report.write_readme(tmp_path, readme, keep=True)
    assert "Stale." not in body and "| New. |" in body and all(row in body for row in old)
    assert body.startswith("1 of 2 measured claims held in 2 experiments (0 not measured; 1 controls")
    assert second not in body.partition("No verdict yet:")[2]
