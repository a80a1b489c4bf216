"""Composition scores between attention heads of different layers (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"), computed from the weights alone."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _fold_ln(block: dict, W: jax.Array) -> jax.Array:
    """C diag(g) W for a (D, ...) input weight read through the block's ln1 (identity without ln1).
    The model's only norm is LayerNorm (centre, divide by the RMS, gain, bias): the RMS division is a
    scalar per token, which the normalised scores ignore, and the bias does not depend on the token."""
    if "ln1" not in block:
        return W
    gW = block["ln1"]["scale"].reshape((-1,) + (1,) * (W.ndim - 1)) * W
    return gW - gW.mean(0, keepdims=True)           # C M = M minus its mean over the D input rows


def _fro(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))


def composition_scores(params: dict, n_layers: int) -> dict[str, jax.Array]:
    """Q-, K- and V-composition of every head h2 of layer l2 >= 1 with every head h1 of layer 0.

    Row-vector convention (x @ W). Head h1's OV circuit A = W_V^{h1} W_O^{h1} (D x D): it writes x A.
    Head h2 has W_QK = W_Q W_K^T (score x_q W_QK x_k^T) and W_OV = W_V W_O. Then
        Q: ||A W_QK||_F / (||A||_F ||W_QK||_F)     (x_q = y A: score = y A W_QK x_k^T)
        K: ||A W_QK^T||_F / (||A||_F ||W_QK||_F)   (x_k = y A: score = x_q W_QK A^T y^T, ||W_QK A^T|| = ||A W_QK^T||)
        V: ||A W_OV||_F / (||A||_F ||W_OV||_F)     (h2 reads y A and writes y A W_OV)
    which is TransformerLens' convention and Elhage's column-convention formulas, transposed.

    LayerNorm is folded in as centring C = I - 11^T/D and gain g (its RMS division is a per-token
    scalar that the normalised scores ignore; its bias does not depend on the token): each head reads
    through its own layer's ln1, so A = C diag(g_0) W_V W_O, and h2's W_Q, W_K and W_V become
    C diag(g_l2) W_Q etc. Without ln1 nothing is folded.

    Range [0, 1]. Random weights give a nonzero baseline: about 1/sqrt(D) for independent Gaussian
    weights (checked numerically, any d_head); compare against the scores at initialisation.

    Returns {"q_composition", "k_composition", "v_composition"}, each (L-1, H, H) indexed
    [l2 - 1, h2, h1]; an empty dict when n_layers < 2. Pure and jit-able."""
    if n_layers < 2:
        return {}
    b0 = params["blocks"][0]
    A = jnp.einsum("dhe,hef->hdf", _fold_ln(b0, b0["attn"]["W_V"]), b0["attn"]["W_O"])    # (H1, D, D)
    nA = _fro(A)
    tiny = jnp.finfo(A.dtype).tiny
    out = {"q_composition": [], "k_composition": [], "v_composition": []}
    for l in range(1, n_layers):
        block, attn = params["blocks"][l], params["blocks"][l]["attn"]
        Q, K, V = (_fold_ln(block, attn[k]) for k in ("W_Q", "W_K", "W_V"))
        qk = jnp.einsum("dhe,fhe->hdf", Q, K)                                            # (H2, D, D)
        ov = jnp.einsum("dhe,hef->hdf", V, attn["W_O"])                                  # (H2, D, D)
        for key, B, eq in [("q_composition", qk, "idf,jfg->jidg"),
                           ("k_composition", qk, "idf,jgf->jidg"),                       # A @ B^T
                           ("v_composition", ov, "idf,jfg->jidg")]:
            num = _fro(jnp.einsum(eq, A, B))                                             # (H2, H1)
            out[key].append(num / jnp.maximum(_fro(B)[:, None], tiny) / jnp.maximum(nA[None, :], tiny))
    return {k: jnp.stack(v) for k, v in out.items()}
