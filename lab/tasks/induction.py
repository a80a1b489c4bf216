"""Repeated random tokens (Olsson et al. 2022) with a repeat of random length and start.

Each sequence is [BOS] + uniform random tokens, in which a segment S of length n, starting at
position `start`, is repeated `n_repeats` times back to back: tokens[start + c*n + j] = S[j]; with n_repeats null the
segment is tiled to the end of the sequence (at least two copies). n ~ U{min_repeat_len..max_repeat_len}
and start ~ U{first..seq_len - copies*n} are drawn per sequence, because with a fixed offset a model can copy by position instead of forming the
previous-token + induction circuit (Olsson et al. 2022; measured for this lab in README, "What the default experiment is").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lab.config.schema import TaskConfig
from lab.core import ConfigError, positive
from lab.measures.heads import attention_measures, copying_scores, induction_recent_score, induction_score
from lab.measures.losses import icl_positions, icl_score, repeat_loss_and_accuracy, token_losses
from lab.tasks.base import Task as BaseTask


@dataclass
class Config(TaskConfig):
    """Repeated random tokens: a segment of random length n, at a random start, repeated."""
    name: str = "induction"
    vocab_size: int = 64       # random tokens are drawn from [0, vocab_size); BOS is an extra id
    bos: bool = True
    min_repeat_len: int = 4    # n ~ U{min_repeat_len, max_repeat_len}, drawn per sequence
    max_repeat_len: int = 24
    n_repeats: Optional[int] = None  # copies of the segment in a row; null: tile it to the end of the sequence


def validate(cfg) -> None:
    t = cfg.task
    positive("task.vocab_size", t.vocab_size)
    if t.vocab_size < 2:
        raise ConfigError(f"task.vocab_size={t.vocab_size} gives every random token the same id: there is nothing to "
                          f"predict (chance loss ln {t.vocab_size} = 0); set task.vocab_size >= {max(2, t.min_repeat_len)}")
    if t.vocab_size < t.min_repeat_len:
        raise ConfigError(f"task.vocab_size={t.vocab_size} is smaller than task.min_repeat_len={t.min_repeat_len}: every "
                          "repeated segment then holds some token twice, so no token's previous occurrence tells an "
                          f"induction head what comes next; set task.vocab_size >= {t.min_repeat_len} or lower min_repeat_len")
    copies = 2 if t.n_repeats is None else t.n_repeats
    if copies < 2:
        raise ConfigError(f"task.n_repeats={t.n_repeats} must be >= 2 (a segment and at least one repeat)")
    if not 1 <= t.min_repeat_len <= t.max_repeat_len:
        raise ConfigError(f"task.min_repeat_len={t.min_repeat_len}, task.max_repeat_len={t.max_repeat_len}: "
                          "need 1 <= min_repeat_len <= max_repeat_len")
    room = t.seq_len - int(t.bos)
    if copies * t.max_repeat_len > room:
        raise ConfigError(f"task.seq_len={t.seq_len} cannot hold {copies} copies of "
                          f"task.max_repeat_len={t.max_repeat_len} tokens{' after BOS' if t.bos else ''}; "
                          f"raise seq_len to >= {copies * t.max_repeat_len + int(t.bos)} or lower max_repeat_len")


class TokenBatch(NamedTuple):
    tokens: jax.Array        # (B, T) int32
    prev_occ: jax.Array      # (B, T) position of the same token one copy earlier, -1 if none
    repeat_target: jax.Array # (B, T) bool: the token at i+1 is predictable by induction from i
    repeat_start: jax.Array  # (B,)
    repeat_len: jax.Array    # (B,)

    @property
    def induction_target(self) -> jax.Array:
        """(B, T) the key position an ideal induction head attends to from query i: prev_occ + 1."""
        return jnp.where(self.prev_occ >= 0, self.prev_occ + 1, -1)


@dataclass(frozen=True)
class InductionTask(BaseTask):
    name = "induction"
    main_metric, main_accuracy, main_metric_label = "loss_repeat", "acc_repeat", "loss on repeated part"
    logs_icl_score = True

    seq_len: int
    vocab_size: int
    bos: bool
    min_repeat_len: int
    max_repeat_len: int
    n_repeats: Optional[int]
    probe_size: int
    probe_seed: int

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + int(self.bos)   # BOS is the extra id `vocab_size`

    @property
    def n_outputs(self) -> int:
        return self.model_vocab_size

    @property
    def chance_loss(self) -> float:
        return math.log(self.vocab_size)

    @property
    def chance_text(self) -> str:
        return f"ln {self.vocab_size}"

    def _sample_one(self, key: jax.Array) -> TokenBatch:
        T = self.seq_len
        k_tok, k_len, k_start = jax.random.split(key, 3)
        tokens = jax.random.randint(k_tok, (T,), 0, self.vocab_size, dtype=jnp.int32)
        n = jax.random.randint(k_len, (), self.min_repeat_len, self.max_repeat_len + 1)
        first = int(self.bos)
        start = jax.random.randint(k_start, (), first, T - (self.n_repeats or 2) * n + 1)
        span = T - start if self.n_repeats is None else self.n_repeats * n
        pos = jnp.arange(T)
        rel = pos - start
        in_span = (rel >= 0) & (rel < span)
        tokens = jnp.where(in_span, tokens[start + jnp.where(in_span, rel % n, 0)], tokens)
        if self.bos:
            tokens = tokens.at[0].set(self.vocab_size)
        later_copy = in_span & (rel >= n)
        prev_occ = jnp.where(later_copy, pos - n, -1)
        # i+1 must still lie in the span, else the next token is fresh noise
        repeat_target = later_copy & (rel + 1 < span)
        return TokenBatch(tokens, prev_occ, repeat_target, start, n)

    def sample(self, key: jax.Array, batch_size: int) -> TokenBatch:
        return jax.vmap(self._sample_one)(jax.random.split(key, batch_size))

    def induction_attention(self, batch: TokenBatch) -> tuple[jax.Array, jax.Array]:
        """Where an ideal induction head attends: (B, T, T) weights over keys (one-hot on the token
        after the previous occurrence of the query's token) and the (B, T) rows that have such a key.
        Clamps build ideal induction patterns from this, so every task defines its own."""
        target = batch.induction_target
        rows = target >= 0
        return jax.nn.one_hot(jnp.where(rows, target, 0), self.seq_len) * rows[..., None], rows

    def main_scores(self, logits, batch: TokenBatch):
        return repeat_loss_and_accuracy(logits, batch)

    def measures(self, model, params, probe: TokenBatch, forward, measures_cfg, snapshot: bool) -> dict:
        logits, _, heads = attention_measures(forward, probe, model.n_layers, snapshot,
                                              {"induction": lambda p: induction_score(p, probe),
                                               "induction_recent": lambda p: induction_recent_score(p, probe)})
        losses = token_losses(logits, probe.tokens)
        loss_by_pos = losses.mean(0)
        loss_rep, acc_rep = repeat_loss_and_accuracy(logits, probe)
        early, late = icl_positions(self.seq_len, measures_cfg.icl_early, measures_cfg.icl_late)
        return {"loss": losses.mean(), "loss_repeat": loss_rep, "acc_repeat": acc_rep,
                "icl_score": icl_score(loss_by_pos, early, late), "loss_by_pos": loss_by_pos, **heads,
                "copying": copying_scores(params, model.n_layers, exclude_last_token=self.bos)}

    def snapshot_info(self, probe: TokenBatch) -> dict:
        start, n = int(probe.repeat_start[0]), int(probe.repeat_len[0])
        copies = self.n_repeats or -(-(self.seq_len - start) // n)
        return {"tokens": probe.tokens[0], "repeat_start": start, "repeat_len": n, "n_repeats": copies}


Task = InductionTask
