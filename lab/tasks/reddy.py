"""In-context classification of Gaussian-mixture items (Reddy 2024, "The mechanistic basis of data
dependence and abrupt learning in an in-context classification task").

K classes (paper: K) with means μ_k ~ N(0, I/D), drawn once from `data_seed`, so every training seed
and the probe see the same classes. Class k carries label k mod L. An item of class k is
x = (μ_k + ε·η)/√(1 + ε²), η ~ N(0, I/D), drawn afresh for every occurrence. Classes are drawn with
Zipf frequencies P_k ∝ k^−α (rank k = 1..K). A sequence is x_1 ℓ_1 … x_N ℓ_N x_q (T = 2N + 1,
layout in lab/tasks/classification.py) and only the query's label is scored.

  - bursty (probability p_B, only when B > 0): N/B distinct classes, drawn from P without
    replacement, each B times in a shuffled context; the query's class is one of them (uniform);
  - otherwise: the N context classes and the query class are i.i.d. from P (the query is usually
    absent from the context when K is large);
  - novel (probability p_C): the sequence's classes are fresh draws μ ~ N(0, I/D) made for this
    sequence only, with labels drawn uniformly from L (two fresh classes may share a label; with
    `distinct_labels`, never, and the known classes of a bursty context have distinct labels too, as
    in Reddy's data code: N/B labels drawn without replacement, then a class of each label). Novel
    sequences are always bursty (with B, or `eval_burstiness` when B = 0), since a query of a fresh
    class can only be answered from the context. Novel class ids are K + j.

Fixed evaluation sets (sampled from fixed keys like the probe, via `eval_sets()`), all with
`eval_burstiness` B_eval (default N/2) where bursty:
  - `ic`:  novel classes, bursty: only in-context learning can solve it;
  - `ic2`: known classes, bursty, every label (context and query) shifted ℓ → (ℓ + 1) mod L and scored
           against the shifted label: in-context learning must override what the weights memorised;
  - `iw`:  i.i.d. context from P, scored against the query class's true label: in-weights learning.
The probe (loss_query, the head measures) is the training distribution.

Deviations from the paper, on purpose: labels are token ids with learned embeddings (W_E) rather
than Reddy's fixed random label vectors of N(0, I/D); positions are the model's positional embedding
rather than a one-hot code with a random shift; bursty classes are drawn without replacement (so a
bursty context has exactly N/B classes). See configs/model/reddy.yaml for the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError
from lab.measures.losses import masked_mean
from lab.tasks.classification import (ClassBatch, ClassificationTask, build_sequence, check_layout, fixed_batches,
                                      item_label_attention, labels_in_context, query_label_attention, uniform_int)
from lab.tasks.base import TrainedCheck


@dataclass
class Config(TaskConfig):
    """Reddy (2024)'s in-context classification task; paper notation in the comments."""
    name: str = "reddy"
    seq_len: int = 17                       # T = 2N + 1
    n_classes: int = 2048                   # K: classes (Gaussian means); K % L == 0
    n_labels: int = 32                      # L: labels; class k has label k mod L
    n_context: int = 8                      # N: item-label pairs before the query
    item_dim: int = 63                      # D: item dimension
    noise: float = 0.1                      # ε: within-class noise
    zipf_alpha: float = 0.0                 # α: class frequencies P_k ∝ k^−α
    burstiness: int = 4                     # B: copies of each class in a bursty context (0: no bursty sequences)
    p_bursty: float = 1.0                   # p_B: fraction of bursty sequences
    p_novel: float = 0.0                    # p_C: fraction of sequences with novel (fresh) classes
    eval_burstiness: Optional[int] = None   # B of the ic/ic2 sets (and novel sequences when B = 0); null: N/2
    data_seed: int = 0                      # seed of the class means μ_k (fixed across training seeds)
    distinct_labels: bool = False           # bursty and novel contexts: classes with distinct labels (Reddy's no_repeats)


def _uniform(key, shape) -> jax.Array:
    """Uniform in (0, 1): never exactly 0, so logarithms stay finite."""
    return jax.random.uniform(key, shape, minval=float(np.finfo(np.float32).tiny), maxval=1.0)


def _normal(u: jax.Array) -> jax.Array:
    """Standard normals from two uniform arrays u[0], u[1] (Box-Muller)."""
    return jnp.sqrt(-2.0 * jnp.log(u[0])) * jnp.cos(2.0 * math.pi * u[1])


def _b_eval(t) -> int:
    return t.n_context // 2 if t.eval_burstiness is None else t.eval_burstiness


