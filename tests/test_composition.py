"""Composition scores against hand-computed values and a plain numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.measures.composition import composition_scores

D, H, E = 4, 2, 2
KEYS = ("q_composition", "k_composition", "v_composition")


def empty_block():
    return {"attn": {"W_Q": np.zeros((D, H, E)), "W_K": np.zeros((D, H, E)),
                     "W_V": np.zeros((D, H, E)), "W_O": np.zeros((H, E, D))}}


def to_params(blocks):
    """Nested numpy dicts -> the params layout (float32 jnp arrays)."""
    conv = lambda d: {k: conv(v) if isinstance(v, dict) else jnp.asarray(v, jnp.float32) for k, v in d.items()}
    return {"blocks": {l: conv(b) for l, b in enumerate(blocks)}}


def random_block(rng, d=D, h=H, e=E, ln=False):
    b = {"attn": {"W_Q": rng.normal(size=(d, h, e)), "W_K": rng.normal(size=(d, h, e)),
                  "W_V": rng.normal(size=(d, h, e)), "W_O": rng.normal(size=(h, e, d))}}
    if ln:
        b["ln1"] = {"scale": rng.uniform(0.5, 2.0, d), "bias": rng.normal(size=d)}
    return b


def test_rank_one_hand_case():
    """A = u v^T, W_QK = w z^T, W_OV = p r^T: Q = |cos(v, w)|, K = |cos(v, z)|, V = |cos(v, p)|."""
    e = np.eye(D)
    b0, b1 = empty_block(), empty_block()
    b0["attn"]["W_V"][:, 0, 0] = [1.0, 2.0, -1.0, 0.5]          # u: any vector, it cancels
    b0["attn"]["W_O"][0, 0] = 3 * e[0]                           # v = 3 e0; head 1 of layer 0 is all zero
    # head 0 of layer 1: z = e0 (K = 1), w = 0.6 e0 + 0.8 e1 (Q = 0.6), p = e2 (V = 0)
    b1["attn"]["W_K"][:, 0, 0] = e[0]
    b1["attn"]["W_Q"][:, 0, 0] = 2 * (0.6 * e[0] + 0.8 * e[1])
    b1["attn"]["W_V"][:, 0, 0], b1["attn"]["W_O"][0, 0] = e[2], e[1]
    # head 1 of layer 1: z = 0.6 e0 - 0.8 e3 (K = 0.6), w = e3 (Q = 0), p = e0 + e1 (V = 1/sqrt 2)
    b1["attn"]["W_K"][:, 1, 1] = 0.6 * e[0] - 0.8 * e[3]
    b1["attn"]["W_Q"][:, 1, 1] = e[3]
    b1["attn"]["W_V"][:, 1, 0], b1["attn"]["W_O"][1, 0] = e[0] + e[1], e[3]
    s = {k: np.asarray(v) for k, v in composition_scores(to_params([b0, b1]), 2).items()}
    np.testing.assert_allclose(s["k_composition"][0, :, 0], [1.0, 0.6], atol=1e-6)
    np.testing.assert_allclose(s["q_composition"][0, :, 0], [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["v_composition"][0, :, 0], [0.0, 1 / np.sqrt(2)], atol=1e-6)
    for k in KEYS:                                               # zero head: guarded, not NaN
        np.testing.assert_array_equal(s[k][0, :, 1], 0.0)


def test_orthogonal_subspaces_give_zero():
    """Layer 0 writes only into span(e0, e1); layer 1 reads only from span(e2, e3)."""
    rng = np.random.default_rng(0)
    b0, b1 = random_block(rng), random_block(rng)
    b0["attn"]["W_O"][..., 2:] = 0
    for k in ("W_Q", "W_K", "W_V"):
        b1["attn"][k][:2] = 0
    s = composition_scores(to_params([b0, b1]), 2)
    for k in KEYS:
        np.testing.assert_allclose(s[k], 0.0, atol=1e-6)


def test_layer_norm_centring_removes_all_ones_direction():
    rng = np.random.default_rng(1)
    b0, b1 = random_block(rng, ln=True), random_block(rng, ln=True)
    b0["attn"]["W_O"] = rng.normal(size=(H, E, 1)) * np.ones(D)  # head writes only along 1
    s = composition_scores(to_params([b0, b1]), 2)
    for k in KEYS:
        np.testing.assert_allclose(s[k], 0.0, atol=1e-6)
    del b1["ln1"]
    s = composition_scores(to_params([b0, b1]), 2)
    for k in KEYS:
        assert np.all(np.asarray(s[k]) > 1e-2)


def test_shapes_empty_and_jit():
    rng = np.random.default_rng(2)
    params = to_params([random_block(rng, ln=True) for _ in range(3)])
    s = composition_scores(params, 3)
    assert set(s) == set(KEYS)
    assert all(v.shape == (2, H, H) for v in s.values())
    assert all(np.all((np.asarray(v) >= 0) & (np.asarray(v) <= 1 + 1e-6)) for v in s.values())
    assert composition_scores(to_params([random_block(rng)]), 1) == {}
    sj = jax.jit(composition_scores, static_argnums=1)(params, 3)
    for k in KEYS:
        np.testing.assert_allclose(sj[k], s[k], rtol=1e-5, atol=1e-6)


def reference(blocks, n_layers):
    """Elhage et al.'s scores with explicit loops; LayerNorm folded as C diag(g) on each input weight."""
    d = blocks[0]["attn"]["W_O"].shape[-1]
    C = np.eye(d) - np.ones((d, d)) / d
    fold = lambda b, W: C @ np.diag(b["ln1"]["scale"]) @ W if "ln1" in b else W
    score = lambda A, B, N: np.linalg.norm(A @ N) / (np.linalg.norm(A) * np.linalg.norm(B))
    h = blocks[0]["attn"]["W_O"].shape[0]
    out = {k: np.zeros((n_layers - 1, h, h)) for k in KEYS}
    b0 = blocks[0]
    for h1 in range(h):
        A = fold(b0, b0["attn"]["W_V"][:, h1]) @ b0["attn"]["W_O"][h1]
        for l in range(1, n_layers):
            b, a = blocks[l], blocks[l]["attn"]
            for h2 in range(h):
                qk = fold(b, a["W_Q"][:, h2]) @ fold(b, a["W_K"][:, h2]).T
                ov = fold(b, a["W_V"][:, h2]) @ a["W_O"][h2]
                out["q_composition"][l - 1, h2, h1] = score(A, qk, qk)
                out["k_composition"][l - 1, h2, h1] = score(A, qk, qk.T)
                out["v_composition"][l - 1, h2, h1] = score(A, ov, ov)
    return out


@pytest.mark.parametrize("ln", [True, False])
def test_matches_numpy_reference(ln):
    rng = np.random.default_rng(3)
    d, h, e, L = 8, 3, 2, 3
    blocks = [random_block(rng, d, h, e, ln) for _ in range(L)]
    s = composition_scores(to_params(blocks), L)
    ref = reference(blocks, L)
    for k in KEYS:
        np.testing.assert_allclose(s[k], ref[k], atol=1e-5)
