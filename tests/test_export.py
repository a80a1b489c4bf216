"""lab-export (lab/app/export.py) and the notebook API it rests on (lab.load_run at a step).

Without torch: the files each format writes, a safetensors round trip to the lab's own parameters
(and through the TransformerLens names back to the lab's model), the refusals and bad input.
With .venv-peers (`make setup-peers`: CPU torch + TransformerLens): the export loaded into a real
HookedTransformer computes the lab's logits, attention patterns and the other hook sites, for the
attention-only default model, a model with MLPs and LayerNorm, and one with RoPE and neither
LayerNorm nor the 1/sqrt(d_head) scaling. Skipped, saying why, where .venv-peers is absent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import lab
from lab.app.export import FORMATS, flat_params, main, model_problem, transformer_lens_state_dict
from lab.app.run import run
from lab.config.compose import load_config
from lab.core import RunLoadError

from conftest import HANG_S, TINY

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = Path(os.environ.get("LAB_PEERS_PYTHON") or ROOT / ".venv-peers" / "bin" / "python")
FAST = ["measures.enabled=false", "train.checkpoint_every=20"]     # checkpoints at steps 20 and 40


def _train(tmp_path_factory, name, overrides):
    d = tmp_path_factory.mktemp(name) / "run"
    run(load_config(TINY + FAST + overrides), d, plots=False)
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _train(tmp_path_factory, "export", ["train.seeds=2", "train.seed=3"])   # seeds 3 and 4


def _cli(argv, capsys):
    """(exit code, stdout, stderr) of lab-export in-process."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the notebook API


def test_load_run_at_a_step_and_its_helpers(run_dir):
    first, last = lab.load_run(run_dir, step=20), lab.load_run(run_dir)
    assert (first.step, last.step, last.seeds) == (20, 40, [3, 4])
    p20, p40 = first.seed_params(first.seed_index(4)), last.seed_params(1)
    assert not np.allclose(p20["W_E"], p40["W_E"])                   # training moved between the checkpoints
    np.testing.assert_array_equal(p40["W_E"], last.params["W_E"][1])
    batch = last.sample(3, key=7)
    assert batch.tokens.shape == (3, 24)
    np.testing.assert_array_equal(batch.tokens, last.sample(3, key=jax.random.key(7)).tokens)
    logits, cache = last.run_with_cache(batch, ["blocks.*.attn.hook_pattern"], seed_index=1)
    assert logits.shape == (3, 24, 13) and cache["blocks.1.attn.hook_pattern"].shape == (3, 2, 24, 24)
    with pytest.raises(RunLoadError, match=r"no checkpoint at step 30 .*available steps: \[20, 40\]"):
        lab.load_run(run_dir, step=30)
    with pytest.raises(RunLoadError, match=r"no seed 0; its seeds are \[3, 4\]"):
        last.seed_index(0)
    with pytest.raises(RunLoadError, match="out of range"):
        last.seed_params(2)


# ---------------------------------------------------------------- files and round trips


def test_safetensors_export_round_trips_the_lab_parameters(run_dir, tmp_path, capsys):
    code, out, err = _cli([run_dir, "--to", "safetensors", "--step", "20", "--out", tmp_path], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "export.json", "seed_3.safetensors",
                                                          "seed_4.safetensors"]
    assert str(tmp_path / "seed_3.safetensors") in out.split()
    record = json.loads((tmp_path / "export.json").read_text())
    assert (record["format"], record["step"], record["seeds"]) == ("safetensors", 20, [3, 4])
    assert record["run_dir"] == str(run_dir.resolve()) and record["bos_token"] == 12
    loaded = lab.load_run(run_dir, step=20)
    for i, s in enumerate([3, 4]):
        tensors = load_file(str(tmp_path / f"seed_{s}.safetensors"))
        expected = flat_params(loaded.seed_params(i))
        assert sorted(tensors) == sorted(expected) and "blocks.1.attn.W_Q" in tensors
        for k in expected:
            np.testing.assert_array_equal(tensors[k], expected[k])
    assert loaded.sample(2).tokens[0, 0] == record["bos_token"]     # BOS sits at position 0


def test_one_seed_and_default_out(run_dir, capsys):
    code, _, err = _cli([run_dir, "--to", "safetensors", "--seed", "4"], capsys)
    assert code == 0, err
    out = run_dir / "export" / "safetensors-step40"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["seed_4.safetensors"]
    assert json.loads((out / "export.json").read_text())["seeds"] == [4]
    shutil.rmtree(run_dir / "export")