def validate(cfg) -> None:
    t = cfg.task
    for key in ("n_classes", "n_labels", "n_context", "item_dim"):
        if t[key] is None or t[key] <= 0:
            raise ConfigError(f"task.{key}={t[key]!r} must be positive")
    if t.n_labels < 2:
        raise ConfigError(f"task.n_labels={t.n_labels} gives every class the same label: there is nothing to predict "
                          "(chance loss ln 1 = 0); set task.n_labels >= 2")
    if t.n_classes % t.n_labels:
        raise ConfigError(f"task.n_classes={t.n_classes} (K) is not a multiple of task.n_labels={t.n_labels} (L); "
                          "class k has label k mod L, so K % L == 0 keeps labels balanced: change one of them")
    for key in ("p_bursty", "p_novel"):
        if not 0.0 <= t[key] <= 1.0:
            raise ConfigError(f"task.{key}={t[key]} is a probability; set it in [0, 1]")
    if t.noise < 0:
        raise ConfigError(f"task.noise={t.noise} (ε) must be >= 0")
    if t.zipf_alpha < 0:
        raise ConfigError(f"task.zipf_alpha={t.zipf_alpha} (α) must be >= 0")
    N = t.n_context
    if t.burstiness < 0:
        raise ConfigError(f"task.burstiness={t.burstiness} (B) must be >= 0 (0: no bursty sequences)")
    if t.eval_burstiness is not None and not 0 < t.eval_burstiness < N:
        raise ConfigError(f"task.eval_burstiness={t.eval_burstiness} must be in [1, N-1] = [1, {N - 1}] so that "
                          "the ic sets hold at least two classes (or null for N/2)")
    for key, B in (("burstiness", t.burstiness), ("eval_burstiness", _b_eval(t))):
        if B == 0 and key == "eval_burstiness":
            raise ConfigError(f"task.eval_burstiness=null means N/2 = 0 for task.n_context={N}; "
                              "raise n_context to >= 2")
        if B and N % B:
            raise ConfigError(f"task.{key}={B} does not divide task.n_context={N}: N/B is not an integer; "
                              f"choose B among the divisors of {N}")
        if B and N // B > t.n_classes:
            raise ConfigError(f"task.{key}={B} asks for N/B={N // B} classes in context but only "
                              f"task.n_classes={t.n_classes} exist; raise B or n_classes")
        if B and t.distinct_labels and N // B > t.n_labels:
            raise ConfigError(f"task.distinct_labels=true needs N/B={N // B} distinct labels per context "
                              f"(task.{key}={B}) but task.n_labels={t.n_labels}; raise B or n_labels")
    check_layout(cfg, N)


def in_context_choice(logits: jax.Array, batch: ClassBatch, n_labels: int) -> tuple[jax.Array, jax.Array]:
    """Which of the in-context labels the query gets: the query's softmax renormalised over the labels
    present in the context, loss = −log[p(ℓ_q) / Σ_{ℓ in context} p(ℓ)], and accuracy of the argmax over
    those labels; both averaged over sequences whose query label is in the context. With M distinct
    labels in context, ln M (ln 2 on the default ic set) until the model matches the query to its item,
    then 0: it isolates the induction step of Reddy (2024)'s transition from the earlier, gradual
    learning to predict *some* in-context label (CLA, label mass). (Our measure; Reddy reports IC
    accuracy and CLA.)"""
    present = labels_in_context(batch, n_labels)                                      # (B, L)
    logp = jax.nn.log_softmax(jnp.where(present, logits[:, -1], -1e30), -1)
    nll = -jnp.take_along_axis(logp, batch.query_label[:, None], 1)[:, 0]
    has = jnp.take_along_axis(present, batch.query_label[:, None], 1)[:, 0]
    correct = (jnp.argmax(logp, -1) == batch.query_label).astype(jnp.float32)
    return masked_mean(nll, has), masked_mean(correct, has)


