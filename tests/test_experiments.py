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
