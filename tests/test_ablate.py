"""lab-ablate on a tiny trained run: facts that can be checked by hand (no ablation = the plain
forward pass, zero-ablating every head = zeroing W_O, mean ablation over one sequence = nothing,
the top heads are the highest-scoring ones), the files it writes, and its refusal of a directory
it cannot load. Compiling dominates the time, so the ablations share one set of array shapes."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.analysis.ablation import ablate, n_per_layer
from lab.app.ablate import main
from lab.train.restore import load_run
from lab.measures.losses import repeat_loss_and_accuracy
from lab.app.run import run
from lab.config.compose import load_config

from conftest import TINY

EVAL = ["--eval-size", "16", "--draws", "3"]          # 2 layers x 2 heads: 1 + 4 + 1 + 3 conditions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablate") / "run"
    # two seeds, to check the leading seed axis; no measures, which the ablation does not read (compiles faster)
    run(load_config(TINY + ["train.seeds=2", "train.seed=5", "measures.enabled=false"]), d, plots=False)
    return d


@pytest.fixture(scope="module")
def cli_out(run_dir, tmp_path_factory):
    """`lab-ablate` (in-process) with its default mean ablation, top 50 % = 1 of 2 heads per layer."""
    out = tmp_path_factory.mktemp("ablation")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        main([str(run_dir), *EVAL, "--top-percent", "50", "--out", str(out)])
    (out / "stdout.txt").write_text(stdout.getvalue())   # for test_cli_writes_outputs
    return out


@pytest.fixture(scope="module")
def result(cli_out):
    return json.loads((cli_out / "ablation.json").read_text())


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(run_dir)   # a LoadedRun: cfg, task, model, seeds, step, params


def _forward(trainer, size=16):
    """Plain (loss_repeat, acc_repeat) of one seed's params on the batch ablate() evaluates on."""
    batch = jax.jit(trainer.task.sample, static_argnums=1)(jax.random.PRNGKey(0), size)
    return jax.jit(lambda p: repeat_loss_and_accuracy(trainer.model.apply(p, batch.tokens)[0], batch))


def _seed_params(params, i):
    return jax.tree.map(lambda x: x[i], params)


def _heads(text):
    return [tuple(map(int, name[1:].split("H"))) for name in text.split()]


def _rows(result, seed):
    return {r["condition"]: r for r in result["rows"] if r["seed"] == seed}


def test_n_per_layer():
    assert n_per_layer(2, 2.0) == 1                 # at least one head per layer
    assert n_per_layer(4, 25.0) == 1 and n_per_layer(4, 26.0) == 2
    assert n_per_layer(8, 30.0) == 3 and n_per_layer(100, 7.0) == 7   # 7.000000000000001 is not 8
    assert n_per_layer(4, 100.0) == 4


def test_no_ablation_is_the_plain_forward_pass(loaded, result):
    trainer, step, params = loaded, loaded.step, loaded.params   # a LoadedRun has task, model, seeds
    assert step == result["step"] == 40 and result["seeds"] == [5, 6]
    forward = _forward(trainer)
    for i, s in enumerate(trainer.seeds):
        none = _rows(result, s)["none"]
        np.testing.assert_allclose([none["loss_repeat"], none["acc_repeat"]], forward(_seed_params(params, i)), rtol=1e-5)
        assert none["delta_loss"] == 0 and none["n_ablated"] == 0


