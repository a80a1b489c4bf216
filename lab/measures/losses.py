"""Token-level losses and scores shared by the tasks and the measures: next-token cross-entropy,
masked means, the loss and accuracy on the repeated part, and Olsson et al.'s in-context-learning
score. Pure JAX functions of arrays."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_losses(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """(B, T-1) next-token cross-entropy: position i predicts token i+1."""
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


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
