"""Bigram data with trigger tokens (Bietti, Cabannes, Bouchacourt, Jégou & Bottou 2023, "Birth of a
transformer: a memory viewpoint").

A global bigram model over N tokens is drawn once per task from `bigram_seed`: rows
π_b(. | i) ~ Dirichlet(β·1), and π its stationary distribution. K trigger tokens q_1..q_K are drawn
once from the same seed, without replacement with probabilities ∝ π (Bietti et al. sample triggers
from the unigram distribution; here they are fixed for the task, not redrawn per sequence). In
every sequence each trigger q_k gets an output token o_k, drawn uniformly from the N - K non-trigger
tokens, independently for each k and fixed within the sequence. Then
    x_0 ~ π;   x_{t+1} = o_k if x_t = q_k,   else x_{t+1} ~ π_b(. | x_t).
The token after a trigger is unpredictable from the weights (best: uniform over the non-triggers,
loss ln(N - K)) at its first occurrence, and predictable by induction (copy the token after the
previous occurrence of the same trigger, loss 0) from the second occurrence on; the other tokens
follow the global bigram, which the model can only store in its weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError
from lab.measures.heads import attention_measures, copying_scores, induction_recent_score, induction_score
from lab.measures.losses import icl_positions, icl_score, masked_mean, token_losses
from lab.tasks.base import Task as BaseTask, TrainedCheck


@dataclass
class Config(TaskConfig):
    """Global bigram data in which K trigger tokens are followed by a per-sequence output token."""
    name: str = "triggers"
    seq_len: int = 64           # T, tokens per sequence (no BOS)
    vocab_size: int = 32        # N, token ids 0..N-1
    n_triggers: int = 4         # K, trigger tokens q_1..q_K (fixed per task, drawn from bigram_seed)
    bigram_alpha: float = 0.5   # β: global bigram rows π_b(. | i) ~ Dirichlet(β·1); small β, peaked rows
    bigram_seed: int = 0        # seed of the global bigram and of the trigger tokens


def validate(cfg) -> None:
    t = cfg.task
    if t.vocab_size < 2:
        raise ConfigError(f"task.vocab_size={t.vocab_size} must be >= 2")
    if not 1 <= t.n_triggers < t.vocab_size:
        raise ConfigError(f"task.n_triggers={t.n_triggers} must be in [1, task.vocab_size - 1 = {t.vocab_size - 1}] "
                          "(outputs are drawn from the non-trigger tokens)")
    if t.vocab_size - t.n_triggers < 2:
        raise ConfigError(f"task.vocab_size={t.vocab_size} with task.n_triggers={t.n_triggers} leaves one non-trigger "
                          "token, so every trigger's output is that token, predictable without the context (nothing "
                          f"for an induction head to do); set task.vocab_size >= {t.n_triggers + 2} or lower n_triggers")
    if not t.bigram_alpha > 0:
        raise ConfigError(f"task.bigram_alpha={t.bigram_alpha} must be > 0 (the Dirichlet concentration)")
    if t.seq_len < 4:
        raise ConfigError(f"task.seq_len={t.seq_len} is too short for a trigger to occur twice with its output; "
                          "use seq_len >= 4")


class TriggerBatch(NamedTuple):
    tokens: jax.Array         # (B, T) int32
    prev_occ: jax.Array       # (B, T) previous position of the same trigger token, -1 if none (or not a trigger)
    repeat_target: jax.Array  # (B, T) bool: x_i is a trigger seen before and i+1 < T (x_{i+1} predictable in context)
    first_trigger: jax.Array  # (B, T) bool: x_i is a trigger's first occurrence and i+1 < T
    is_trigger: jax.Array     # (B, T) bool: x_i is a trigger token
    outputs: jax.Array        # (B, K) the sequence's output token o_k of each trigger q_k

    @property
    def induction_target(self) -> jax.Array:
        """(B, T) the key an ideal induction head attends to from query i: prev_occ + 1 (holds o_k)."""
        return jnp.where(self.prev_occ >= 0, self.prev_occ + 1, -1)


def stationary(P: np.ndarray) -> np.ndarray:
    """π with π P = π, Σ π = 1: the solution of (I - Pᵀ + 1 1ᵀ) π = 1."""
    n = len(P)
    pi = np.clip(np.linalg.solve(np.eye(n) - P.T + 1.0, np.ones(n)), 0, None)
    return pi / pi.sum()


@lru_cache(maxsize=32)
def global_model(vocab_size: int, n_triggers: int, bigram_alpha: float, bigram_seed: int):
    """(π_b (N, N), π (N,), triggers (K,) sorted ids), all numpy, fixed by the seed."""
    rng = np.random.default_rng(bigram_seed)
    bigram = rng.dirichlet(np.full(vocab_size, bigram_alpha), size=vocab_size)
    bigram = np.maximum(bigram, 1e-12)
    bigram /= bigram.sum(1, keepdims=True)
    pi = stationary(bigram)
    # K draws without replacement, probabilities ∝ π: the K largest log π + Gumbel noise
    keys = np.log(np.maximum(pi, 1e-30)) + rng.gumbel(size=vocab_size)
    triggers = np.sort(np.argsort(-keys)[:n_triggers])
    return bigram, pi, triggers


# ----------------------------------------------------------------------------- measures (pure)


def previous_occurrence(tokens: jax.Array) -> jax.Array:
    """(B, T) the largest j < i with x_j = x_i, or -1 if x_i has not occurred before."""
    T = tokens.shape[-1]
    j, i = jnp.arange(T)[None, :], jnp.arange(T)[:, None]
    same = (tokens[..., :, None] == tokens[..., None, :]) & (j < i)
    return jnp.max(jnp.where(same, j, -1), -1)


def masked_loss_and_accuracy(logits: jax.Array, tokens: jax.Array, mask: jax.Array):
    """Mean next-token loss -log q_i(x_{i+1}) and top-1 accuracy over the positions i with mask[i]."""
    m = mask[:, :-1]
    correct = (jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:]).astype(jnp.float32)
    return masked_mean(token_losses(logits, tokens), m), masked_mean(correct, m)


def bigram_oracle_losses(tokens: jax.Array, bigram: jax.Array) -> jax.Array:
    """(B, T-1) -log π_b(x_{i+1} | x_i) under the true global bigram: the floor for the model's loss
    on non-trigger positions (Bietti et al.'s global bigram, learned in the weights)."""
    return -jnp.log(bigram[tokens[:, :-1], tokens[:, 1:]])


# ----------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class TriggersTask(BaseTask):
    name = "triggers"
    main_metric, main_accuracy, main_metric_label = "loss_trigger", "acc_trigger", "loss after repeated triggers"
    logs_icl_score = True

    seq_len: int
    vocab_size: int
    n_triggers: int
    bigram_alpha: float
    bigram_seed: int
    probe_size: int
    probe_seed: int

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size

    def trained_check(self) -> TrainedCheck:
        """The whole next-token `loss` against ln N: the main metric (after repeated triggers) stays near
        ln(N - K), close to chance, until the induction head forms, while the model learns the global
        bigram early; that fall is what "trained at all" means here."""
        return TrainedCheck("loss", self.chance_loss, self.chance_text, 0.95 * self.chance_loss)

    @property
    def no_context_loss(self) -> float:
        """ln(N - K): the best loss after a trigger without the context (uniform over the outputs)."""
        return math.log(self.vocab_size - self.n_triggers)

    def global_model(self):
        return global_model(self.vocab_size, self.n_triggers, float(self.bigram_alpha), self.bigram_seed)

    @property
    def triggers(self) -> np.ndarray:
        return self.global_model()[2]

    def _sample_one(self, key: jax.Array) -> TriggerBatch:
        N, K, T = self.vocab_size, self.n_triggers, self.seq_len
        bigram, pi, triggers = self.global_model()
        non_triggers = np.setdiff1d(np.arange(N), triggers)
        trigger_index = np.full(N, -1, np.int32)
        trigger_index[triggers] = np.arange(K)
        cum, trigger_index = jnp.asarray(np.cumsum(bigram, 1), jnp.float32), jnp.asarray(trigger_index)
        k_out, k_0, k_u = jax.random.split(key, 3)
        outputs = jnp.asarray(non_triggers, jnp.int32)[jax.random.randint(k_out, (K,), 0, N - K)]
        x0 = jax.random.categorical(k_0, jnp.log(jnp.asarray(pi, jnp.float32))).astype(jnp.int32)

        def step(x, u):
            drawn = jnp.minimum(jnp.sum(cum[x] <= u), N - 1).astype(jnp.int32)   # inverse CDF of π_b(. | x)
            k = trigger_index[x]
            nxt = jnp.where(k >= 0, outputs[jnp.maximum(k, 0)], drawn)
            return nxt, nxt

        _, rest = jax.lax.scan(step, x0, jax.random.uniform(k_u, (T - 1,)))
        tokens = jnp.concatenate([x0[None], rest])
        is_trigger = trigger_index[tokens] >= 0
        prev = jnp.where(is_trigger, previous_occurrence(tokens[None])[0], -1)
        has_next = jnp.arange(T) < T - 1
        return TriggerBatch(tokens, prev, (prev >= 0) & has_next, is_trigger & (prev < 0) & has_next,
                            is_trigger, outputs)

    def sample(self, key: jax.Array, batch_size: int) -> TriggerBatch:
        return jax.vmap(self._sample_one)(jax.random.split(key, batch_size))

    def main_scores(self, logits, batch: TriggerBatch):
        return masked_loss_and_accuracy(logits, batch.tokens, batch.repeat_target)

    def induction_attention(self, batch: TriggerBatch) -> tuple[jax.Array, jax.Array]:
        """One-hot on prev_occ + 1, the output token that followed the previous occurrence of the
        query's trigger; rows: repeated triggers."""
        target = batch.induction_target
        rows = target >= 0
        return jax.nn.one_hot(jnp.where(rows, target, 0), self.seq_len) * rows[..., None], rows

    def measures(self, model, params, probe: TriggerBatch, forward, measures_cfg, snapshot: bool) -> dict:
        logits, _, heads = attention_measures(forward, probe, model.n_layers, snapshot,
                                              {"induction": lambda p: induction_score(p, probe),
                                               "induction_recent": lambda p: induction_recent_score(p, probe)})
        tokens = probe.tokens
        losses = token_losses(logits, tokens)
        loss_by_pos = losses.mean(0)
        non_trigger = ~probe.is_trigger & (jnp.arange(self.seq_len) < self.seq_len - 1)
        loss_rep, acc_rep = self.main_scores(logits, probe)
        loss_first, acc_first = masked_loss_and_accuracy(logits, tokens, probe.first_trigger)
        loss_bg, acc_bg = masked_loss_and_accuracy(logits, tokens, non_trigger)
        bigram = jnp.asarray(self.global_model()[0], jnp.float32)
        early, late = icl_positions(self.seq_len, measures_cfg.icl_early, measures_cfg.icl_late)
        out = {
            "loss": losses.mean(),
            "loss_trigger": loss_rep,
            "acc_trigger": acc_rep,
            "loss_trigger_first": loss_first,
            "acc_trigger_first": acc_first,
            "loss_non_trigger": loss_bg,
            "acc_non_trigger": acc_bg,
            "loss_non_trigger_oracle": masked_mean(bigram_oracle_losses(tokens, bigram), non_trigger[:, :-1]),
            "icl_score": icl_score(loss_by_pos, early, late),
            "loss_by_pos": loss_by_pos,
            **heads,
            "copying": copying_scores(params, model.n_layers),
        }
        return out


Task = TriggersTask
