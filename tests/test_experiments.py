"""Every experiment script runs end to end in smoke mode and writes a well-formed verdict.json and
its figures (smoke verdicts mean nothing; this keeps the scripts from rotting)."""
import importlib
import json

import pytest

from experiments.report import experiment_modules

FIELDS = {"id", "claim", "quantity", "value", "spread", "n", "values", "threshold", "held"}


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
    assert "training" not in out and out.count("reusing the finished run") == 3
    second = json.loads((tmp_path / "verdict.json").read_text())
    assert [c["values"] for c in first["claims"]] == [c["values"] for c in second["claims"]]


def test_claim_value_and_spread_over_finite_values():
    from experiments.common import claim
    c = claim("x", "A claim.", "q", [1.0, None, 3.0], "> 0", True)
    assert c["value"] == 2.0 and c["spread"] == 1.0 and c["n"] == 2 and c["values"] == [1.0, None, 3.0]
    frac = claim("y", "B.", "fraction", [True, False, True, True], "= 1", False)
    assert frac["value"] == 0.75
    none = claim("z", "C.", "q", [None, None], "> 0", None)
    assert none["value"] is None and none["spread"] is None and none["held"] is None


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
    assert "1 of 2 claims held in 1 experiments" in body
    assert "| It holds. | q | 0.6 ± 0.1 (n=2) | 0.5, 0.7 | > 0.4 | ✅ held |" in body
    assert "❌ did not hold" in body
    assert all(n in body for n in report.experiment_modules()[1:])    # named as missing
    verdict["mode"] = "smoke"
    (tmp_path / name / "verdict.json").write_text(json.dumps(verdict))
    assert "0 of 0 claims" in report.write_readme(tmp_path, readme)
