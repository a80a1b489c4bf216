"""TransformerLens' hook names as aliases of the lab's (lab/model/hooks.py): the mapping itself, the
cache and interventions under either name give the same arrays, and unknown names name the closest sites."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from lab.config.schema import ModelConfig
from lab.model import Model
from lab.model.hooks import Intervention, UnknownHookError, canonical_name, resolve_names


@pytest.fixture(scope="module")
def model():
    cfg = OmegaConf.structured(ModelConfig(n_layers=2, n_heads=2, d_model=16, attn_only=False))
    return Model(cfg, vocab_size=11, seq_len=12)


@pytest.fixture(scope="module")
def params(model):
    return model.init(jax.random.key(0))


TOKENS = jnp.arange(24).reshape(2, 12) % 11


@pytest.mark.parametrize("tl, lab", [
    ("hook_embed", "embed"),
    ("hook_pos_embed", "pos_embed"),
    ("blocks.0.hook_resid_pre", "blocks.0.resid_pre"),
    ("blocks.1.hook_resid_mid", "blocks.1.resid_mid"),
    ("blocks.1.hook_resid_post", "blocks.1.resid_post"),
    ("blocks.0.attn.hook_q", "blocks.0.attn.q"),
    ("blocks.0.attn.hook_z", "blocks.0.attn.z"),
    ("blocks.0.attn.hook_pattern", "blocks.0.attn.pattern"),
    ("blocks.0.attn.hook_attn_scores", "blocks.0.attn.scores"),
    ("blocks.0.attn.hook_result", "blocks.0.attn.out"),
    ("blocks.0.mlp.hook_pre", "blocks.0.mlp.pre"),
    ("blocks.0.mlp.hook_post", "blocks.0.mlp.post"),
    ("blocks.0.hook_mlp_out", "blocks.0.mlp.out"),
    ("blocks.*.attn.hook_pattern", "blocks.*.attn.pattern"),
    ("blocks.0.attn.pattern", "blocks.0.attn.pattern"),      # the lab's own names are left alone
])
def test_canonical_name(tl, lab):
    assert canonical_name(tl) == lab


def test_every_alias_resolves_to_a_site_of_the_model(model):
    for tl in ["hook_embed", "hook_pos_embed", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_k",
               "blocks.1.attn.hook_v", "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_result",
               "blocks.1.mlp.hook_pre", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]:
        assert resolve_names([tl], model.hook_names) == [canonical_name(tl)]
    assert resolve_names(["blocks.*.attn.hook_pattern"], model.hook_names) == [
        "blocks.0.attn.pattern", "blocks.1.attn.pattern"]


def test_cache_under_either_name_holds_the_same_activation(model, params):
    names_tl = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_result", "blocks.0.mlp.hook_pre"]
    logits_tl, cache_tl = model.run_with_cache(params, TOKENS, names_tl)
    logits, cache = model.run_with_cache(params, TOKENS, [canonical_name(n) for n in names_tl])
    np.testing.assert_array_equal(logits_tl, logits)
    assert sorted(cache_tl) == sorted(cache) == ["blocks.0.attn.pattern", "blocks.0.mlp.pre", "blocks.1.attn.out"]
    for n in names_tl:   # the cache answers to TransformerLens' names too
        assert n in cache_tl
        np.testing.assert_array_equal(cache_tl[n], cache[canonical_name(n)])
    assert cache_tl["blocks.1.attn.hook_result"].shape == (2, 12, 2, 16)   # [batch, pos, head, d_model]
    assert "blocks.1.attn.hook_pattern" not in cache_tl and cache_tl.get("blocks.1.attn.hook_pattern") is None


def test_interventions_under_either_name_and_by_glob(model, params):
    zero_head0 = Intervention(jnp.zeros((1, 1, 2, 1), bool).at[:, :, 0].set(True), 0.0)
    clean = model.run_with_hooks(params, TOKENS, {})
    by_lab = model.run_with_hooks(params, TOKENS, {"blocks.1.attn.z": zero_head0})
    by_tl = model.run_with_hooks(params, TOKENS, {"blocks.1.attn.hook_z": zero_head0})
    assert not np.allclose(clean, by_lab)
    np.testing.assert_array_equal(by_lab, by_tl)
    # a glob puts it on every layer: the same as naming both sites
    both = model.run_with_hooks(params, TOKENS, {"blocks.0.attn.z": zero_head0, "blocks.1.attn.z": zero_head0})
    np.testing.assert_array_equal(model.run_with_hooks(params, TOKENS, {"blocks.*.attn.hook_z": zero_head0}), both)
    _, cache = model.run_with_cache(params, TOKENS, ["blocks.1.attn.hook_z"], {"blocks.1.attn.hook_z": zero_head0})
    assert np.all(np.asarray(cache["blocks.1.attn.z"][:, :, 0]) == 0)


def test_unknown_names_raise_naming_the_closest_sites(model, params):
    with pytest.raises(UnknownHookError, match="closest: blocks.1.attn.pattern"):
        model.run_with_cache(params, TOKENS, ["blocks.1.attn.hook_patern"])
    with pytest.raises(UnknownHookError, match=r"blocks.5.attn.pattern.*closest: blocks\.[01]\.attn\.pattern"):
        resolve_names(["blocks.5.attn.pattern"], model.hook_names)
    # TransformerLens sites the lab lacks say what to use instead
    with pytest.raises(UnknownHookError, match="blocks.<l>.attn.out"):
        model.run_with_hooks(params, TOKENS, {"blocks.0.hook_attn_out": Intervention(True, 0.0)})
    with pytest.raises(UnknownHookError, match="before the LayerNorm's weight and bias"):
        resolve_names(["ln_final.hook_normalized"], model.hook_names)
    message = str(pytest.raises(UnknownHookError, resolve_names, ["nope"], model.hook_names).value)
    assert "\n" not in message and "model.hook_names" in message
