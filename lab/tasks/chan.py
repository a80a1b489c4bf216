"""In-context vs in-weights learning (Chan et al. 2022, "Data distributional properties drive emergent
in-context learning in transformers").

A sequence is x_1 ℓ_1 … x_N ℓ_N x_q (the shared layout of lab/tasks/classification.py). There are
`n_classes` training classes, ranked 0..K-1 by a Zipf law P_k ∝ (k + 1)^-alpha (`zipf_alpha`; 0 is
uniform), and `n_heldout` held-out classes (ids K..K+n_heldout-1) never used in training. Every class
has `n_exemplars` fixed exemplars, x = (mu_k + eps*eta) / sqrt(1 + eps^2) with mu_k, eta ~ N(0, I/D),
fixed by `data_seed` (eps = `exemplar_noise`, D = `item_dim`; a numpy table, a constant of the
compiled step, at most 2^24 floats); each item of a sequence is one of
its class's exemplars, drawn uniformly with replacement. Training class k has the fixed label
k mod L (L = `n_labels`), so a label can be learned in weights.

Training sequences (the probe too):
  bursty (probability `p_bursty`): a few-shot problem in the context. m = N / B classes (B =
    `burst_size`) are drawn without replacement with Zipf weights (successive sampling); the first is
    the query's class. The context holds each of the m classes exactly B times, in a random order;
    the query is a further exemplar of its class. Labels are the classes' fixed labels.
  non-bursty: the N context classes and the query's class i.i.d. from the Zipf law.

Evaluation sets (`eval_sets`, logged as loss_/acc_/cla_/label_mass_<name>):
  icl       the bursty layout on held-out classes, m-way: m distinct labels drawn per sequence from the
            L labels and assigned to the m classes at random, so only the context tells the label.
            Chance accuracy among the context's labels is 1/m; `acc_icl_restricted` takes the argmax
            over those labels only (Chan et al.'s 2-way evaluation with the default N = 8, B = 4).
  iwl       the query's class is uniform over the `n_common` most frequent classes (Zipf ranks
            0..n_common-1); the context is i.i.d. Zipf over the training classes whose label differs
            from the query's (so neither the class nor its label is in the context); scored against
            the fixed label.
  iwl_rare  the same with the query's class among the `n_rare` least frequent classes.

Measures: the base class's (lab/tasks/classification.py) on the probe, plus `acc_icl_restricted`; the
per-head "induction" strength (and "tila", "tla") is measured on the icl set, where the query's label
can only come from the context (the probe's version is kept as "induction_train").

Defaults for a few minutes on 2 CPU cores: many classes (4096), D = 16 and alpha = 0.8, so that an
attention-only model cannot learn most classes in weights and in-context learning pays:
    lab-train task=chan model=singh train.steps=3000 train.progress=false
Measured (1 seed, about 2 minutes): acc_icl_restricted 0.93 (chance 0.5), acc_iwl 0.375 (chance 1/32),
acc_iwl_rare 0.008; with task.p_bursty=0: acc_icl_restricted 0.48, acc_iwl 0.996, acc_iwl_rare 0.07,
Chan et al.'s trade-off between in-context and in-weights learning.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError, positive
from lab.tasks.classification import (ClassBatch, ClassificationTask, build_sequence, check_layout, check_table_size,
                                      fixed_batches, fixed_exemplars, labels_in_context, query_label_attention,
                                      uniform_int, uniforms)


@dataclass
class Config(TaskConfig):
    """Chan et al. (2022): bursty, Zipf-distributed classes with fixed labels; ICL vs IWL."""
    name: str = "chan"
    seq_len: int = 17              # T = 2N + 1
    probe_size: int = 256          # probe and each evaluation set: accuracies to about ±3 %
    n_context: int = 8             # N: item-label pairs before the query (Chan: 8)
    burst_size: int = 4            # B: a bursty context holds N/B classes B times each (N/B = 2: 2-way)
    p_bursty: float = 0.9          # p_B: fraction of bursty training sequences
    zipf_alpha: float = 0.8        # alpha: training class k has frequency ∝ (k+1)^-alpha (Chan: 0..1+)
    n_classes: int = 4096          # K: training classes
    n_heldout: int = 64            # classes never used in training (icl evaluation)
    n_labels: int = 32             # L: training class k has label k mod L
    n_exemplars: int = 10          # fixed exemplars per class
    item_dim: int = 16             # D: exemplar dimension
    exemplar_noise: float = 0.5    # eps: within-class spread
    n_common: int = 16             # iwl: query classes among the n_common most frequent
    n_rare: int = 64               # iwl_rare: query classes among the n_rare least frequent
    data_seed: int = 0             # fixes exemplars


def validate(cfg) -> None:
    t = cfg.task
    positive("task.n_context", t.n_context)
    check_layout(cfg, t.n_context)
    positive("task.burst_size", t.burst_size)
    if t.n_context % t.burst_size:
        raise ConfigError(f"task.n_context={t.n_context} cannot hold bursts of task.burst_size={t.burst_size} "
                          "(a bursty context holds N/B classes B times each); make n_context a multiple of burst_size")
    m = t.n_context // t.burst_size
    if m < 2:
        raise ConfigError(f"task.burst_size={t.burst_size} leaves one class in a bursty context of "
                          f"task.n_context={t.n_context}; set burst_size <= {t.n_context // 2} (at least 2 classes)")
    if m > t.n_classes:
        raise ConfigError(f"task.n_classes={t.n_classes} is fewer than the {m} distinct classes of a bursty context "
                          f"(n_context / burst_size); raise task.n_classes or task.burst_size")
    if m > t.n_heldout:
        raise ConfigError(f"task.n_heldout={t.n_heldout} is fewer than the {m} held-out classes an icl sequence needs "
                          "(n_context / burst_size); raise task.n_heldout")
    if m > t.n_labels:
        raise ConfigError(f"task.n_labels={t.n_labels} cannot give the {m} classes of an icl sequence distinct labels; "
                          f"set task.n_labels >= {m}")
    if not 0.0 <= t.p_bursty <= 1.0:
        raise ConfigError(f"task.p_bursty={t.p_bursty} is a probability; set it in [0, 1]")
    if t.zipf_alpha < 0:
        raise ConfigError(f"task.zipf_alpha={t.zipf_alpha} must be >= 0 (0: uniform class frequencies)")
    positive("task.n_exemplars", t.n_exemplars)
    positive("task.item_dim", t.item_dim)
    check_table_size("task.n_classes", t.n_classes + t.n_heldout, t.n_exemplars, t.item_dim)
    if t.exemplar_noise < 0:
        raise ConfigError(f"task.exemplar_noise={t.exemplar_noise} must be >= 0")
    for key in ("n_common", "n_rare"):
        if not 1 <= t[key] <= t.n_classes:
            raise ConfigError(f"task.{key}={t[key]} must be in [1, task.n_classes={t.n_classes}]")


def restricted_accuracy(logits: jax.Array, batch: ClassBatch, n_labels: int) -> jax.Array:
    """Accuracy of the query's argmax taken over the labels present in the context only (Chan et al.
    2022's m-way evaluation): mean_b [argmax_{l in context_b} logits[b, -1, l] == query_label_b].
    Chance is 1/m for m distinct context labels."""
    present = labels_in_context(batch, n_labels)                                      # (B, L)
    masked = jnp.where(present, logits[:, -1], -jnp.inf)
    return (jnp.argmax(masked, -1) == batch.query_label).mean()


@dataclass(frozen=True)
class ChanTask(ClassificationTask):
    name = "chan"

    seq_len: int
    n_context: int
    burst_size: int
    p_bursty: float
    zipf_alpha: float
    n_classes: int
    n_heldout: int
    n_labels: int
    n_exemplars: int
    item_dim: int
    exemplar_noise: float
    n_common: int
    n_rare: int
    data_seed: int
    probe_size: int
    probe_seed: int

    @cached_property
    def exemplars(self) -> np.ndarray:
        """(n_classes + n_heldout, n_exemplars, item_dim); held-out classes are the last ids."""
        return fixed_exemplars(self.data_seed, self.n_classes + self.n_heldout, self.n_exemplars,
                               self.item_dim, self.exemplar_noise)

    @cached_property
    def zipf_logp(self) -> np.ndarray:
        """(n_classes,) log P_k, P_k ∝ (k + 1)^-alpha."""
        logw = -self.zipf_alpha * np.log(np.arange(1, self.n_classes + 1))
        return (logw - np.log(np.exp(logw - logw.max()).sum()) - logw.max()).astype(np.float32)

    @property
    def class_labels(self) -> np.ndarray:
        """(n_classes,) the fixed label of each training class: k mod L."""
        return (np.arange(self.n_classes) % self.n_labels).astype(np.int32)

    @property
    def n_bursty_classes(self) -> int:
        return self.n_context // self.burst_size

    # ---- sampling (every random choice of a sequence comes from one uniform draw) ----
    def _items(self, u_ex, ctx_classes, q_class):
        """Context and query items: uniform exemplars (with replacement) of the given classes."""
        ex = jnp.asarray(self.exemplars)
        idx = uniform_int(u_ex, self.n_exemplars)                      # (N + 1,)
        return ex[ctx_classes, idx[:-1]], ex[q_class, idx[-1]]

    def _bursty_slots(self, u_order):
        """(N,) class slot of each context pair: each of the m slots B times, shuffled."""
        return jnp.repeat(jnp.arange(self.n_bursty_classes), self.burst_size)[jnp.argsort(u_order)]

    @staticmethod
    def _draw(u, weights):
        """Classes drawn with probability ∝ weights by inverse CDF, one per U[0, 1) number in u."""
        cdf = jnp.cumsum(weights)
        return jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1], side="right"), weights.shape[0] - 1).astype(jnp.int32)

    def _sample_train(self, key) -> ClassBatch:
        N, m = self.n_context, self.n_bursty_classes
        u_b, u_top, u_order, u_iid, u_ex = uniforms(key, (), (m,), (N,), (N + 1,), (N + 1,))
        p = jnp.exp(jnp.asarray(self.zipf_logp))
        # bursty: m classes by successive Zipf sampling (each ∝ P among those not drawn yet); the first
        # is the query's
        top, w = [], p
        for i in range(m):
            c = self._draw(u_top[i], w)
            top.append(c)
            w = w.at[c].set(0.0)
        top = jnp.stack(top)
        bursty_ctx = top[self._bursty_slots(u_order)]
        # non-bursty: context and query i.i.d. Zipf
        iid = self._draw(u_iid, p)
        bursty = u_b < self.p_bursty
        ctx, q = jnp.where(bursty, bursty_ctx, iid[:N]), jnp.where(bursty, top[0], iid[N])
        items, q_item = self._items(u_ex, ctx, q)
        labels = jnp.asarray(self.class_labels)
        return build_sequence(items, labels[ctx], ctx, q_item, labels[q], q, self.n_labels)

    def _sample_icl(self, key) -> ClassBatch:
        N, m = self.n_context, self.n_bursty_classes
        u_cls, u_lab, u_order, u_ex = uniforms(key, (self.n_heldout,), (self.n_labels,), (N,), (N + 1,))
        classes = self.n_classes + jnp.argsort(u_cls)[:m]             # m distinct held-out classes
        labels = jnp.argsort(u_lab)[:m]                                # their labels in this sequence
        slots = self._bursty_slots(u_order)
        items, q_item = self._items(u_ex, classes[slots], classes[0])
        return build_sequence(items, labels[slots], classes[slots], q_item, labels[0], classes[0], self.n_labels)

    def _sample_iwl(self, key, lo: int, hi: int) -> ClassBatch:
        """Query class uniform in ranks [lo, hi); context i.i.d. Zipf over classes with another label."""
        N = self.n_context
        u_q, u_ctx, u_ex = uniforms(key, (), (N,), (N + 1,))
        labels = jnp.asarray(self.class_labels)
        q = lo + uniform_int(u_q, hi - lo)
        ctx = self._draw(u_ctx, jnp.where(labels == labels[q], 0.0, jnp.exp(jnp.asarray(self.zipf_logp))))
        items, q_item = self._items(u_ex, ctx, q)
        return build_sequence(items, labels[ctx], ctx, q_item, labels[q], q, self.n_labels)

    @staticmethod
    def _batched(one):
        return lambda key, batch_size: jax.vmap(one)(jax.random.split(key, batch_size))

    def sample(self, key: jax.Array, batch_size: int) -> ClassBatch:
        return self._batched(self._sample_train)(key, batch_size)

    @cached_property
    def _eval_batches(self) -> dict:
        K = self.n_classes
        return fixed_batches(self, {
            "icl": (1, self._batched(self._sample_icl)),
            "iwl": (2, self._batched(lambda k: self._sample_iwl(k, 0, self.n_common))),
            "iwl_rare": (3, self._batched(lambda k: self._sample_iwl(k, K - self.n_rare, K)))})

    def eval_sets(self) -> dict:
        """Fixed batches of probe_size sequences: icl, iwl, iwl_rare (see the module docstring)."""
        return dict(self._eval_batches)

    # ---- measures ----
    def measures(self, model, params, probe, forward, measures_cfg, snapshot: bool) -> dict:
        out = super().measures(model, params, probe, forward, measures_cfg, snapshot)
        names = tuple(f"blocks.{l}.attn.pattern" for l in range(model.n_layers))
        icl = self.eval_sets()["icl"]
        logits, cache = forward(icl, names)
        out["acc_icl_restricted"] = restricted_accuracy(logits, icl, self.n_labels)
        per = [query_label_attention(cache[n], icl) for n in names]
        out["induction_train"] = out["induction"]
        out["induction"] = jnp.stack([p[2] for p in per])
        out["tila"] = jnp.stack([p[0] for p in per])
        out["tla"] = jnp.stack([p[1] for p in per])
        return out


Task = ChanTask