def _torch_free_tl_forward(cfg, sd, tokens):
    """TransformerLens' forward pass written out in numpy from config.json and the state dict (standard
    positions, LayerNorm, softmax attention, gelu_new): checks names, shapes and transposes without torch."""
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][: tokens.shape[1]]

    def ln(x, w, b):
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["eps"]) * w + b
    T = tokens.shape[1]
    for l in range(cfg["n_layers"]):
        p = lambda k: sd[f"blocks.{l}.{k}"]   # noqa: E731
        h = ln(x, p("ln1.w"), p("ln1.b"))
        q, k, v = (np.einsum("bpd,hde->bphe", h, p(f"attn.W_{c}")) + p(f"attn.b_{c}") for c in "QKV")
        scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(cfg["d_head"])
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
        x = x + np.einsum("bqhe,hed->bqd", z, p("attn.W_O")) + p("attn.b_O")
        if not cfg["attn_only"]:
            pre = ln(x, p("ln2.w"), p("ln2.b")) @ p("mlp.W_in") + p("mlp.b_in")
            post = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))   # gelu_new
            x = x + post @ p("mlp.W_out") + p("mlp.b_out")
    return ln(x, sd["ln_final.w"], sd["ln_final.b"]) @ sd["unembed.W_U"] + sd["unembed.b_U"]


def test_transformer_lens_export_files_and_config(run_dir, tmp_path, capsys):
    code, _, err = _cli([run_dir, "--to", "transformer_lens", "--seed", "3", "--out", tmp_path], capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg | {"model_name": None} == cfg | {
        "model_name": None, "n_layers": 2, "d_model": 16, "d_head": 8, "n_heads": 2, "d_mlp": None, "d_vocab": 13,
        "d_vocab_out": 13, "n_ctx": 24, "act_fn": "gelu_new", "attn_only": True, "normalization_type": "LN",
        "eps": 1e-5, "use_attn_scale": True, "positional_embedding_type": "standard", "default_prepend_bos": False}
    sd = load_file(str(tmp_path / "seed_3.safetensors"))
    assert sd["blocks.0.attn.W_Q"].shape == (2, 16, 8) and sd["blocks.0.attn.b_Q"].shape == (2, 8)
    assert sd["blocks.1.attn.W_O"].shape == (2, 8, 16) and sd["unembed.W_U"].shape == (16, 13)
    loaded = lab.load_run(run_dir)
    tokens = np.asarray(loaded.sample(3).tokens)
    ours, _ = loaded.run_with_cache(tokens, [], seed_index=0)
    np.testing.assert_allclose(_torch_free_tl_forward(cfg, sd, tokens), ours, atol=1e-4)
    assert "HookedTransformerConfig" in (tmp_path / "README.md").read_text()


def test_tl_state_dict_of_a_model_with_mlps_in_numpy():
    """transformer_2l's names and shapes, through the numpy TransformerLens forward, without training."""
    cfg = load_config(TINY + ["model=transformer_2l"])
    from lab.train.state import build
    task, model, _, _ = build(cfg)
    params = model.init(jax.random.key(1))
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)  # LN != identity
    from lab.app.export import transformer_lens_config
    tl_cfg = transformer_lens_config(model, task, "x")
    assert (tl_cfg["d_mlp"], tl_cfg["attn_only"]) == (64, False)
    sd = transformer_lens_state_dict(model, params)
    tokens = np.asarray(task.sample(jax.random.key(3), 2).tokens)
    ours, _ = model.apply(params, jnp.asarray(tokens))
    np.testing.assert_allclose(_torch_free_tl_forward(tl_cfg, sd, tokens), ours, atol=1e-4)


# ---------------------------------------------------------------- refusals and bad input


@pytest.mark.parametrize("model, feature_dim, says", [
    ({"attention": "linear"}, 0, "linear attention (model.attention=linear)"),
    ({"readout_hidden": 128}, 0, "ReLU readout MLP in place of the unembedding (model.readout_hidden=128)"),
    ({}, 63, "continuous item inputs projected into the residual stream by W_F"),
    ({"smeared_keys": True}, 0, "smeared keys (model.smeared_keys=true"),
    ({"pos_embed": "relative"}, 0, "relative positions (model.pos_embed=relative"),
])
def test_models_transformer_lens_cannot_express_are_named(model, feature_dim, says):
    assert says in model_problem(model, feature_dim)


@pytest.mark.parametrize("model", [{}, {"pos_embed": "rope"}, {"pos_embed": "sinusoidal", "layer_norm": False},
                                   {"pos_embed": "none", "attn_scale": False, "attn_only": False}, {"smeared_keys": False}])
def test_models_transformer_lens_can_express(model):
    assert model_problem(model) is None


def _with_model(run_dir, tmp_path, **keys):
    """A copy of the run whose config.yaml sets model keys (the refusal comes before its checkpoint is read)."""
    import yaml
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"].update(keys)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


