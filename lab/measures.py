"""Progress measures: pure functions of (params, cache, batch, logits), evaluated inside jit on
the fixed probe batch every `log_every` steps, for every layer and head.

Conventions: `pattern` is (B, H, Tq, Tk); `loss_by_pos[i]` is the loss of predicting token i+1
from position i. Per-head results are (L, H) arrays.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lab.tasks.base import masked_mean, token_losses


def repeat_loss_and_accuracy(logits: jax.Array, batch):
    """Loss and top-1 accuracy on the tokens that induction can predict (second and later copies)."""
    mask = batch.repeat_target[:, :-1]
    loss = masked_mean(token_losses(logits, batch.tokens), mask)
    correct = jnp.argmax(logits[:, :-1], -1) == batch.tokens[:, 1:]
    return loss, masked_mean(correct.astype(jnp.float32), mask)


def icl_positions(seq_len: int, early=None, late=None) -> tuple[int, int]:
    """Olsson et al. compare token 500 with token 50 of a 512-token context; scale to seq_len."""
    early = max(0, round(seq_len * 50 / 512) - 1) if early is None else early
    late = min(seq_len - 2, round(seq_len * 500 / 512) - 1) if late is None else late
    return early, late


def icl_score(loss_by_pos: jax.Array, early: int, late: int) -> jax.Array:
    """In-context-learning score (Olsson et al. 2022): loss at a late token minus at an early token.
    Negative means later tokens are predicted better, i.e. the model uses its context."""
    return loss_by_pos[late] - loss_by_pos[early]


def induction_score(pattern: jax.Array, batch) -> jax.Array:
    """Per head: mean attention from query i (a repeated token) to key prev_occ(i) + 1, the token after
    the previous occurrence of the current token (Olsson et al. 2022), over positions where that
    next token is a repeat. A perfect induction head scores 1. Returns (H,)."""
    target = jnp.clip(batch.induction_target, 0)                       # (B, T)
    att = jnp.take_along_axis(pattern, target[:, None, :, None], axis=-1)[..., 0]  # (B, H, T)
    mask = batch.repeat_target[:, None, :]
    return jnp.sum(jnp.where(mask, att, 0.0), axis=(0, 2)) / jnp.maximum(jnp.sum(mask), 1)


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


def probe_measures(model, params: dict, probe, icl_early: int, icl_late: int,
                   exclude_bos: bool, snapshot: bool = True, forward=None) -> dict[str, jax.Array]:
    """Every measure of one seed's model on the probe batch: scalars, (T-1,) and (L, H) arrays.
    `forward(cache_names) -> (logits, cache)` replaces the plain forward pass (e.g. with clamps)."""
    names = tuple(f"blocks.{l}.attn.pattern" for l in range(model.n_layers))
    forward = forward or (lambda cache_names: model.apply(params, probe, cache_names=cache_names))
    logits, cache = forward(names)
    losses = token_losses(logits, probe.tokens)
    loss_by_pos = losses.mean(0)
    loss_rep, acc_rep = repeat_loss_and_accuracy(logits, probe)
    patterns = [cache[n] for n in names]
    prev = [prev_token_scores(p) for p in patterns]
    out = {
        "loss": losses.mean(),
        "loss_repeat": loss_rep,
        "acc_repeat": acc_rep,
        "icl_score": icl_score(loss_by_pos, icl_early, icl_late),
        "loss_by_pos": loss_by_pos,
        "induction": jnp.stack([induction_score(p, probe) for p in patterns]),
        "prev_token": jnp.stack([p[0] for p in prev]),
        "prev_token_corrected": jnp.stack([p[1] for p in prev]),
        "copying": jnp.stack([copying_score(params, l, exclude_bos) for l in range(model.n_layers)]),
    }
    if snapshot:
        out["attention"] = jnp.stack([p[0] for p in patterns])             # (L, H, T, T), probe 0
    return out