@dataclass(frozen=True)
class ReddyTask(ClassificationTask):
    name = "reddy"
    # The main metric is the in-context-choice loss on the ic set (novel classes): near ln(N/B_eval)
    # until the abrupt transition, then ~0 (`in_context_choice`). loss_ic and acc_ic (the paper's IC
    # accuracy, also logged) move in two stages (first to "some in-context label", then the jump),
    # which a single sigmoid fits badly.
    main_metric, main_accuracy = "loss_ic_ctx", "acc_ic_ctx"
    main_metric_label = "IC loss among in-context labels (novel classes)"
    head_scores = {"induction": "induction", "prev_token": "prev_token_corrected", "tila": "tila", "ila": "ila"}

    seq_len: int
    n_classes: int
    n_labels: int
    n_context: int
    item_dim: int
    noise: float
    zipf_alpha: float
    burstiness: int
    p_bursty: float
    p_novel: float
    eval_burstiness: Optional[int]
    data_seed: int
    probe_size: int
    distinct_labels: bool
    probe_seed: int

    # ---- fixed data: computed once, as concrete arrays, even when first asked for inside a trace ----
    @cached_property
    def class_means(self) -> np.ndarray:
        """(K, D) μ_k ~ N(0, I/D) from `data_seed`."""
        with jax.ensure_compile_time_eval():
            mu = _normal(_uniform(jax.random.PRNGKey(self.data_seed), (2, self.n_classes, self.item_dim)))
            return np.asarray(mu / math.sqrt(self.item_dim), np.float32)

    @cached_property
    def class_log_probs(self) -> np.ndarray:
        """(K,) log P_k with P_k ∝ k^−α over ranks k = 1..K."""
        logits = -self.zipf_alpha * np.log(np.arange(1, self.n_classes + 1, dtype=np.float64))
        return (logits - np.logaddexp.reduce(logits)).astype(np.float32)

    @property
    def chance_loss(self) -> float:
        """Of the main metric: a uniform guess among the N/B_eval classes of an ic context."""
        return math.log(self.n_context // self.b_eval)

    @property
    def chance_text(self) -> str:
        return f"ln {self.n_context // self.b_eval}"

    def trained_check(self) -> TrainedCheck:
        """The query loss on the training distribution (`loss_query`) against ln L: the main metric stays at
        ln(N/B) until in-context learning arrives, while in-weights learning lowers the query loss."""
        chance = math.log(self.n_labels)
        return TrainedCheck("loss_query", chance, f"ln {self.n_labels}", 0.95 * chance)

    def main_scores(self, logits, batch: ClassBatch):
        """(loss, accuracy) of `in_context_choice` on any batch: the main metric's kind."""
        return in_context_choice(logits, batch, self.n_labels)

    @property
    def b_eval(self) -> int:
        return self.n_context // 2 if self.eval_burstiness is None else self.eval_burstiness

    # ---- sampling ----
    # All of a batch's randomness comes from one jax.random.uniform draw (threefry, and the inverse-erf
    # of jax.random.normal, are slow to compile on CPU, and each call compiles its own copy); the rest
    # is arithmetic on it: inverse-CDF sampling from P, Gumbel top-k for classes without replacement,
    # argsort for shuffles, Box-Muller for the normals.
    @cached_property
    def class_cdf(self) -> np.ndarray:
        return np.cumsum(np.exp(self.class_log_probs.astype(np.float64))).astype(np.float32)

    def _n_uniform(self) -> int:
        N = self.n_context
        extra = self.n_labels if self.distinct_labels else 0                # (the default's stream is unchanged)
        return (N + 1) + self.n_classes + (N + 1) + 1 + (N + 1) + N + 1 + extra   # the pieces of u in _sequence

    def _sequence(self, u, z, p_bursty: float, p_novel: float, B: int, B_novel: int, shift: int) -> ClassBatch:
        """One sequence from uniforms u (_n_uniform(),) in (0, 1) and normals z (N + 1 + N, D).
        B = 0: no known-class bursty sequences; `shift` adds to every label (mod L)."""
        N, K, L, D = self.n_context, self.n_classes, self.n_labels, self.item_dim
        cuts = np.cumsum([N + 1, K, N + 1, 1, N + 1, N, 1])
        u_iid, u_gumbel, u_slots, u_bursty, u_novel_slots, u_fresh_labels, u_novel, u_labels = np.split(u, cuts)

        def slots(v, B_):   # a bursty layout: tile(0..N/B-1, B) shuffled, then the query's slot
            n_cls = N // B_
            ctx = jnp.tile(jnp.arange(n_cls), B_)[jnp.argsort(v[:N])]
            return jnp.append(ctx, uniform_int(v[N], n_cls))

        # i.i.d. context and query from P (inverse CDF)
        cdf = jnp.asarray(self.class_cdf)
        classes = jnp.minimum(jnp.searchsorted(cdf, u_iid, side="right", method="compare_all"), K - 1).astype(jnp.int32)
        if B > 0:    # bursty: N/B distinct classes from P (Gumbel top-k: sampling without replacement)
            gumbel = -jnp.log(-jnp.log(u_gumbel))
            top = (self._distinct_label_classes(gumbel, u_labels, N // B) if self.distinct_labels
                   else jax.lax.top_k(jnp.asarray(self.class_log_probs) + gumbel, N // B)[1])
            classes = jnp.where(u_bursty[0] < p_bursty, top[slots(u_slots, B)], classes)
        means = jnp.asarray(self.class_means)[classes]
        labels = classes % L
        eta = z[:N + 1] / math.sqrt(D)
        if not isinstance(p_novel, (int, float)) or p_novel > 0:   # fresh classes for this sequence only, random labels, bursty with B_novel
            n_new = N // B_novel
            new_slots = slots(u_novel_slots, B_novel)
            fresh = z[N + 1:N + 1 + n_new] / math.sqrt(D)
            fresh_labels = (jnp.argsort(u_labels)[:n_new].astype(jnp.int32) if self.distinct_labels
                            else uniform_int(u_fresh_labels[:n_new], L))
            novel = u_novel[0] < p_novel
            classes = jnp.where(novel, K + new_slots, classes)
            means = jnp.where(novel, fresh[new_slots], means)
            labels = jnp.where(novel, fresh_labels[new_slots], labels)
        items = (means + self.noise * eta) / math.sqrt(1 + self.noise ** 2)
        labels = (labels + shift) % L
        return build_sequence(items[:N], labels[:N], classes[:N], items[N], labels[N], classes[N], L)

    def _distinct_label_classes(self, gumbel, u_labels, n: int) -> jax.Array:
        """n distinct classes with distinct labels, drawn like n classes without replacement from P
        conditioned on distinct labels: labels by Gumbel top-k on their total mass, then one class
        per label (class k = ℓ + L·j has label ℓ) by Gumbel max within the label's classes."""
        K, L = self.n_classes, self.n_labels
        lp = jnp.asarray(self.class_log_probs).reshape(K // L, L)           # [j, ℓ] = class j·L + ℓ
        labels = jax.lax.top_k(jax.nn.logsumexp(lp, axis=0) - jnp.log(-jnp.log(u_labels)), n)[1]
        j = jnp.argmax(lp + gumbel.reshape(K // L, L), axis=0)              # a class of every label
        return labels + L * j[labels]

    def _sampler(self, p_bursty: float, p_novel: float, B: int, B_novel: int, shift: int = 0):
        def sample(key, batch_size: int) -> ClassBatch:
            n, rows, D = self._n_uniform(), 2 * self.n_context + 1, self.item_dim
            u = _uniform(key, (batch_size, n + 2 * rows * D))
            z = _normal(u[:, n:].reshape(batch_size, 2, rows, D).swapaxes(0, 1))
            u = u[:, :n]
            one = lambda u1, z1: self._sequence(u1, z1, p_bursty, p_novel, B, B_novel, shift)
            return jax.vmap(one)(u, z)
        return sample

    def sample(self, key: jax.Array, batch_size: int) -> ClassBatch:
        """The training distribution (module docstring)."""
        B_novel = self.burstiness or self.b_eval
        p_bursty = self.p_bursty if self.burstiness > 0 else 0.0
        return self._sampler(p_bursty, self.p_novel, self.burstiness, B_novel)(key, batch_size)

    @cached_property
    def _eval_sets(self) -> dict:
        Be = self.b_eval

        @partial(jax.jit, static_argnums=1)   # one program for the three sets: their differences are traced
        def draw(key, size, p_bursty, p_novel, shift):
            return self._sampler(p_bursty, p_novel, Be, Be, shift)(key, size)

        kinds = {"ic": (1.0, 1.0, 0),     # novel classes, bursty
                 "ic2": (1.0, 0.0, 1),    # known classes, bursty, every label + 1
                 "iw": (0.0, 0.0, 0)}     # i.i.d. from P (the bursty draw is made but never chosen)
        return jax.device_get(fixed_batches(self, {name: (i + 1, lambda key, size, kind=kind: draw(key, size, *kind))
                                                   for i, (name, kind) in enumerate(kinds.items())}))

    def eval_sets(self) -> dict:
        """Fixed batches of probe_size sequences from keys probe_seed + 1, 2, 3: ic, ic2, iw."""
        return self._eval_sets

    # ---- measures ----
    def measures(self, model, params, probe, forward, measures_cfg, snapshot: bool) -> dict:
        """The shared classification measures (per-head arrays on the probe), loss_ic_ctx / acc_ic_ctx
        (`in_context_choice` on the ic set), and Reddy's scalar progress measures on the ic set (bursty,
        so defined whatever the training B; on a B = 0 probe the query's class is almost never in context):
        ila1 = max over layer-1 heads of ILA (label token → its own item); tila2 / tla2 = max over
        layer-2 heads of TILA (query → labels of its class) and TLA (query → all labels).
        (Layers counted from 1 as in the paper: index 0 and 1 here.)"""
        out = super().measures(model, params, probe, forward, measures_cfg, snapshot)
        ic = self.eval_sets()["ic"]
        first, second = "blocks.0.attn.pattern", f"blocks.{min(1, model.n_layers - 1)}.attn.pattern"
        logits, cache = forward(ic, tuple(dict.fromkeys((first, second))))
        out["loss_ic_ctx"], out["acc_ic_ctx"] = in_context_choice(logits, ic, self.n_labels)
        tila, tla, _ = query_label_attention(cache[second], ic)
        out["ila1"] = jnp.max(item_label_attention(cache[first]))
        out["tila2"], out["tla2"] = jnp.max(tila), jnp.max(tla)
        return out


Task = ReddyTask
