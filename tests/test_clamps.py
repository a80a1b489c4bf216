"""Clamps: strength schedules and every value kind against hand-computed tensors, gradients,
windows inside one compiled program, automatic heads, and config errors."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import lab
from lab.clamps.clamp_set import Clamps
from lab.clamps.schedules import schedule_strength
from lab.clamps.values import copy_logits, prev_token_pattern
from lab.config.schema import ClampConfig
from lab.core import ConfigError
from lab.tasks import TokenBatch
from conftest import HANG_S


def arrays(start=0, stop=2 ** 30, peak=1.0, ramp=0, kind=0):
    return {"start": np.float32(start), "stop": np.float32(stop), "peak": np.float32(peak),
            "ramp": np.float32(ramp), "kind": np.int32(kind)}


@pytest.mark.parametrize("kind,ramp,expected", [
    (0, 0, [0, 0.8, 0.8, 0.8, 0.8, 0.8, 0]),                     # constant, window [1, 6)
    (1, 4, [0, 0.2, 0.4, 0.6, 0.8, 0.8, 0]),                     # linear: peak after 4 steps
    (2, 2, [0, 0.4, 0.8, 0.8, 0.8, 0.8, 0]),                     # cosine: 0.5 - 0.5 cos(pi/2) = 0.5
    (3, 2, [0, 0.8, 0.8, 0.8, 0.8, 0.4, 0]),                     # release: down to 0 at stop
])
def test_schedule_strength_by_hand(kind, ramp, expected):
    a = arrays(start=1, stop=6, peak=0.8, ramp=ramp, kind=kind)
    got = [float(schedule_strength(t, a)) for t in range(7)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_ideal_prev_token_pattern_by_hand():
    expected = np.array([[1, 0, 0, 0],
                         [0.7, 0.3, 0, 0],
                         [0, 0.7, 0.3, 0],
                         [0, 0, 0.7, 0.3]])
    np.testing.assert_allclose(prev_token_pattern(4, 0.7), expected, atol=1e-6)


def hand_batch():
    """[BOS=5] a b c a b c: positions 4, 5, 6 repeat 1, 2, 3."""
    tokens = jnp.array([[5, 0, 1, 2, 0, 1, 2]])
    prev = jnp.array([[-1, -1, -1, -1, 1, 2, 3]])
    rep = jnp.array([[False, False, False, True, True, True, False]])
    return TokenBatch(tokens, prev, rep, jnp.array([1]), jnp.array([3]))


def tiny_setup(clamps: dict, overrides=(), batch_size=1, probe=None):
    """A 2-layer, 2-head model on the hand batch's vocabulary (5 tokens + BOS), seq_len 7."""
    from lab.model import Model
    from lab.tasks.induction import InductionTask
    task = InductionTask(seq_len=7, vocab_size=5, bos=True, min_repeat_len=2, max_repeat_len=3, n_repeats=None,
                         probe_size=4, probe_seed=0)
    from lab.config.schema import ModelConfig
    mcfg = OmegaConf.structured(ModelConfig(n_layers=2, n_heads=2, d_model=8, init_std=0.5))
    model = Model(mcfg, task.model_vocab_size, task.seq_len)
    probe = probe or task.probe()
    cfgs = {n: OmegaConf.merge(OmegaConf.structured(ClampConfig), c) for n, c in clamps.items()}
    train = OmegaConf.create({"steps": 100, "batch_size": batch_size})
    clamps = Clamps(cfgs, model, task, train, probe)
    params = model.init(jax.random.key(0))
    args = jax.tree.map(lambda x: jnp.asarray(x)[0], clamps.init_args(1))
    return clamps, model, params, args, task, probe


def test_induction_pattern_from_the_batch_by_hand():
    clamps, model, params, args, task, _ = tiny_setup(
        {"ind": {"site": "blocks.1.attn.pattern", "value": "induction", "heads": [1], "pattern_strength": 0.75}})
    batch = hand_batch()
    _, clean = model.apply(params, batch.tokens, cache_names=("blocks.1.attn.pattern",))
    _, cache = clamps.forward(params, batch, args, 0, cache_names=("blocks.1.attn.pattern",))
    got = np.asarray(cache["blocks.1.attn.pattern"][0, 1])
    expected = np.asarray(clean["blocks.1.attn.pattern"][0, 1]).copy()
    for q, k in ((4, 2), (5, 3), (6, 4)):       # query -> token after the previous occurrence
        expected[q] = 0.0
        expected[q, k], expected[q, q] = 0.75, 0.25
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(cache["blocks.1.attn.pattern"][0, 0], clean["blocks.1.attn.pattern"][0, 0])