@pytest.mark.parametrize("argv, code, says", [
    (["{missing}", "--to", "safetensors"], 2, "is not a run directory: it has no config.yaml"),
    (["{run}", "--to", "safetensors", "--step", "30"], 2, "no checkpoint at step 30"),
    (["{run}", "--to", "safetensors", "--seed", "0"], 2, "the run has no seed 0; its seeds are 3, 4"),
    (["{run}", "--to", "onnx"], 2, "invalid choice: 'onnx'"),
    (["{run}", "--to", "safetensors", "--out", "{file}"], 2, "it is a file, not a directory"),
    (["{linear}", "--to", "transformer_lens"], 2, "has linear attention (model.attention=linear)"),
    (["{smeared}", "--to", "transformer_lens"], 2, "has smeared keys (model.smeared_keys=true"),
])
def test_bad_input_is_one_line_with_the_fix(run_dir, tmp_path, capsys, argv, code, says):
    (tmp_path / "a_file").write_text("x")
    paths = {"missing": tmp_path / "nothing", "run": run_dir, "file": tmp_path / "a_file",
             "linear": _with_model(run_dir, tmp_path, attention="linear") if "{linear}" in argv else None,
             "smeared": _with_model(run_dir, tmp_path, smeared_keys=True) if "{smeared}" in argv else None}
    got, out, err = _cli([a.format(**paths) for a in argv], capsys)
    assert got == code
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:") or "error:" in line
    assert says in line and "Traceback" not in err
    assert not (run_dir / "export").exists()


def test_cli_runs_as_a_command(run_dir, tmp_path):
    """`python -m lab.app.export` (the lab-export console script's module) on a bad step: one line, exit 2."""
    p = subprocess.run([sys.executable, "-m", "lab.app.export", str(run_dir), "--to", "safetensors", "--step", "7"],
                       capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == (
        f"error: no checkpoint at step 7 in {run_dir / 'checkpoints'}; available steps: 20, 40 "
        "(--step one of them, or leave it out for the newest)")


# ---------------------------------------------------------------- a real TransformerLens


def _peers_missing() -> str | None:
    if not PEERS_PYTHON.exists():
        return f"{PEERS_PYTHON} is absent (`make setup-peers` creates it: CPU torch + TransformerLens)"
    p = subprocess.run([str(PEERS_PYTHON), "-c", "import transformer_lens, safetensors.torch"],
                       capture_output=True, text=True, timeout=HANG_S)
    if p.returncode:
        return f"transformer_lens does not import in {PEERS_PYTHON}: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


@pytest.mark.parametrize("name, overrides", [
    ("attn_only", []),                                                           # the default model
    ("mlp_ln", ["model=transformer_2l"]),                                        # MLPs (gelu_new) + LayerNorm
    ("rope_plain", ["model.pos_embed=rope", "model.layer_norm=false", "model.attn_scale=false"]),
])
def test_transformer_lens_computes_the_lab_function(tmp_path_factory, name, overrides):
    missing = _peers_missing()
    if missing:
        pytest.skip(missing)
    d = _train(tmp_path_factory, name, overrides)
    out = d.parent / "tl"
    from lab.app.export import export_run
    export_run(d, "transformer_lens", out=out)
    loaded = lab.load_run(d)
    tokens = np.asarray(loaded.sample(4, key=11).tokens)
    aliases = [n for n in ["hook_embed", "hook_pos_embed"] if n[5:] in loaded.model.hook_names]
    for l in range(loaded.model.n_layers):
        aliases += [f"blocks.{l}.{s}" for s in ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                                                 "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
                                                 "attn.hook_result", "hook_resid_post"]]
        if not loaded.model.cfg.attn_only:   # (an attention-only HookedTransformer has no hook_resid_mid)
            aliases += [f"blocks.{l}.{s}" for s in ["hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"]]
    logits, cache = loaded.run_with_cache(tokens, aliases, seed_index=0)
    lab_npz = d.parent / "lab.npz"
    np.savez(lab_npz, tokens=tokens, logits=np.asarray(logits), **{n: np.asarray(cache[n]) for n in aliases})
    p = subprocess.run([str(PEERS_PYTHON), str(ROOT / "tests" / "tl_peer_check.py"), str(out), "0", str(lab_npz)],
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["unexpected"] == [] and set(report["missing"]) <= set(report["buffers"]), report
    assert "logits" in report["sites"] and f"blocks.{loaded.model.n_layers - 1}.attn.hook_pattern" in report["sites"]
    print(json.dumps(report["sites"], indent=0))   # shown with -s: each site's largest difference
    for site, r in report["sites"].items():
        assert r is not None, f"TransformerLens has no {site}"
        assert r["err"] <= 1e-4 * max(1.0, r["scale"]), (site, r)
