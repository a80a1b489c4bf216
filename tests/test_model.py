from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from lab.config import ModelConfig
from lab.hooks import Intervention, UnknownHookError
from lab.model import Model


def tiny_model(**kw):
    cfg = OmegaConf.structured(ModelConfig(n_layers=2, n_heads=2, d_model=16, **kw))
    return Model(cfg, vocab_size=11, seq_len=12)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
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