def test_icl_score_is_the_measures_icl_score_under_each_ablation(loaded, result):
    """The ICL score of each condition is the late-minus-early token loss of that condition's logits on
    the eval batch (the formula the measures log): by hand for no ablation and for the top heads."""
    from lab.measures.losses import icl_positions, token_losses
    from lab.model.hooks import Intervention
    assert result["icl"] and result["icl_positions"] == list(icl_positions(24))
    early, late = result["icl_positions"]
    batch = jax.jit(loaded.task.sample, static_argnums=1)(jax.random.PRNGKey(0), 16)
    for i, s in enumerate(loaded.seeds):
        p, rows = _seed_params(loaded.params, i), _rows(result, s)
        _, cache = loaded.model.apply(p, batch, cache_names=("blocks.0.attn.z", "blocks.1.attn.z"))
        mask = np.zeros((2, 2), bool)
        for l, h in _heads(rows["top"]["heads"]):
            mask[l, h] = True
        for cond, m in (("none", np.zeros((2, 2), bool)), ("top", mask)):
            iv = {f"blocks.{l}.attn.z": Intervention(jnp.asarray(m[l])[None, None, :, None],
                                                     cache[f"blocks.{l}.attn.z"].mean(0, keepdims=True))
                  for l in range(2)}
            by_pos = np.asarray(token_losses(loaded.model.apply(p, batch, iv)[0], batch.tokens).mean(0))
            np.testing.assert_allclose(rows[cond]["icl_score"], by_pos[late] - by_pos[early], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rows["top"]["delta_icl"], rows["top"]["icl_score"] - rows["none"]["icl_score"],
                                   atol=1e-6)
        draws = rows["random"]["draws"]
        np.testing.assert_allclose(rows["random"]["icl_score"], np.mean([d["icl_score"] for d in draws]), rtol=1e-6)
    assert "icl_mean" in result["summary"]["top"]


def test_zero_ablating_every_head_equals_zero_W_O(run_dir, loaded):
    trainer, params = loaded, loaded.params
    r = ablate(run_dir, kind="zero", top_percent=100.0, eval_size=16, draws=3)   # top = every head
    forward = _forward(trainer)
    for i, s in enumerate(trainer.seeds):
        p = _seed_params(params, i)
        no_W_O = {**p, "blocks": {l: {**b, "attn": {**b["attn"], "W_O": jnp.zeros_like(b["attn"]["W_O"])}}
                                  for l, b in p["blocks"].items()}}
        rows = _rows(r, s)
        assert rows["top"]["n_ablated"] == 4 and rows["random"]["n_ablated"] == 4
        for cond in ("top", "random"):   # 100 %: the random draws are every head as well
            np.testing.assert_allclose([rows[cond]["loss_repeat"], rows[cond]["acc_repeat"]], forward(no_W_O), rtol=1e-5)
        np.testing.assert_allclose([rows["none"]["loss_repeat"], rows["none"]["acc_repeat"]], forward(p), rtol=1e-5)
        assert rows["top"]["delta_loss"] != 0 and rows["L0H0"]["delta_loss"] != 0   # the ablations take effect


def test_top_and_random_pick_n_heads_per_layer(result):
    L, H, n = result["n_layers"], result["n_heads"], result["n_per_layer"]
    assert (L, H, n) == (2, 2, 1)
    for i, s in enumerate(result["seeds"]):
        scores = np.asarray(result["induction_scores"][i])
        rows = _rows(result, s)
        assert set(rows) == {"none", "top", "random"} | {f"L{l}H{h}" for l in range(L) for h in range(H)}
        top = _heads(rows["top"]["heads"])
        assert rows["top"]["n_ablated"] == len(top) == n * L
        for l in range(L):
            chosen = [h for (ll, h) in top if ll == l]
            assert len(chosen) == n
            assert scores[l, chosen].min() >= np.delete(scores[l], chosen).max()
        draws = rows["random"]["draws"]
        assert len(draws) == 3
        for d in draws:
            assert sorted(l for l, _ in _heads(d["heads"])) == sorted(list(range(L)) * n)
        np.testing.assert_allclose(rows["random"]["loss_repeat"], np.mean([d["loss_repeat"] for d in draws]))
        np.testing.assert_allclose(rows["random"]["loss_std"], np.std([d["loss_repeat"] for d in draws], ddof=1), atol=1e-9)
        for l in range(L):
            for h in range(H):
                single = rows[f"L{l}H{h}"]
                assert single["heads"] == f"L{l}H{h}" and single["n_ablated"] == 1
                np.testing.assert_allclose(single["delta_loss"], single["loss_repeat"] - rows["none"]["loss_repeat"],
                                           atol=1e-6)


