from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from lab.config.schema import ModelConfig
from lab.model.hooks import Intervention, UnknownHookError
from lab.model import Model


def tiny_model(**kw):
    cfg = OmegaConf.structured(ModelConfig(n_layers=2, n_heads=2, d_model=16, **kw))
    return Model(cfg, vocab_size=11, seq_len=12)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "relative", "none"])
@pytest.mark.parametrize("attn_only", [True, False])
def test_forward_shapes_and_cache(pos, attn_only):
    m = tiny_model(pos_embed=pos, attn_only=attn_only, layer_norm=not attn_only)
    params = m.init(jax.random.key(0))
    tokens = jnp.arange(24).reshape(2, 12) % 11
    logits, cache = m.run_with_cache(params, tokens, ["blocks.*.attn.pattern", "blocks.1.attn.out", "blocks.0.attn.q"])
    assert logits.shape == (2, 12, 11)
    assert cache["blocks.0.attn.pattern"].shape == (2, 2, 12, 12)
    assert cache["blocks.0.attn.q"].shape == (2, 12, 2, 8)
    assert cache["blocks.1.attn.out"].shape == (2, 12, 2, 16)
    np.testing.assert_allclose(cache["blocks.1.attn.pattern"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(np.asarray(cache["blocks.0.attn.pattern"]), 1) == 0)   # causal
    assert ("blocks.0.mlp.post" in m.hook_names) == (not attn_only)


def test_unknown_hook_names_the_site():
    m = tiny_model()
    params = m.init(jax.random.key(0))
    with pytest.raises(UnknownHookError, match="blocks.5.attn.pattern"):
        m.run_with_cache(params, jnp.zeros((1, 12), jnp.int32), ["blocks.5.attn.pattern"])


def test_intervention_replaces_masked_part_and_gradients_flow_elsewhere():
    m = tiny_model()
    params = m.init(jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 11)
    T = 12
    ideal = jnp.eye(T, k=-1).at[0, 0].set(1.0)                   # previous-token pattern
    mask = jnp.zeros((1, 2, 1, 1), bool).at[:, 0].set(True)      # head 0 of layer 0 only
    ivs = {"blocks.0.attn.pattern": Intervention(mask, ideal[None, None])}

    clean, _ = m.apply(params, tokens)
    logits, cache = m.apply(params, tokens, ivs, cache_names=["blocks.0.attn.pattern"])
    assert not np.allclose(clean, logits)                          # the replacement changes the output
    np.testing.assert_array_equal(cache["blocks.0.attn.pattern"][:, 0], jnp.broadcast_to(ideal, (2, T, T)))

    def loss(p):
        return m.apply(p, tokens, ivs)[0].sum()
    g = jax.grad(loss)(params)["blocks"][0]["attn"]
    # the clamped head's pattern no longer depends on its queries; the free head's does
    assert np.all(np.asarray(g["W_Q"][:, 0]) == 0)
    assert np.any(np.asarray(g["W_Q"][:, 1]) != 0)
    assert np.any(np.asarray(g["W_V"][:, 0]) != 0)                # values still learn through the clamp


def test_strength_interpolates():
    m = tiny_model()
    params = m.init(jax.random.key(1))
    tokens = jnp.zeros((1, 12), jnp.int32)
    zero = {"blocks.0.resid_post": Intervention(jnp.array(True), jnp.zeros(16), 0.5)}
    _, clean = m.apply(params, tokens, cache_names=["blocks.0.resid_post"])
    _, half = m.apply(params, tokens, {"blocks.0.resid_post": zero["blocks.0.resid_post"]},
                      cache_names=["blocks.0.resid_post"])
    np.testing.assert_allclose(half["blocks.0.resid_post"], 0.5 * clean["blocks.0.resid_post"], rtol=1e-5)


def _scores_by_hand(cache, layer: int, scale: float) -> np.ndarray:
    q, k = np.asarray(cache[f"blocks.{layer}.attn.q"]), np.asarray(cache[f"blocks.{layer}.attn.k"])
    return np.einsum("bqhe,bkhe->bhqk", q, k) * scale


@pytest.mark.parametrize("attn_scale", [True, False])
def test_linear_attention_pattern_is_the_causal_scores(attn_scale):
    m = tiny_model(attention="linear", attn_scale=attn_scale, layer_norm=False, pos_embed="none")
    params = m.init(jax.random.key(1))
    tokens = jnp.arange(24).reshape(2, 12) % 11
    _, cache = m.run_with_cache(params, tokens, ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.pattern"])
    expected = _scores_by_hand(cache, 0, 1 / np.sqrt(8) if attn_scale else 1.0) * np.tril(np.ones((12, 12)))
    np.testing.assert_allclose(cache["blocks.0.attn.pattern"], expected, rtol=1e-4, atol=1e-7)


def test_unscaled_softmax_attention_uses_raw_dot_products():
    m = tiny_model(attn_scale=False, init_std=0.3)
    params = m.init(jax.random.key(2))
    _, cache = m.run_with_cache(params, jnp.arange(12)[None] % 11, ["blocks.0.attn.*"])
    s = _scores_by_hand(cache, 0, 1.0)
    s = np.where(np.tril(np.ones((12, 12), bool)), s, -np.inf)
    expected = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(cache["blocks.0.attn.pattern"], expected / expected.sum(-1, keepdims=True), rtol=1e-4)


def test_features_and_relu_readout():
    """Continuous item features enter through W_F; a ReLU readout gives n_outputs logits."""
    cfg = OmegaConf.structured(ModelConfig(n_layers=1, n_heads=1, d_model=8, readout_hidden=5, layer_norm=False))
    m = Model(cfg, vocab_size=3, seq_len=4, n_outputs=2, feature_dim=6)
    params = m.init(jax.random.key(0))
    assert params["W_F"].shape == (6, 8) and "W_U" not in params and params["readout"]["W_2"].shape == (5, 2)
    tokens = jnp.zeros((1, 4), jnp.int32)

    class Batch(NamedTuple):
        tokens: jax.Array
        features: jax.Array

    f = jax.random.normal(jax.random.key(1), (1, 4, 6))
    logits, cache = m.run_with_cache(params, Batch(tokens, f), ["embed", "readout.post"])
    assert logits.shape == (1, 4, 2) and float(cache["readout.post"].min()) >= 0.0
    np.testing.assert_allclose(cache["embed"], params["W_E"][tokens] + f @ params["W_F"], rtol=1e-5)
    other = m.run_with_hooks(params, Batch(tokens, f.at[0, 0].add(1.0)), {})
    assert not np.allclose(other, logits)


@pytest.mark.parametrize("kw", [{}, {"attn_scale": False, "init_std": 0.5}, {"pos_embed": "rope", "attn_only": False}])
def test_fused_attention_matches_the_hooked_path(kw):
    """Without hooks on the scores or pattern the model takes `softmax_attention` (a hand-written
    backward); caching the pattern forces the plain path. Both must give the same logits and
    gradients."""
    m = tiny_model(**kw)
    params = m.init(jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (3, 12), 0, 11)
    w = jax.random.normal(jax.random.key(5), (3, 12, 11))

    def loss(p, names):
        return (m.apply(p, tokens, cache_names=names)[0] * w).sum()
    fused, plain = (jax.value_and_grad(loss)(params, names) for names in ((), ("blocks.0.attn.pattern", "blocks.1.attn.scores")))
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(fused[1]), jax.tree.leaves(plain[1])):   # float32 rounding
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(np.abs(b).max()))
    assert m.hook_names.index("blocks.0.attn.pattern") < m.hook_names.index("blocks.0.attn.z")


