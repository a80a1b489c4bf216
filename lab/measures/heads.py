"""Per-head progress measures: pure functions evaluated inside jit on the fixed probe batch every
`log_every` steps, for every layer and head, and `attention_measures`, the one helper every task's
`measures` calls.

Conventions: `pattern` is (B, H, Tq, Tk); per-head results are (H,) per layer, stacked to (L, H).

A *generic* per-head measure (one that every task logs, computed from a layer's attention pattern) is
one function here, registered with `@head_measure("<metric key>")`; `attention_measures` then logs it
for every task, and the plots pick it up by shape. Task-specific per-head measures (each task's own
`induction` score, Reddy's `tila`, ...) are passed to `attention_measures` as `task_heads`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# metric key -> fn(pattern (B, H, T, T), batch) -> (H,): logged for every layer by every task
HEAD_MEASURES: dict[str, Callable] = {}


def head_measure(key: str):
    """Register a generic per-head measure under its metrics.jsonl key."""
    def register(fn: Callable) -> Callable:
        HEAD_MEASURES[key] = fn
        return fn
    return register


def earlier_occurrence_keys(tokens: jax.Array) -> jax.Array:
    """(B, T, T) bool S[i, j] = 1 <= j <= i and x_{j-1} = x_i: the keys right after *every* earlier
    occurrence of the query's token (Olsson et al.'s prefix matching, TransformerLens' induction
    detector, Edelman et al.'s statistical induction targets)."""
    T = tokens.shape[-1]
    prev = jnp.concatenate([jnp.full_like(tokens[..., :1], -1), tokens[..., :-1]], -1)   # x_{j-1}, -1 at j=0
    j, i = jnp.arange(T)[None, :], jnp.arange(T)[:, None]
    return (prev[..., None, :] == tokens[..., :, None]) & (j <= i)


def _repeat_query_mean(per_query: jax.Array, batch) -> jax.Array:
    """(B, H, T) -> (H,): the mean over the repeat queries (batch.repeat_target)."""
    mask = batch.repeat_target[:, None, :]
    return jnp.sum(jnp.where(mask, per_query, 0.0), axis=(0, 2)) / jnp.maximum(jnp.sum(mask), 1)


def induction_score(pattern: jax.Array, batch) -> jax.Array:
    """Per head: mean over repeat queries i (batch.repeat_target: the next token is predictable by
    copying) of sum_{j in S_i} A[i, j], the attention mass on the tokens that followed any earlier
    occurrence of the current token (S_i: earlier_occurrence_keys). This is Olsson et al.'s
    prefix-matching score and TransformerLens' induction detector: when a segment is repeated
    several times, an induction head spreads its attention over every earlier copy, and all of it
    counts. A perfect induction head scores 1. Returns (H,)."""
    keys = earlier_occurrence_keys(batch.tokens)                                   # (B, T, T)
    return _repeat_query_mean(jnp.sum(jnp.where(keys[:, None], pattern, 0.0), -1), batch)


def induction_recent_score(pattern: jax.Array, batch) -> jax.Array:
    """Per head: mean attention from repeat query i to the single key prev_occ(i) + 1, the token after
    the *most recent* earlier copy (batch.induction_target), over the same queries as
    induction_score. Equals induction_score when the segment occurs twice; with more copies it
    undercounts a head that spreads over all of them. Returns (H,)."""
    target = jnp.clip(batch.induction_target, 0)                       # (B, T)
    return _repeat_query_mean(jnp.take_along_axis(pattern, target[:, None, :, None], axis=-1)[..., 0], batch)


