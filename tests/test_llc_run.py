"""The LLC inside a run: logged online for every seed, written with its chains to llc.npz, the same
numbers offline from the checkpoints (lab-llc), across a resume; outputs.npz for essential dynamics."""
import json

import numpy as np
import pytest

import lab
from lab.app.llc import main as lab_llc
from lab.core import ConfigError
from lab.rundir import load_llc, load_outputs

LLC = ["measures.llc.every=20", "measures.llc.chains=2", "measures.llc.draws=8", "measures.llc.burn_in=2",
       "measures.llc.batch_size=4", "train.steps=60", "train.log_every=10", "train.checkpoint_every=20",
       "train.keep_checkpoints=5", "train.seeds=2"]


@pytest.fixture(scope="module")
def llc_run(tmp_path_factory):
    from tests.conftest import TINY
    run_dir = tmp_path_factory.mktemp("llc") / "run"
    lab.run(lab.load_config(TINY + LLC), run_dir)
    return run_dir


def test_online_llc_every_seed_and_outputs(llc_run):
    records = [json.loads(line) for line in (llc_run / "metrics.jsonl").read_text().splitlines()]
    with_llc = [r["step"] for r in records if "llc" in r]
    assert with_llc == [0, 20, 40, 60]
    assert all(len(r["llc"]) == 2 and len(r["llc_std"]) == 2 for r in records if "llc" in r)
    est = load_llc(llc_run)
    assert est["source"] == "online" and est["steps"].tolist() == [0, 20, 40, 60]
    assert est["llc"].shape == (4, 2) and est["chains"].shape == (4, 2, 2)
    assert est["loss_trace"].shape == est["distance"].shape == (4, 2, 2, 10)
    # llc is nβ x the mean of the draws after burn-in, chain by chain
    nbeta = 4 / np.log(4)
    assert est["chains"] == pytest.approx(nbeta * est["loss_trace"][..., 2:].mean(-1))
    assert est["llc"] == pytest.approx(est["chains"].mean(-1))
    out = load_outputs(llc_run)
    assert out["steps"].tolist() == list(range(0, 61, 10))
    assert out["outputs"].shape == (7, 2, 8 * 23)   # probe sequences x (T - 1) next-token log-probabilities
    assert (out["outputs"] <= 0).all()
    summary = json.loads((llc_run / "summary.json").read_text())
    assert "stages" in summary and "error" not in summary["stages"]
    assert (llc_run / "plots" / "development.png").is_file()


def test_offline_estimates_equal_online_ones(llc_run, tmp_path):
    online = load_llc(llc_run)
    with pytest.raises(SystemExit):   # the online estimates are not overwritten by accident
        lab_llc([str(llc_run), "--no-plots"])
    lab_llc([str(llc_run), "--replace", "--no-plots", "--steps", "20", "60"])
    offline = load_llc(llc_run)
    assert offline["source"] == "offline" and offline["steps"].tolist() == [20, 60]
    assert offline["llc"] == pytest.approx(online["llc"][[1, 3]], rel=1e-4)


def test_lab_llc_refuses_bad_settings_in_one_line(llc_run, capsys):
    for args, words in [(["chans=3"], "did you mean 'chains'"), (["step_size=0"], "step_size"),
                        (["--steps", "7"], "no checkpoint at step")]:
        with pytest.raises(SystemExit):
            lab_llc([str(llc_run), "--replace", "--no-plots", *args])
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_llc_settings_are_checked_before_training():
    from tests.conftest import TINY
    with pytest.raises(ConfigError, match="precondition"):
        lab.run(lab.load_config(TINY + ["measures.llc.every=10", "measures.llc.precondition=adam"]))


def test_resumed_run_keeps_its_estimates(tmp_path):
    from tests.conftest import TINY
    run_dir = tmp_path / "run"
    lab.run(lab.load_config(TINY + LLC[:-1] + ["train.steps=40"]), run_dir, plots=False)
    lab.run(lab.load_config(TINY + LLC[:-1] + ["train.steps=60", "train.resume=true"]), run_dir, plots=False)
    assert load_llc(run_dir)["steps"].tolist() == [0, 20, 40, 60]
    assert load_outputs(run_dir)["steps"].tolist() == list(range(0, 61, 10))


def test_lab_llc_on_a_multirun_directory(llc_run, tmp_path, capsys):
    import shutil
    for job in ("0", "1"):
        shutil.copytree(llc_run, tmp_path / "multirun" / job)
    lab_llc([str(tmp_path / "multirun"), "--replace", "--steps", "60"])
    out = capsys.readouterr().out
    for job in ("0", "1"):
        est = load_llc(tmp_path / "multirun" / job)
        assert est["source"] == "offline" and est["steps"].tolist() == [60]
        assert (tmp_path / "multirun" / job / "plots" / "llc_chains.png").is_file()
        assert f"multirun/{job}: LLC (mean over seeds) at step 60:" in out


def test_llc_batch_larger_than_a_clamped_runs_batch_is_refused():
    from tests.conftest import TINY
    with pytest.raises(ConfigError, match="measures.llc.batch_size=16 exceeds train.batch_size"):
        lab.run(lab.load_config(TINY + ["measures.llc.every=10", "clamp=perfect_prev_token", "train.batch_size=8"]))


def test_vmapped_chains_equal_looped_ones():
    """seed_axis=vmap (accelerators) batches the chains; map (CPU) loops over them: same estimates."""
    from tests.conftest import TINY
    short = [a for a in LLC if not a.startswith("train.steps")] + ["train.steps=20"]
    got = {axis: lab.run(lab.load_config(TINY + short + [f"train.seed_axis={axis}"])).metrics["llc"]
           for axis in ("map", "vmap")}
    assert got["map"].shape == (3, 2) and np.isfinite(got["map"]).sum() == 4   # log steps 0, 10, 20; LLC at 0, 20
    np.testing.assert_allclose(got["vmap"], got["map"], rtol=1e-4)             # NaN (step 10) matches NaN