def test_fused_attention_gradient_is_the_softmax_gradient():
    """The hand-written backward pass against autodiff of the textbook formula, and causal: a key
    gets no gradient from earlier queries."""
    from lab.model.kernels import causal_mask, softmax_attention
    q, k, v, w = (jax.random.normal(jax.random.key(i), (2, 7, 3, 4)) for i in range(4))

    def textbook(q, k, v):
        s = jnp.where(causal_mask(7), jnp.einsum("bqhe,bkhe->bhqk", q, k) * 0.5, -jnp.inf)
        return jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v)
    got = jax.grad(lambda *a: (softmax_attention(*a, 0.5) * w).sum(), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: (textbook(*a) * w).sum(), (0, 1, 2))(q, k, v)
    np.testing.assert_allclose(softmax_attention(q, k, v, 0.5), textbook(q, k, v), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the last key influences only the last query
    g_last = jax.grad(lambda kk: softmax_attention(q, kk, v, 0.5)[:, :-1].sum())(k)
    assert np.all(np.asarray(g_last[:, -1]) == 0)


def test_dense_gradient_is_the_matmul_gradient():
    """`dense` (the unembedding and the output projection) writes its weight gradient by hand so
    that XLA:CPU runs it as a row-major product; values and both gradients are x @ w's."""
    from lab.model.kernels import dense
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    w = jax.random.normal(jax.random.key(1), (4, 6))
    g = jax.random.normal(jax.random.key(2), (3, 5, 6))
    got, vjp = jax.vjp(dense, x, w)
    want, vjp_want = jax.vjp(lambda a, b: a @ b, x, w)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(vjp(g), vjp_want(g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hooked_head_outputs_give_the_unhooked_gradients():
    """Hooking `attn.out` computes the projection per head (an einsum); otherwise it is one `dense`
    product over all heads. Same loss and gradients."""
    m = tiny_model()
    params = m.init(jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (3, 12), 0, 11)
    loss = lambda p, names: m.apply(p, tokens, cache_names=names)[0].std()
    plain, hooked = (jax.value_and_grad(loss)(params, n) for n in ((), ("blocks.0.attn.out", "blocks.1.attn.out")))
    np.testing.assert_allclose(plain[0], hooked[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(hooked[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


def test_fused_attention_switch_picks_the_path_with_the_same_result():
    """`model.fused_attention=false` trains through plain autodiff of the softmax (to compare speed
    or rule the hand-written backward out); the loss is the same up to rounding."""
    tokens = jax.random.randint(jax.random.key(4), (3, 12), 0, 11)
    out = {}
    for fused in (True, False):
        m = tiny_model(fused_attention=fused)
        params = m.init(jax.random.key(3))
        f = lambda p: m.apply(p, tokens)[0].sum()
        out[fused] = f(params), str(jax.make_jaxpr(f)(params))
    assert "name=softmax_attention" in out[True][1] and "name=softmax_attention" not in out[False][1]
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-5)


# ---------------------------------------------------------------- smeared keys (Olsson et al. 2022)


def test_smeared_keys_by_hand():
    """3 positions, 1 head, k = 1, 2, 4 (one dimension), sigma(alpha) = 3/4 (alpha = ln 3):
    k' = 1 (position 0 keeps its own key), 3/4*2 + 1/4*1 = 1.75, 3/4*4 + 1/4*2 = 3.5."""
    from lab.model.transformer import smear_keys
    k = jnp.array([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(smear_keys(k, jnp.array([np.log(3.0)])).ravel(), [1.0, 1.75, 3.5], rtol=1e-6)
    # two heads, each with its own mix: alpha = 0 (sigma 1/2) and a large alpha (sigma ~ 1: unsmeared)
    k2 = jnp.stack([k[..., 0, :], 10 * k[..., 0, :]], axis=2)          # (1, 3, 2, 1)
    got = np.asarray(smear_keys(k2, jnp.array([0.0, 40.0])))[0, :, :, 0]
    np.testing.assert_allclose(got, [[1.0, 10.0], [1.5, 20.0], [3.0, 40.0]], rtol=1e-6)


def test_smeared_keys_in_the_model():
    """The option adds one alpha per head, initialised to 0 (sigma = 1/2); `attn.k` stays the unsmeared
    projection and `attn.k_smeared` is what the scores use; the fused and hooked paths agree; the
    plain model is unchanged (no parameter, no site)."""
    plain, m = tiny_model(init_std=0.5), tiny_model(smeared_keys=True, init_std=0.5)   # sharp patterns
    assert "smear_alpha" not in plain.init(jax.random.key(0))["blocks"][0]["attn"]
    assert "blocks.0.attn.k_smeared" not in plain.hook_names
    params = m.init(jax.random.key(0))
    np.testing.assert_array_equal(params["blocks"][1]["attn"]["smear_alpha"], np.zeros(2))
    params["blocks"][0]["attn"]["smear_alpha"] = jnp.array([np.log(3.0), -1.0])
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 11)
    logits, cache = m.run_with_cache(params, tokens, ["blocks.0.attn.*"])
    k, ks = np.asarray(cache["blocks.0.attn.k"]), np.asarray(cache["blocks.0.attn.k_smeared"])
    mix = np.array([0.75, 1 / (1 + np.e)])[None, None, :, None]
    np.testing.assert_allclose(ks[:, 1:], mix * k[:, 1:] + (1 - mix) * k[:, :-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ks[:, 0], k[:, 0], rtol=1e-6)
    scores = np.einsum("bqhe,bkhe->bhqk", cache["blocks.0.attn.q"], ks) / np.sqrt(8)
    causal = np.tril(np.ones((12, 12), bool))
    np.testing.assert_allclose(np.where(causal, cache["blocks.0.attn.scores"], 0), np.where(causal, scores, 0),
                               rtol=1e-4, atol=1e-6)
    fused = m.apply(params, tokens)[0]                                    # no hook on the pattern: fused kernel
    np.testing.assert_allclose(fused, logits, rtol=1e-5, atol=1e-6)
    unsmeared = params | {"blocks": {l: {**b, "attn": {n: v for n, v in b["attn"].items() if n != "smear_alpha"}}
                                     for l, b in params["blocks"].items()}}
    assert np.abs(np.asarray(fused) - np.asarray(plain.apply(unsmeared, tokens)[0])).max() > 1e-3


def test_smeared_keys_follow_rope():
    """With RoPE the keys are smeared after the rotation: k_smeared = mix * R_j k_j + (1 - mix) * R_{j-1} k_{j-1}."""
    from lab.model.transformer import rotary
    m = tiny_model(smeared_keys=True, pos_embed="rope")
    params = m.init(jax.random.key(2))
    params["blocks"][0]["attn"]["smear_alpha"] = jnp.array([1.0, -2.0])
    _, cache = m.run_with_cache(params, jnp.arange(12)[None] % 11, ["blocks.0.attn.k", "blocks.0.attn.k_smeared"])
    rk = np.asarray(rotary(cache["blocks.0.attn.k"], 10000.0))
    mix = (1 / (1 + np.exp(-np.array([1.0, -2.0]))))[None, None, :, None]
    np.testing.assert_allclose(cache["blocks.0.attn.k_smeared"][:, 1:], mix * rk[:, 1:] + (1 - mix) * rk[:, :-1],
                               rtol=1e-5, atol=1e-7)


def test_smeared_1l_model_trains_and_alpha_gets_gradient(tiny_overrides):
    """configs/model/smeared_1l.yaml: one update of a 1-layer smeared-key model runs and moves each
    head's alpha (it receives a non-zero, finite gradient)."""
    import lab
    trainer = lab.Trainer(lab.load_config(tiny_overrides + ["model=smeared_1l", "model.d_model=16",
                                                             "model.n_heads=2"]))
    assert trainer.model.n_layers == 1 and trainer.cfg.model.smeared_keys
    state = jax.tree.map(lambda x: x[0], trainer.init_state())
    args = jax.tree.map(lambda x: x[0], trainer.clamp_args)
    batch = trainer.task.sample(jax.random.key(1), 8)
    loss, grads = trainer.loss_and_grad(state["params"], batch, args, {}, 0)
    g = np.asarray(grads["blocks"][0]["attn"]["smear_alpha"])
    assert g.shape == (2,) and np.all(np.isfinite(g)) and np.all(g != 0) and np.isfinite(float(loss))
    new, _ = jax.jit(trainer.train_step)(state, args, {}, 0)
    assert np.all(np.asarray(new["params"]["blocks"][0]["attn"]["smear_alpha"]) != 0)


# ---------------------------------------------------------------- relative positions (Shaw et al. 2018; Edelman et al. 2024)

# q_0 = (1, 0), q_1 = (0, 1), q_2 = (1, 1); one key-side vector per offset: r_0 = (1, 2), r_1 = (3, 4), r_2 = (5, 6).
# s[i, j] = q_i . r_{i-j}: row 0: q_0.r_0 = 1; row 1: q_1.r_1 = 4, q_1.r_0 = 2; row 2: q_2.r_2 = 11, q_2.r_1 = 7,
# q_2.r_0 = 3; 0 above the diagonal.
REL_Q = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
REL_TABLE = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
REL_SCORES = [[1.0, 0.0, 0.0], [4.0, 2.0, 0.0], [11.0, 7.0, 3.0]]


def test_relative_key_scores_by_hand():
    from lab.model.transformer import relative_key_scores
    q = jnp.array(REL_Q).reshape(1, 3, 1, 2)
    table = jnp.array(REL_TABLE).reshape(3, 1, 2)
    np.testing.assert_allclose(relative_key_scores(q, table)[0, 0], REL_SCORES)
    # a longer table (offsets beyond the sequence) changes nothing; a second head reads its own vectors
    q2, t2 = jnp.concatenate([q, -q], 2), jnp.concatenate([table, 10 * table], 1)
    long = jnp.concatenate([t2, jnp.ones((4, 2, 2))], 0)
    got = np.asarray(relative_key_scores(q2, long))[0]
    np.testing.assert_allclose(got[0], REL_SCORES)
    np.testing.assert_allclose(got[1], -10 * np.array(REL_SCORES))


def test_relative_positions_in_the_model():
    """One layer, one head, d_model 2, no LayerNorm, no scaling, W_Q = I, W_K = 0 (no content term) and
    token embeddings equal to REL_Q: the scores are REL_SCORES, so the pattern's row 1 is
    softmax(4, 2) = (1, e^-2) / (1 + e^-2) = (0.8808, 0.1192) and row 2 softmax(11, 7, 3) =
    (1, e^-4, e^-8) / (1 + e^-4 + e^-8) = (0.98169, 0.017980, 0.000329). No absolute position enters
    the stream; the fused switch is ignored (explicit path) and the logits agree with the hooked run."""
    cfg = OmegaConf.structured(ModelConfig(n_layers=1, n_heads=1, d_model=2, layer_norm=False, attn_scale=False,
                                           pos_embed="relative"))
    m = Model(cfg, vocab_size=3, seq_len=3)
    params = m.init(jax.random.key(0))
    assert "W_pos" not in params and params["blocks"][0]["attn"]["W_rel"].shape == (3, 1, 2)
    assert "pos_embed" not in m.hook_names
    attn = params["blocks"][0]["attn"]
    attn["W_Q"], attn["W_K"] = jnp.eye(2).reshape(2, 1, 2), jnp.zeros((2, 1, 2))
    attn["W_rel"] = jnp.array(REL_TABLE).reshape(3, 1, 2)
    params["W_E"] = jnp.array(REL_Q)
    logits, cache = m.run_with_cache(params, jnp.array([[0, 1, 2]]), ["blocks.0.attn.scores", "blocks.0.attn.pattern"])
    causal = np.tril(np.ones((3, 3), bool))
    np.testing.assert_allclose(np.where(causal, cache["blocks.0.attn.scores"][0, 0], 0), REL_SCORES, rtol=1e-6)
    np.testing.assert_allclose(cache["blocks.0.attn.pattern"][0, 0],
                               [[1, 0, 0], [0.880797, 0.119203, 0], [0.981690, 0.017980, 0.000329]], atol=2e-6)
    np.testing.assert_allclose(m.apply(params, jnp.array([[0, 1, 2]]))[0], logits, rtol=1e-6)


def test_relative_positions_validate():
    from lab.config.compose import load_config, validate
    validate(load_config(["model.pos_embed=relative"]))
    with pytest.raises(Exception, match="model.pos_embed"):
        validate(load_config(["model.pos_embed=shaw"]))


def test_readout_layers_by_hand():
    """model.readout_layers stacks ReLU layers in the readout (Reddy's classifier has three); logits
    checked by hand on x = [1, 1] with d = hidden = 2 and one output:
      h1 = relu([1, 1] W_1 + b_1) = relu([1 + 2, -1 + 0] + [0, 1]) = [3, 0]
      h2 = relu(h1 I + [-1, 2]) = [2, 2]
      h3 = relu(h2 [[1, 1], [-1, 0]] + [0.5, -1]) = relu([0 + 0.5, 2 - 1]) = [0.5, 1]
      logit = h3 [2, 3] + 1 = 1 + 3 + 1 = 5;  with one layer: h1 [2, 3] + 1 = 6 + 0 + 1 = 7."""
    from flax import nnx

    from lab.model.hooks import Hooks
    from lab.model.transformer import Readout
    x = jnp.array([[1.0, 1.0]])
    weights = dict(W_1=[[1.0, -1.0], [2.0, 0.0]], b_1=[0.0, 1.0], W_2=[[2.0], [3.0]], b_2=[1.0],
                   W_mid=[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]], b_mid=[[-1.0, 2.0], [0.5, -1.0]])
    for layers, expected, post in ((3, 5.0, [0.5, 1.0]), (1, 7.0, [3.0, 0.0])):
        r = Readout(2, 2, 1, 1.0, nnx.Rngs(0), layers=layers)
        for name, w in weights.items():
            if hasattr(r, name):
                getattr(r, name)[...] = jnp.asarray(w)
        hooks = Hooks(cache_names=["readout.post"])
        np.testing.assert_allclose(r(x, hooks), [[expected]])
        np.testing.assert_allclose(hooks.cache["readout.post"], [post])
    assert not hasattr(Readout(2, 2, 1, 1.0, nnx.Rngs(0)), "W_mid")   # the default: the original readout


def test_readout_layers_in_the_model_and_bad_values():
    """readout_layers = 3 adds two (hidden, hidden) layers to the model's params; bad values are ConfigErrors."""
    from lab.config.compose import load_config, validate
    from lab.core import ConfigError
    cfg = OmegaConf.structured(ModelConfig(n_layers=1, n_heads=1, d_model=8, readout_hidden=5, readout_layers=3))
    params = Model(cfg, vocab_size=3, seq_len=4, n_outputs=2).init(jax.random.key(0))
    assert params["readout"]["W_mid"].shape == (2, 5, 5) and params["readout"]["b_mid"].shape == (2, 5)
    for overrides, words in ((["model.readout_layers=0"], "positive integer"),
                             (["model.readout_hidden=null", "model.readout_layers=3"], "readout_hidden"),
                             (["model.readout_init=xavier"], "readout_init")):
        with pytest.raises(ConfigError, match=words):
            validate(load_config(["experiment=reddy"] + overrides))


def test_readout_he_init():
    """readout_init=he (Reddy's code): ReLU layers N(0, 2/fan_in), output N(0, 1/fan_in), whatever init_std:
    here fan_in 64 -> std sqrt(2/64) = 0.177; 256 -> sqrt(2/256) = 0.0884; output sqrt(1/256) = 0.0625."""
    from flax import nnx

    from lab.model.transformer import Readout
    r = Readout(64, 256, 200, 0.02, nnx.Rngs(0), layers=2, init="he")
    for w, std in ((r.W_1, 0.177), (r.W_mid, 0.0884), (r.W_2, 0.0625)):
        assert abs(float(jnp.std(w[...])) - std) < 0.05 * std
    assert abs(float(jnp.std(Readout(64, 256, 200, 0.02, nnx.Rngs(0)).W_1[...])) - 0.02) < 0.001
