"""The model's CPU kernels: the fused softmax attention (a hand-written backward) and `dense`, each
written in the forms XLA:CPU's fast matmul library (YNNPACK) takes as they are (README, "Speed").
Pure JAX functions of arrays; the transformer (lab/model/transformer.py) calls them."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def causal_mask(T: int) -> jax.Array:
    return jnp.tril(jnp.ones((T, T), bool))


def context_mask(T: int) -> jax.Array:
    """(T, T) bool: every query position reads keys 0 .. T-2 (the context), none reads the last position
    (the query token). Von Oswald et al. (2022)'s linear self-attention: keys and values are the N context
    tokens for every token, so a context token also reads the ones after it. T = 3:
    [[1, 1, 0], [1, 1, 0], [1, 1, 0]]."""
    return jnp.ones((T, T), bool).at[:, -1].set(False)


def _bmm(a, b):
    """a @ b over two leading batch axes, (., ., M, K) x (., ., K, N) -> (., ., M, N). The attention
    core writes every product of T x T arrays in this form: the form XLA:CPU's fast matmul library
    (YNNPACK) takes as it is. Written as einsums, XLA chose forms that needed a T x T transpose per
    product (4 per layer and microbatch)."""
    return jax.lax.dot_general(a, b, (((3,), (2,)), ((0, 1), (0, 1))))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def softmax_attention(q, k, v, scale: float) -> jax.Array:
    """z = softmax(causal(q k^T * scale)) v for q, k, v of shape (batch, pos, head, d_head), with a
    hand-written backward pass. Used when no hook needs the scores or the pattern (training without
    attention clamps): it never forms the normalised pattern, dividing z by the softmax denominator
    instead, and its backward uses sum_k p dp = sum_e z dz (FlashAttention's identity) in place of a
    reduction over the (query, key) array. Same values and gradients as the hooked path up to
    rounding (tests/test_model.py); on CPU fewer passes over the largest arrays."""
    return _attention_fwd(q, k, v, scale)[0]


def _attention_fwd(q, k, v, scale):
    qh, kT, vh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)   # (b, h, ., .)
    causal = causal_mask(q.shape[1])
    # the scale inside the select: XLA:CPU runs a select with a multiply 3x faster than a bare one
    s = jnp.where(causal, _bmm(qh, kT) * scale, -1e30)
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))   # unnormalised pattern
    inv_l = (1.0 / e.sum(-1))[..., None]                                # (batch, head, query, 1)
    zh = _bmm(e, vh) * inv_l
    return zh.transpose(0, 2, 1, 3), (qh, kT, vh, e, inv_l, zh)


def _attention_bwd(scale, residuals, dz):
    qh, kT, vh, e, inv_l, zh = residuals
    dz_l = dz.transpose(0, 2, 1, 3) * inv_l                # folds the 1/l of p = e / l into dz
    dvT = _bmm(dz_l.transpose(0, 1, 3, 2), e)               # dv^T = dz^T p
    dp_l = _bmm(dz_l, vh.transpose(0, 1, 3, 2))             # d(pattern) / l
    row = (dz_l * zh).sum(-1, keepdims=True)               # sum_k p dp / l
    # e is 0 above the diagonal, so the select changes no value; it keeps XLA from fusing the
    # elementwise work into the product above, which YNNPACK then ran 2x slower
    ds = e * (jnp.where(causal_mask(e.shape[-1]), dp_l * scale, 0.0) - row * scale)
    dqh = _bmm(ds, kT.transpose(0, 1, 3, 2))
    dkT = _bmm(qh.transpose(0, 1, 3, 2), ds)                # dk^T = q^T ds
    return dqh.transpose(0, 2, 1, 3), dkT.transpose(0, 3, 1, 2), dvT.transpose(0, 3, 1, 2)


softmax_attention.defvjp(_attention_fwd, _attention_bwd)


@jax.custom_vjp
def dense(x, w):
    """x @ w over the last axis of x, for w of shape (K, N), with the weight gradient x^T g written
    as a row-major product; every weight product of the model outside the attention's per-head
    projections goes through it. From autodiff, XLA:CPU received x^T g as a product contracting x's
    first axis, which YNNPACK does not take, and ran it in a slower fallback (the unembedding's: 169
    against 75 us per microbatch on one core)."""
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(residuals, g):
    x, w = residuals
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    # the barrier makes XLA materialise x^T instead of folding the transpose back into the product
    xT, g2 = jax.lax.optimization_barrier((x2.T, g2))
    return g @ w.T, xT @ g2


dense.defvjp(_dense_fwd, _dense_bwd)