def prev_token_scores(pattern: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per head, over queries i >= 1: raw a_i = attention from i to i-1, and Singh et al.'s
    baseline-corrected a_i - (1 - a_i)/i, which is 0 for uniform causal attention (a_i = 1/(i+1))
    and 1 for a perfect previous-token head. Returns two (H,) arrays."""
    T = pattern.shape[-1]
    a = jnp.diagonal(pattern, offset=-1, axis1=-2, axis2=-1)           # (B, H, T-1): a_i for i=1..T-1
    i = jnp.arange(1, T)
    return a.mean(axis=(0, 2)), (a - (1 - a) / i).mean(axis=(0, 2))


def _layer_norm_gain(params: dict, name: str, D: int) -> jax.Array:
    return params[name]["scale"] if name in params else jnp.ones(D)


def _center(x: jax.Array) -> jax.Array:
    return x - x.mean(-1, keepdims=True)


def copying_score(params: dict, layer: int, exclude_last_token: bool = False) -> jax.Array:
    """Per head, from the direct OV path M = LN(W_E) W_V^h W_O^h LN_final W_U (vocab x vocab, LayerNorm
    folded in as centring and gain; biases excluded since they do not depend on the attended token):
    the mean over tokens t of the fraction of other tokens s with M[t, s] < M[t, t] (ties count half).
    1: attending to t always raises t's logit above every other; 0.5: no copying; 0: anti-copying.
    `exclude_last_token` drops a special token (BOS) from the vocabulary compared. Returns (H,)."""
    W_E, W_U = params["W_E"], params["W_U"]
    if exclude_last_token:
        W_E, W_U = W_E[:-1], W_U[:, :-1]
    D = W_E.shape[1]
    block = params["blocks"][layer]
    x = _center(W_E) * _layer_norm_gain(block, "ln1", D) if "ln1" in block else W_E
    attn = block["attn"]
    ov = jnp.einsum("td,dhe,hef->htf", x, attn["W_V"], attn["W_O"])       # (H, V, D)
    if "ln_final" in params:
        ov = _center(ov) * params["ln_final"]["scale"]
    M = ov @ W_U                                                          # (H, V, V)
    diag = jnp.diagonal(M, axis1=-2, axis2=-1)[..., None]
    V = M.shape[-1]
    below = jnp.sum(M < diag, -1) + 0.5 * (jnp.sum(M == diag, -1) - 1)
    return jnp.mean(below / (V - 1), axis=-1)


@head_measure("prev_token")
def prev_token_score(pattern: jax.Array, batch=None) -> jax.Array:
    """Per head: mean attention from query i to key i - 1 over i >= 1 (raw; see prev_token_scores)."""
    return prev_token_scores(pattern)[0]


@head_measure("prev_token_corrected")
def prev_token_corrected_score(pattern: jax.Array, batch=None) -> jax.Array:
    """Per head: Singh et al.'s baseline-corrected previous-token score (see prev_token_scores)."""
    return prev_token_scores(pattern)[1]


def copying_scores(params: dict, n_layers: int, exclude_last_token: bool = False) -> jax.Array:
    """(L, H) copying scores of every layer (see copying_score)."""
    return jnp.stack([copying_score(params, l, exclude_last_token) for l in range(n_layers)])


def pattern_sites(n_layers: int) -> tuple[str, ...]:
    """The hook sites of every layer's attention pattern."""
    return tuple(f"blocks.{l}.attn.pattern" for l in range(n_layers))


def per_head(patterns: list, fns: dict) -> dict:
    """{key: (L, H)} from one (H,)-valued fn(pattern) per key, applied to each layer's pattern."""
    return {key: jnp.stack([fn(p) for p in patterns]) for key, fn in fns.items()}


def attention_measures(forward, batch, n_layers: int, snapshot: bool, task_heads: dict = None):
    """The per-head block every task logs: run `forward(batch, pattern sites)`, then every registered
    generic measure (HEAD_MEASURES) and the task's own `task_heads` ({key: fn(pattern) -> (H,)}) on
    each layer's pattern, and with `snapshot` batch item 0's attention (L, H, T, T) under "attention".
    Returns (logits, patterns, {key: array}) so the task can add its scalar measures."""
    logits, cache = forward(batch, pattern_sites(n_layers))
    patterns = [cache[s] for s in pattern_sites(n_layers)]
    generic = {key: (lambda p, fn=fn: fn(p, batch)) for key, fn in HEAD_MEASURES.items()}
    out = per_head(patterns, {**(task_heads or {}), **generic})
    if snapshot:
        out["attention"] = jnp.stack([p[0] for p in patterns])
    return logits, patterns, out
