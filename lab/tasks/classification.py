"""In-context classification, shared by Reddy (2024), Singh et al. (2024) and Chan et al. (2022):
what a sequence looks like, the loss at the query, and the progress measures on it.

A sequence is x_1 ℓ_1 x_2 ℓ_2 … x_N ℓ_N x_q (T = 2N + 1). Items x are continuous vectors (the batch's
`features`, token id `item_id`); labels ℓ are token ids 0..L-1 (no features). The model reads out
L logits at the query, and only the query's label is scored. A task module builds its items and labels
and calls `build_sequence`; this module needs nothing else from it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core import ConfigError
from lab.measures.heads import attention_measures
from lab.tasks.base import Task


MAX_TABLE = 2 ** 24          # floats in an exemplar table (64 MB), a constant of the compiled step


def fixed_exemplars(seed: int, n_classes: int, n_exemplars: int, dim: int, noise: float) -> np.ndarray:
    """(n_classes, n_exemplars, dim) float32, drawn once from `seed` (numpy): exemplar j of class k is
    x = (mu_k + eps*eta_kj) / sqrt(1 + eps^2), mu_k, eta_kj ~ N(0, I/D) (Reddy 2024's item recipe)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1 / math.sqrt(dim), (n_classes, 1, dim))
    eta = rng.normal(0, 1 / math.sqrt(dim), (n_classes, n_exemplars, dim))
    return ((mu + noise * eta) / math.sqrt(1 + noise ** 2)).astype(np.float32)


def check_table_size(key: str, n_classes: int, n_exemplars: int, dim: int) -> None:
    """The exemplar table is a constant of the compiled step; keep it to MAX_TABLE floats."""
    if n_classes * n_exemplars * dim > MAX_TABLE:
        raise ConfigError(f"{key}: the exemplar table ({n_classes} classes x {n_exemplars} exemplars x {dim} dims) "
                          f"exceeds {MAX_TABLE} floats; lower the classes, exemplars or task.item_dim")


def uniforms(key: jax.Array, *shapes) -> list:
    """Arrays of U[0, 1) numbers of the given shapes from ONE draw: every random choice of a sequence
    is derived from these, which keeps the sampler's compiled program small (each jax.random call is
    a separate unrolled hash)."""
    sizes = [math.prod(s) for s in shapes]
    u = jax.random.uniform(key, (sum(sizes),))
    starts = np.cumsum([0] + sizes)
    return [u[i:i + n].reshape(s) for i, n, s in zip(starts, sizes, shapes)]


def uniform_int(u: jax.Array, n) -> jax.Array:
    """Integers uniform in [0, n) from U[0, 1) numbers u."""
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


class ClassBatch(NamedTuple):
    tokens: jax.Array           # (B, T) int32: label ids at label positions, item_id at items and the query
    features: jax.Array         # (B, T, F) float32: the item vectors (zero at label positions)
    context_labels: jax.Array   # (B, N) int32
    context_classes: jax.Array  # (B, N) int32: class ids (novel classes get ids >= the number of classes)
    query_label: jax.Array      # (B,) int32: the label the query is scored against
    query_class: jax.Array      # (B,) int32


def build_sequence(items, labels, classes, query, query_label, query_class, n_labels: int) -> ClassBatch:
    """Interleave one sequence: items (N, F), labels (N,), classes (N,), query (F,) -> ClassBatch row."""
    N, F = items.shape
    feats = jnp.zeros((2 * N + 1, F), items.dtype)
    feats = feats.at[0:2 * N:2].set(items).at[2 * N].set(query)
    tokens = jnp.full((2 * N + 1,), n_labels, jnp.int32).at[1:2 * N:2].set(labels.astype(jnp.int32))
    return ClassBatch(tokens, feats, labels.astype(jnp.int32), classes.astype(jnp.int32),
                      jnp.asarray(query_label, jnp.int32), jnp.asarray(query_class, jnp.int32))


def check_layout(cfg, n_context: int) -> None:
    """task.seq_len must be 2N + 1 for N context pairs."""
    if cfg.task.seq_len != 2 * n_context + 1:
        raise ConfigError(f"task.seq_len={cfg.task.seq_len} does not fit {n_context} item-label pairs and a query; "
                          f"set task.seq_len={2 * n_context + 1} (= 2N + 1)")


# ---- measures: pure functions of (logits or patterns, batch) ----

def query_loss_and_accuracy(logits: jax.Array, batch: ClassBatch) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy and top-1 accuracy of the query's logits (last position) against query_label."""
    q = logits[:, -1]
    loss = optax.softmax_cross_entropy_with_integer_labels(q, batch.query_label).mean()
    return loss, (jnp.argmax(q, -1) == batch.query_label).mean()


def labels_in_context(batch: ClassBatch, n_labels: int) -> jax.Array:
    """(B, L) bool: which labels occur among each sequence's context labels."""
    return jax.nn.one_hot(batch.context_labels, n_labels).max(axis=1) > 0


def fixed_batches(task, samplers: dict) -> dict:
    """name -> (offset, sample_fn): each sampled once, concretely, with key PRNGKey(probe_seed + offset)
    and probe_size sequences, in one compiled call, even when first asked for inside a jit trace; the
    measures then see constants instead of tracing the samplers. Tasks build their eval_sets() with it."""
    def draw():
        return {name: fn(jax.random.PRNGKey(task.probe_seed + offset), task.probe_size)
                for name, (offset, fn) in samplers.items()}
    with jax.ensure_compile_time_eval():
        return jax.jit(draw)() if samplers else {}


def context_label_measures(logits: jax.Array, batch: ClassBatch, n_labels: int) -> tuple[jax.Array, jax.Array]:
    """CLA (Reddy 2024): the fraction of queries whose predicted label is one of the labels in the
    context; and the probability mass the query's softmax puts on the in-context labels."""
    present = labels_in_context(batch, n_labels)
    pred = jnp.argmax(logits[:, -1], -1)
    cla = jnp.take_along_axis(present, pred[:, None], axis=1)[:, 0].mean()
    mass = jnp.sum(jax.nn.softmax(logits[:, -1], -1) * present, -1).mean()
    return cla, mass


def label_positions(n_context: int) -> jax.Array:
    return jnp.arange(n_context) * 2 + 1


def item_label_attention(pattern: jax.Array) -> jax.Array:
    """ILA (Reddy 2024, ILA1 in layer 1): per head, the mean attention of each label token ℓ_i to its
    own item x_i (the position before it). pattern (B, H, T, T) -> (H,)."""
    n = (pattern.shape[-1] - 1) // 2
    lab = label_positions(n)
    return pattern[:, :, lab, lab - 1].mean(axis=(0, 2))


def query_label_attention(pattern: jax.Array, batch: ClassBatch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per head, from the query (last position) to the label tokens, (H,) each:
    TILA (Reddy: TILA2 in layer 2) = attention mass on the labels of the query's class, averaged over
    queries whose class is in the context; TLA (TLA2) = attention mass on all label tokens;
    induction strength (Singh et al. 2024) = mass on label tokens equal to the query's label minus
    mass on the other label tokens (1 for an ideal induction head; with two pairs, correct minus
    incorrect as in Singh et al.)."""
    n = batch.context_labels.shape[1]
    att = pattern[:, :, -1, label_positions(n)]                                   # (B, H, N)
    same_class = (batch.context_classes == batch.query_class[:, None])[:, None]  # (B, 1, N)
    has_class = same_class.any(-1)                                               # (B, 1)
    tila = jnp.sum(jnp.where(has_class, jnp.sum(att * same_class, -1), 0.0), 0) / jnp.maximum(has_class.sum(), 1)
    tla = att.sum(-1).mean(0)
    correct = (batch.context_labels == batch.query_label[:, None])[:, None]
    strength = (jnp.sum(att * correct, -1) - jnp.sum(att * ~correct, -1)).mean(0)
    return tila, tla, strength


class ClassificationTask(Task):
    """Base for in-context classification tasks. Subclasses provide `n_labels`, `n_context`,
    `item_dim`, `sample`, and `eval_sets()` (name -> fixed batch)."""

    main_metric, main_accuracy, main_metric_label = "loss_query", "acc_query", "query loss"

    @property
    def feature_dim(self) -> int:
        return self.item_dim

    @property
    def model_vocab_size(self) -> int:
        return self.n_labels + 1          # the labels, and one id marking items and the query

    @property
    def n_outputs(self) -> int:
        return self.n_labels

    @property
    def chance_loss(self) -> float:
        return math.log(self.n_labels)

    def loss(self, logits, batch: ClassBatch):
        return query_loss_and_accuracy(logits, batch)[0]

    def main_scores(self, logits, batch: ClassBatch):
        return query_loss_and_accuracy(logits, batch)

    trajectory_kind = "query's log-probabilities over the outputs"

    def trajectory_outputs(self, logits, batch: ClassBatch):
        """The query's log-probabilities over every output (only the query is predicted)."""
        return jax.nn.log_softmax(logits[:, -1]).reshape(-1)

    def eval_sets(self) -> dict:
        return {}

    def measures(self, model, params, probe, forward, measures_cfg, snapshot: bool) -> dict:
        logits, _, heads = attention_measures(forward, probe, model.n_layers, snapshot, {
            "induction": lambda p: query_label_attention(p, probe)[2],
            "tila": lambda p: query_label_attention(p, probe)[0],
            "tla": lambda p: query_label_attention(p, probe)[1],
            "ila": item_label_attention})
        out = {}
        out["loss_query"], out["acc_query"] = query_loss_and_accuracy(logits, probe)
        out["cla"], out["label_mass"] = context_label_measures(logits, probe, self.n_labels)
        out["loss"] = out["loss_query"]
        for name, batch in self.eval_sets().items():
            lg, _ = forward(batch, ())
            out[f"loss_{name}"], out[f"acc_{name}"] = query_loss_and_accuracy(lg, batch)
            out[f"cla_{name}"], out[f"label_mass_{name}"] = context_label_measures(lg, batch, self.n_labels)
        out.update(heads)
        return out

    def induction_attention(self, batch: ClassBatch):
        """The query attends evenly to the label tokens equal to its label; other rows have no target."""
        B, N = batch.context_labels.shape
        T = 2 * N + 1
        correct = (batch.context_labels == batch.query_label[:, None]).astype(jnp.float32)   # (B, N)
        w = correct / jnp.maximum(correct.sum(-1, keepdims=True), 1)
        weights = jnp.zeros((B, T, T)).at[:, -1, label_positions(N)].set(w)
        rows = jnp.zeros((B, T), bool).at[:, -1].set(correct.sum(-1) > 0)
        return weights, rows

    def copy_keys(self, batch: ClassBatch) -> jax.Array:
        """The label tokens: a copy reads out which context label the query attends to (Singh et al.'s
        copy clamp sets the logits from the head's scores at the label positions only)."""
        B, N = batch.context_labels.shape
        return jnp.zeros((B, 2 * N + 1), bool).at[:, label_positions(N)].set(True)

    def snapshot_info(self, probe) -> dict:
        return {"tokens": probe.tokens[0]}