def test_mean_ablation_over_one_sequence_changes_nothing(run_dir):
    """With a one-sequence eval batch a head's mean z is its z, so mean ablation is the identity."""
    r = ablate(run_dir, eval_size=1, draws=2, top_percent=100.0)
    for row in r["rows"]:
        assert abs(row["delta_loss"]) < 1e-5, row


def test_cli_writes_outputs(cli_out, result):
    stdout = (cli_out / "stdout.txt").read_text()
    assert stdout.startswith("mean ablation of ") and "\n    5  top " in stdout and "\n    6  random " in stdout
    assert all(f"{cli_out / name}\n" in stdout for name in ("ablation.csv", "ablation.json", "ablation.png"))
    rows = list(csv.DictReader(open(cli_out / "ablation.csv")))
    assert len(rows) == len(result["rows"]) == 2 * (1 + 2 * 2 + 2)   # seeds x (none, 4 single heads, top, random)
    assert [r["condition"] for r in rows[:7]] == ["none", "L0H0", "L0H1", "L1H0", "L1H1", "top", "random"]
    assert rows[6]["loss_std"] != "" and rows[0]["loss_std"] == ""
    assert rows[6]["icl_std"] != "" and float(rows[5]["icl_score"]) == pytest.approx(result["rows"][5]["icl_score"],
                                                                                      rel=1e-5, abs=1e-6)
    assert " icl_score  heads\n" in stdout
    assert float(rows[5]["loss_repeat"]) == pytest.approx(result["rows"][5]["loss_repeat"], rel=1e-5)
    assert result["kind"] == "mean" and result["draws"] == 3 and result["eval_size"] == 16
    png = (cli_out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_refuses_a_directory_without_checkpoint(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    p = subprocess.run([sys.executable, "-m", "lab.app.ablate", str(bare)], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and "no checkpoint" in p.stderr and p.stderr.count("\n") == 1
    assert not (bare / "checkpoints").exists() and not (bare / "ablation").exists()


def test_cli_refuses_a_directory_without_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.yaml" in err and err.count("\n") == 1


def test_rank_by_takes_each_heads_max_of_the_measures():
    """head_stats ranks by the named per-head measures, each head's max of them: with induction
    [[0.1, 0.9]] and backward_match [[0.7, 0.2]] (1 layer x 2 heads), ranking by induction picks H1,
    by backward_match H0, by both max(0.1, 0.7) = 0.7 vs max(0.9, 0.2) = 0.9, so H1."""
    from types import SimpleNamespace
    from lab.analysis.ablation import head_stats, top_mask
    z = jnp.ones((2, 3, 2, 4))                                        # (B, T, H, d_head)
    model = SimpleNamespace(n_layers=1, apply=lambda params, batch, cache_names=(): (jnp.zeros((2, 3, 5)),
                                                                                       {"blocks.0.attn.z": z}))
    scores = {"induction": jnp.array([[0.1, 0.9]]), "backward_match": jnp.array([[0.7, 0.2]])}
    task = SimpleNamespace(measures=lambda *a: scores, main_scores=lambda logits, batch: (0.0, 0.0))
    picks = {}
    for rank_by in (("induction",), ("backward_match",), ("induction", "backward_match")):
        _, s, _, _ = head_stats(model, task, None, {}, None, rank_by=rank_by)
        picks[rank_by] = int(np.flatnonzero(top_mask(np.asarray(s), 1)[0])[0])
    np.testing.assert_allclose(head_stats(model, task, None, {}, None, rank_by=("induction", "backward_match"))[1],
                               [[0.7, 0.9]])
    assert picks == {("induction",): 1, ("backward_match",): 0, ("induction", "backward_match"): 1}


def test_ablate_refuses_bad_rank_by_and_eval_task(run_dir):
    with pytest.raises(ValueError, match="rank_by"):
        ablate(run_dir, eval_size=1, draws=1, rank_by=())
    with pytest.raises(ValueError, match="not_a_field"):
        ablate(run_dir, eval_size=1, draws=1, eval_task={"not_a_field": 1})