def test_ablations_by_hand():
    batch = TokenBatch(jnp.array([[5, 0, 1, 2, 0, 1, 2], [5, 3, 4, 3, 4, 3, 4], [5, 1, 1, 1, 2, 2, 2]]),
                       *[jnp.zeros((3, 7), int)] * 2, jnp.zeros(3, int), jnp.zeros(3, int))
    probe = TokenBatch(batch.tokens[::-1], *batch[1:])
    clamps, model, params, args, _, _ = tiny_setup({
        "zero": {"site": "blocks.0.attn.z", "value": "zero", "heads": [1]},
        "mean": {"site": "blocks.0.attn.v", "value": "mean", "heads": [0]},
        "resample": {"site": "blocks.1.attn.q", "value": "resample", "heads": [1], "batch": [0, 2]},
        "scale": {"site": "blocks.1.attn.v", "value": "scale", "factor": 0.5, "heads": [0]},
        "part": {"site": "blocks.1.resid_post", "value": "zero", "queries": [-1], "batch": [1], "strength": 0.25},
    }, batch_size=3, probe=probe)
    sites = ("blocks.0.attn.z", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v", "blocks.1.resid_post")
    _, c = clamps.forward(params, batch, args, 0, cache_names=sites)
    # upstream sites of layer 0 see no other clamp, so compare with the clean pass directly
    _, clean = model.apply(params, batch.tokens, cache_names=sites)
    _, probe_clean = model.apply(params, probe.tokens, cache_names=sites)
    np.testing.assert_array_equal(c["blocks.0.attn.z"][:, :, 1], 0.0)
    v0 = np.asarray(c["blocks.0.attn.v"])
    np.testing.assert_allclose(v0[:, :, 0], np.broadcast_to(probe_clean["blocks.0.attn.v"][:, :, 0].mean(0), v0[:, :, 0].shape), rtol=1e-6)
    np.testing.assert_allclose(v0[:, :, 1], clean["blocks.0.attn.v"][:, :, 1], rtol=1e-6)
    # layer-1 sites: the clamped pass differs upstream; the clean values come from the clean pass
    q = np.asarray(c["blocks.1.attn.q"])
    np.testing.assert_allclose(q[0, :, 1], clean["blocks.1.attn.q"][2, :, 1], rtol=1e-5)   # item 0 <- item 2
    np.testing.assert_allclose(q[2, :, 1], clean["blocks.1.attn.q"][1, :, 1], rtol=1e-5)   # item 2 <- item 1
    assert not np.allclose(q[1, :, 1], clean["blocks.1.attn.q"][0, :, 1])                  # item 1 not resampled
    resid = np.asarray(c["blocks.1.resid_post"])
    # resid_post is cached after its own clamp: position -1 of item 1 is 0.75 x; compare with the
    # same pass without that clamp
    clamps2, *_ = tiny_setup({k: v for k, v in {
        "zero": {"site": "blocks.0.attn.z", "value": "zero", "heads": [1]},
        "mean": {"site": "blocks.0.attn.v", "value": "mean", "heads": [0]},
        "resample": {"site": "blocks.1.attn.q", "value": "resample", "heads": [1], "batch": [0, 2]},
        "scale": {"site": "blocks.1.attn.v", "value": "scale", "factor": 0.5, "heads": [0]}}.items()},
        batch_size=3, probe=probe)
    args2 = {k: v for k, v in args.items() if k != "part"}
    _, c2 = clamps2.forward(params, batch, args2, 0, cache_names=sites)
    expected = np.asarray(c2["blocks.1.resid_post"]).copy()
    expected[1, -1] *= 0.75
    np.testing.assert_allclose(resid, expected, rtol=1e-5, atol=1e-7)
    # scale: the v of head 0 is half of what the same pass without the scale clamp computes
    clamps3, *_ = tiny_setup({"zero": {"site": "blocks.0.attn.z", "value": "zero", "heads": [1]},
                              "mean": {"site": "blocks.0.attn.v", "value": "mean", "heads": [0]}},
                             batch_size=3, probe=probe)
    args3 = {k: v for k, v in args.items() if k in ("zero", "mean", "_sources")}
    _, c3 = clamps3.forward(params, batch, args3, 0, cache_names=sites)
    np.testing.assert_allclose(c["blocks.1.attn.v"][:, :, 0], 0.5 * c3["blocks.1.attn.v"][:, :, 0], rtol=1e-6)
    np.testing.assert_allclose(c["blocks.1.attn.v"][:, :, 1], c3["blocks.1.attn.v"][:, :, 1], rtol=1e-6)


def test_pattern_preserving_ablation_and_gradient_option():
    """Zero layer 0's output but preserve layer 1's clean pattern: K/Q composition is kept, V is cut."""
    spec = {"abl": {"site": "blocks.0.attn.out", "value": "zero"},
            "keep": {"site": "blocks.1.attn.pattern", "value": "preserve"}}
    clamps, model, params, args, _, _ = tiny_setup(spec)
    batch = hand_batch()
    names = ("blocks.1.attn.pattern", "blocks.1.attn.v")
    _, clean = model.apply(params, batch.tokens, cache_names=names)
    _, c = clamps.forward(params, batch, args, 0, cache_names=names)
    np.testing.assert_allclose(c["blocks.1.attn.pattern"], clean["blocks.1.attn.pattern"], rtol=1e-6)
    assert not np.allclose(c["blocks.1.attn.v"], clean["blocks.1.attn.v"])

    def grad_wq(grad_flag):
        cl, m, p, a, _, _ = tiny_setup({"keep": {"site": "blocks.1.attn.pattern", "value": "preserve", "grad": grad_flag}})
        loss = lambda p: cl.forward(p, batch, a, 0)[0].sum()
        return np.asarray(jax.grad(loss)(p)["blocks"][1]["attn"]["W_Q"])
    assert np.all(grad_wq(False) == 0)          # the preserved pattern is a constant ...
    assert np.any(grad_wq(True) != 0)           # ... unless gradients through the clean pass are asked for


def test_perfect_copy_logits_by_hand():
    pattern = jnp.array([[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]])
    tokens = jnp.array([[2, 0, 2]])
    got = np.exp(np.asarray(copy_logits(pattern, tokens, 3))) - 1e-6
    np.testing.assert_allclose(got[0], [[0, 0, 1], [0.5, 0, 0.5], [0.3, 0, 0.7]], atol=1e-6)
    clamps, model, params, args, _, _ = tiny_setup({"copy": {"site": "logits", "value": "perfect_copy", "copy_from": "L1H1"}})
    batch = hand_batch()
    logits, cache = clamps.forward(params, batch, args, 0)
    _, clean = model.apply(params, batch.tokens, cache_names=("blocks.1.attn.pattern",))
    expected = copy_logits(clean["blocks.1.attn.pattern"][:, 1], batch.tokens, 6)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    # only matching is learned: gradients reach layer 1's queries, not the unembedding
    g = jax.grad(lambda p: clamps.forward(p, batch, args, 0)[0][0, -1, 0])(params)
    assert np.all(np.asarray(g["W_U"]) == 0) and np.any(np.asarray(g["blocks"][1]["attn"]["W_Q"][:, 1]) != 0)


def test_copy_restricted_to_the_task_copy_keys_by_hand():
    """Singh et al.'s copy reads the head's scores at the label positions only: the pattern renormalised there."""
    pattern = jnp.array([[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]])
    tokens = jnp.array([[2, 0, 2]])
    got = np.exp(np.asarray(copy_logits(pattern, tokens, 3, keys=jnp.array([[False, True, True]])))) - 1e-6
    np.testing.assert_allclose(got[0, 2], [0.3 / 0.8, 0, 0.5 / 0.8], atol=1e-5)
    np.testing.assert_allclose(got[0, 1], [1.0, 0, 0], atol=1e-5)
    # a row with no mass on the keys (an auto head not chosen yet) keeps finite gradients
    g = jax.grad(lambda p: copy_logits(p, tokens, 3, keys=jnp.array([[False, True, True]])).sum())(pattern * 0)
    assert np.all(np.isfinite(np.asarray(g)))


def test_embed_and_prev_token_key_are_singh_perfect_prev_token_input():
    """`embed` on layer 0's output removes layer 0 (layer 1 reads the embedding); `prev_token_key` gives
    each position the previous position's key: the keys of layer 1 are those of the previous tokens."""
    clamps, model, params, args, _, _ = tiny_setup({
        "emb": {"site": "blocks.0.resid_post", "value": "embed"},
        "key": {"site": "blocks.1.attn.k", "value": "prev_token_key"}})
    batch = hand_batch()
    sites = ("blocks.0.resid_pre", "blocks.0.resid_post", "blocks.1.attn.k", "blocks.1.attn.q")
    _, cache = clamps.forward(params, batch, args, 0, cache_names=sites)
    np.testing.assert_array_equal(cache["blocks.0.resid_post"], cache["blocks.0.resid_pre"])
    # layer 1's own keys on the embedding: the same model with only the embed clamp
    only_emb, *_ = tiny_setup({"emb": {"site": "blocks.0.resid_post", "value": "embed"}})
    _, plain = only_emb.forward(params, batch, args, 0, cache_names=sites)
    k = np.asarray(plain["blocks.1.attn.k"])
    np.testing.assert_allclose(cache["blocks.1.attn.k"][0, 0], k[0, 0])
    np.testing.assert_allclose(cache["blocks.1.attn.k"][0, 1:], k[0, :-1])
    np.testing.assert_allclose(cache["blocks.1.attn.q"], plain["blocks.1.attn.q"])
    # gradients reach the embedding through the clamped residual, none reaches layer 0's attention
    g = jax.grad(lambda p: clamps.forward(p, batch, args, 0)[0][0, -1].sum())(params)
    assert np.any(np.asarray(g["W_E"]) != 0) and np.all(np.asarray(g["blocks"][0]["attn"]["W_Q"]) == 0)


def test_copy_from_auto_waits_for_its_head_then_copies_it():
    auto, model, params, args, _, _ = tiny_setup({"copy": {"site": "logits", "value": "perfect_copy", "copy_from": "auto"}})
    assert auto.auto["copy"]["layer"] == 1 and not np.any(np.asarray(args["copy"]["heads"]))
    fixed, *_ = tiny_setup({"copy": {"site": "logits", "value": "perfect_copy", "copy_from": "L1H1"}})
    fixed_args = jax.tree.map(lambda x: jnp.asarray(x)[0], fixed.init_args(1))
    seeded = jax.tree.map(lambda x: x[None], args)
    chosen = jax.tree.map(lambda x: x[0], auto.choose_heads(seeded, "copy", np.array([[0.1, 0.9]]), 5))
    batch = hand_batch()
    np.testing.assert_allclose(auto.forward(params, batch, chosen, 0)[0], fixed.forward(params, batch, fixed_args, 0)[0],
                               rtol=1e-6)
    assert auto.describe()["copy"]["heads_per_seed"] == [[1]]


def test_measure_group_applies_its_clamps_together():
    clamps, *_ = tiny_setup({
        "emb": {"site": "blocks.0.resid_post", "value": "embed", "apply": "measure", "group": "A"},
        "key": {"site": "blocks.1.attn.k", "value": "prev_token_key", "apply": "measure", "group": "A"},
        "pt": {"site": "blocks.0.attn.pattern", "value": "prev_token", "apply": "measure"}})
    assert clamps.measure_groups() == ["A", "pt"]
    assert [s.name for s in clamps.active("measure", "A")] == ["emb", "key"]
    # on top of the eval clamps: the network as evaluated (here one head ablated) plus the group
    both, *_ = tiny_setup({"ablate": {"site": "blocks.1.attn.v", "value": "zero", "heads": [1]},
                           "pt": {"site": "blocks.0.attn.pattern", "value": "prev_token", "apply": "measure"}})
    assert [s.name for s in both.active("measure", "pt")] == ["ablate", "pt"]


def test_graft_from_a_checkpoint(tiny_overrides, tmp_path):
    src = lab.run(lab.load_config(tiny_overrides), tmp_path / "src", plots=False)
    cfg = lab.load_config(tiny_overrides + ["train.seed=7", "train.steps=10",
                                            f"+clamps.g={{site: blocks.0.resid_post, value: graft, source: '{tmp_path / 'src'}'}}"])
    trainer = lab.Trainer(cfg)
    probe = trainer.probe
    params = jax.tree.map(lambda x: x[0], trainer.init_state()["params"])
    _, cache = trainer.clamps.forward(params, probe, jax.tree.map(lambda x: x[0], trainer.clamp_args), 0,
                                      cache_names=("blocks.0.resid_post",))
    _, want = src.run_with_cache(probe.tokens, names=["blocks.0.resid_post"])
    np.testing.assert_allclose(cache["blocks.0.resid_post"], want["blocks.0.resid_post"], rtol=1e-5, atol=1e-6)
    # heads chosen from the source checkpoint's measures
    auto = lab.Trainer(lab.load_config(tiny_overrides + [
        f"+clamps.a={{site: blocks.0.attn.pattern, value: prev_token, heads: auto, source: '{tmp_path / 'src'}'}}"]))
    from lab.train.callbacks import AutoHeads
    AutoHeads().on_start(auto)
    scores = auto.probe_scores(src.model, src.seed_params(0))["prev_token_corrected"][0]
    assert auto.clamps.auto["a"]["heads_per_seed"] == [[int(np.argmax(scores))]]
    assert np.asarray(auto.clamp_args["a"]["heads"]).sum() == 1
    bad = tiny_overrides + ["model.d_model=32", f"+clamps.g={{site: blocks.0.resid_post, value: graft, source: '{tmp_path / 'src'}'}}"]
    with pytest.raises(ConfigError, match="shape mismatch at blocks.0.resid_post"):
        lab.Trainer(lab.load_config(bad))


def test_window_switches_on_mid_run_without_recompiling(tiny_overrides):
    from lab.train.callbacks import Callback
    base = lab.run(lab.load_config(tiny_overrides), plots=False)
    cfg = lab.load_config(tiny_overrides + ["clamp=perfect_prev_token", "clamps.prev_token.start=20"])

    class Weaken(Callback):   # change the strength between chunks, as a user's callback might
        def on_log(self, trainer, record, outputs):
            if record["step"] == 30:
                trainer.clamp_args["prev_token"]["peak"] = trainer.clamp_args["prev_token"]["peak"] * 0.5

    r = lab.run(cfg, plots=False, extra_callbacks=[Weaken()])
    assert r.trainer.chunk_fn(10)._cache_size() == 1          # one compile for the whole run
    m, b = r.metrics, base.metrics
    # steps 0 and 10 and the training losses before the window are exactly the unclamped run's
    np.testing.assert_array_equal(m["train_loss"][:3], b["train_loss"][:3])
    np.testing.assert_array_equal(m["prev_token"][:2], b["prev_token"][:2])
    assert m["prev_token"][2, 0, 0, 0] == pytest.approx(1.0)  # on at step 20 (eval clamp)
    assert m["prev_token"][4, 0, 0, 0] < 0.99                 # half strength from step 30
    assert not np.allclose(m["train_loss"][3:], b["train_loss"][3:])


def test_measure_clamp_logs_loss_without_touching_training_and_auto_heads(tiny_overrides, tmp_path):
    base = lab.run(lab.load_config(tiny_overrides + ["train.seeds=2"]), plots=False)
    cfg = lab.load_config(tiny_overrides + ["train.seeds=2", "clamp=prev_token_loss",
                                            "+clamps.auto={site: blocks.0.attn.pattern, value: zero, heads: auto, "
                                            "start: 20, apply: eval, auto_measure: prev_token}"])
    r = lab.run(cfg, tmp_path, plots=False)
    m = r.metrics
    np.testing.assert_array_equal(m["train_loss"], base.metrics["train_loss"])
    assert m["loss_repeat_clamped_prev_token_probe"].shape == m["loss_repeat"].shape
    assert not np.allclose(m["loss_repeat_clamped_prev_token_probe"], m["loss_repeat"])
    info = r.summary["clamps"]["auto"]
    assert info["chosen_at_step"] == 20
    at20 = list(m["step"]).index(20)
    assert info["heads_per_seed"] == [[int(np.argmax(m["prev_token"][at20, s, 0]))] for s in range(2)]
    assert "auto" in (tmp_path / "summary.json").read_text()


BAD_CLAMPS = [
    ("{site: blocks.0.attn.pattern, value: prev_token, heads: [5]}", "clamps.c.heads=[5]: head 5 does not exist (model.n_heads=2"),
    ("{site: blocks.3.attn.pattern, value: prev_token}", "layer 3 does not exist (model.n_layers=2"),
    ("{site: blocks.0.attn.pattern, value: prev_token, start: 30, stop: 10}", "ends before it starts"),
    ("{site: blocks.0.resid_post, value: prev_token}", "has no key axis"),
    ("{site: blocks.0.attn.z, value: zero, keys: [1]}", "has no key axis"),
    ("{site: blocks.0.resid_post, value: zero, heads: [0]}", "has no head axis"),
    ("{site: blocks.0.attn.pattern, value: ideal}", "clamps.c.value='ideal' is not allowed"),
    ("{site: blocks.0.attn.pattern, value: zero, schedule: release, ramp_steps: 5}", "set stop"),
    ("{site: blocks.0.attn.pattern, value: zero, queries: [40]}", "position 40 does not exist (task.seq_len=24"),
    ("{site: blocks.0.attn.pattern, value: zero, start: 500}", "starts after training ends"),
    ("{site: blocks.0.atn.pattern, value: zero}", "no such hook site"),
    ("{site: logits, value: perfect_copy, copy_from: L2H0}", "no such head"),
    ("{site: logits, value: perfect_copy, copy_from: L1}", "e.g. L1H0, or auto"),
    ("{site: blocks.0.attn.pattern, value: embed}", "put it on blocks.<l>.resid_pre, resid_mid or resid_post"),
    ("{site: blocks.1.attn.q, value: prev_token_key}", "put it on blocks.<l>.attn.k"),
    ("{site: blocks.0.attn.pattern, value: zero, group: A}", "set apply: measure or drop group"),
    ("{site: blocks.0.resid_post, value: graft, source: /nonexistent}", "not a run directory"),
    ("{site: blocks.0.attn.pattern, value: zero, strat: 5}", "unknown config key 'clamps.c.strat'; did you mean 'clamps.c.start'?"),
    ("{value: zero}", "clamps.c.site is required"),
    ("{site: blocks.0.attn.pattern, value: zero, start: soon}", "clamps.c: Value 'soon' of type 'str' could not be converted to Integer"),
]


@pytest.mark.parametrize("spec,message", BAD_CLAMPS)
def test_bad_clamps_fail_at_startup(tiny_overrides, spec, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        lab.Trainer(lab.load_config(tiny_overrides + [f"+clamps.c={spec}"]))


def test_cli_mistyped_clamp_key_suggests_the_right_one(tiny_overrides):
    p = subprocess.run([sys.executable, "-m", "lab", *tiny_overrides, "clamp=perfect_prev_token",
                        "clamps.prev_token.haeds=[1]"], capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 2 and "did you mean 'clamps.prev_token.heads'?" in p.stderr


def test_cli_bad_clamp_is_one_line(tmp_path, tiny_overrides):
    cmd = [sys.executable, "-m", "lab", *tiny_overrides, f"hydra.run.dir={tmp_path}",
           "+clamps.c={site: blocks.0.attn.pattern, value: prev_token, heads: [9]}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: config error: clamps.c.heads=[9]: head 9 does not exist")
    assert "Traceback" not in p.stderr


def test_seed_axis_equals_separate_runs_with_a_clamp(tiny_overrides):
    clamp = ["clamp=late_prev_token", "clamps.late_prev_token.start=15", "clamps.late_prev_token.ramp_steps=10"]
    singles = [lab.run(lab.load_config(tiny_overrides + clamp + [f"train.seed={s}"]), plots=False) for s in (0, 1)]
    both = lab.run(lab.load_config(tiny_overrides + clamp + ["train.seeds=2"]), plots=False)
    for i, single in enumerate(singles):
        for key in ("train_loss", "loss_repeat", "prev_token"):
            np.testing.assert_allclose(both.metrics[key][:, i], single.metrics[key][:, 0], rtol=2e-5, atol=1e-6)


def test_grad_refusal_names_the_value_kinds_that_allow_it():
    # the list comes from the registry (lab/clamps/values.py): a new kind with grad=True joins it
    with pytest.raises(ConfigError, match=r"clamps.z.grad=True: only mean, preserve and resample values are computed"):
        tiny_setup({"z": {"site": "blocks.0.attn.z", "value": "zero", "grad": True}})
