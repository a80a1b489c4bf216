"""Exemplar–label relabelling (Singh et al. 2024, "What needs to go right for an induction head?").

A sequence is x_1 y_1 … x_N y_N x_q (the shared layout of lab/tasks/classification.py): the context
holds `n_context_classes` = m distinct classes (default 2: the query's class and one distractor), the
query x_q is an exemplar of the first of them, and the labels are drawn per sequence: m distinct labels
out of `n_labels` = K (default 5), assigned to the m classes at random. A class's label is therefore
meaningless outside its sequence and the task is solvable only in context: copy the label that follows
the context exemplar of the query's class (an induction head: a layer-0 head moves x_i into y_i's
position, a layer-1 head matches x_q to it and copies y_i).

Which context pair holds which class: each of the m classes fills one of the N positions, the other
N - m positions take classes drawn uniformly from the m, and the N positions are shuffled. With the
paper's N = 2, m = 2 this is x1 y1 x2 y2 xq with the query's class first or second at random.

Exemplars stand in for Singh's image features: `n_classes` training classes and `n_heldout_classes`
classes never trained on, each with `n_exemplars` training exemplars and `n_heldout_exemplars` more
never trained on, all fixed by `data_seed`: x = (mu_k + eps * eta) / sqrt(1 + eps^2), with mu_k, eta ~
N(0, I/D) (Reddy 2024's recipe; eps = `exemplar_noise`, D = `item_dim`), so |x| ≈ 1: a table built
once with numpy (`fixed_exemplars`), a constant of the compiled step. The exemplars of
one sequence are distinct (drawn without replacement within each class) when the class has enough
(N - m + 2), so the query never repeats a context vector exactly; with fewer they repeat. Singh et
al. trained on one exemplar per class (`--exemplar_split 1 4 0`): `n_exemplars=1`, where the query is
the very vector of its class's context item (configs/experiment/singh.yaml).

Chance: a model that ignores the context scores ln K; one that reads the context's labels but not which
exemplar they follow puts 1/m on each and scores ln m (ln 2 with Singh's two pairs): this plateau is
Singh's "chance loss", `chance_loss` here, and the induction circuit takes the loss from it towards 0.
The phase change of the query loss is detected with Singh's threshold 0.4·ln m (0.4·ln 2) and a
minimum fitted drop of 0.5·ln m (`phase_threshold`), not the lab's default fractions of ln K.

Held-out evaluations (`eval_sets`, logged as loss_/acc_/cla_/label_mass_<name>):
  heldout_labels     label sets (m-subsets of the K labels) never used in training: `n_heldout_label_sets`
                     of the C(K, m) sets, chosen by `data_seed`, are reserved for this set;
  heldout_exemplars  training classes, but only exemplars never seen in training;
  heldout_classes    classes never seen in training (query and distractors), their exemplars.
Label sets reserved for heldout_labels make the training label frequencies slightly unequal (a label in
more training sets is drawn more often); n_heldout_label_sets=0 gives uniform labels.

Training: Singh's Adam lr 1e-5, batch 32 is far too slow here; on 2 CPU cores, about a minute:
    lab-train task=singh model=singh optim.lr=3e-4 train.batch_size=32 train.steps=3000 train.progress=false
(configs/model/singh.yaml is Singh's network.) Measured (3 seeds): the query loss falls from ln 5 to
a plateau near ln 2 (the model answers with a context label, label mass ≈ 0.95) and crosses 0.4·ln 2
at step 842 ± 83, as the layer-1 induction strength and the layer-0 previous-token score rise; final
acc_query 0.995, heldout_labels 0.995, heldout_exemplars 0.98, heldout_classes 0.91 (chance 0.5).
With clamp=perfect_induction (an ideal induction pattern on L1H0) the crossing moves to step 158 ± 12.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError, positive
from lab.tasks.classification import (ClassBatch, ClassificationTask, build_sequence, check_layout, check_table_size,
                                      fixed_batches, fixed_exemplars, uniform_int, uniforms)
from lab.tasks.base import TrainedCheck

MAX_LABEL_SETS = 100_000     # label sets are enumerated (to reserve some) only up to this many


@dataclass
class Config(TaskConfig):
    """Singh et al. (2024): exemplar-label pairs, labels reassigned per sequence."""
    name: str = "singh"
    seq_len: int = 5                 # T = 2N + 1
    n_context: int = 2               # N: exemplar-label pairs before the query (Singh: 2)
    n_context_classes: int = 2       # m: distinct classes in the context, the query's first (Singh: 2)
    n_labels: int = 5                # K: labels drawn from per sequence, m of them without replacement (Singh: 5)
    n_classes: int = 50              # training classes (Singh: 50)
    n_exemplars: int = 20            # training exemplars per class
    n_heldout_exemplars: int = 5     # further exemplars per class, never trained on (heldout_exemplars)
    n_heldout_classes: int = 10      # classes never trained on (heldout_classes)
    n_heldout_label_sets: int = 2    # m-subsets of the K labels never trained on (heldout_labels)
    item_dim: int = 64               # D: exemplar dimension (Singh: 512-d image features)
    exemplar_noise: float = 0.5      # eps: within-class spread, x = (mu + eps*eta)/sqrt(1+eps^2)
    data_seed: int = 0               # fixes exemplars and held-out label sets


def validate(cfg) -> None:
    t = cfg.task
    positive("task.n_context", t.n_context)
    check_layout(cfg, t.n_context)
    m = t.n_context_classes
    if not 2 <= m <= t.n_context:
        raise ConfigError(f"task.n_context_classes={m} must be in [2, task.n_context={t.n_context}] "
                          "(the query's class and at least one distractor, each in a context pair)")
    if t.n_labels < m:
        raise ConfigError(f"task.n_labels={t.n_labels} cannot give {m} context classes distinct labels; "
                          f"set task.n_labels >= task.n_context_classes={m}")
    if t.n_classes < m:
        raise ConfigError(f"task.n_classes={t.n_classes} is fewer than the {m} distinct classes a sequence needs "
                          f"(task.n_context_classes); raise task.n_classes")
    if t.n_heldout_classes and t.n_heldout_classes < m:
        raise ConfigError(f"task.n_heldout_classes={t.n_heldout_classes} cannot fill a sequence of {m} held-out "
                          f"classes; set it to 0 (no heldout_classes set) or >= {m}")
    positive("task.n_exemplars", t.n_exemplars)
    for key in ("n_heldout_exemplars", "n_heldout_classes", "n_heldout_label_sets"):
        if t[key] < 0:
            raise ConfigError(f"task.{key}={t[key]} must be >= 0 (0 disables that held-out set)")
    positive("task.item_dim", t.item_dim)
    check_table_size("task.n_classes", t.n_classes + t.n_heldout_classes, t.n_exemplars + t.n_heldout_exemplars,
                     t.item_dim)
    if t.exemplar_noise < 0:
        raise ConfigError(f"task.exemplar_noise={t.exemplar_noise} must be >= 0")
    if t.n_heldout_label_sets:
        n_sets = math.comb(t.n_labels, m)
        if n_sets > MAX_LABEL_SETS:
            raise ConfigError(f"task.n_heldout_label_sets={t.n_heldout_label_sets} needs the C({t.n_labels}, {m}) = "
                              f"{n_sets} label sets enumerated (at most {MAX_LABEL_SETS}); set it to 0 or lower task.n_labels")
        if t.n_heldout_label_sets >= n_sets:
            raise ConfigError(f"task.n_heldout_label_sets={t.n_heldout_label_sets} leaves none of the C({t.n_labels}, {m}) "
                              f"= {n_sets} label sets for training; set it to at most {n_sets - 1}")


@dataclass(frozen=True)
class SinghTask(ClassificationTask):
    name = "singh"

    seq_len: int
    n_context: int
    n_context_classes: int
    n_labels: int
    n_classes: int
    n_exemplars: int
    n_heldout_exemplars: int
    n_heldout_classes: int
    n_heldout_label_sets: int
    item_dim: int
    exemplar_noise: float
    data_seed: int
    probe_size: int
    probe_seed: int

    # ---- fixed data ----
    @cached_property
    def exemplars(self) -> np.ndarray:
        """(n_classes + n_heldout_classes, n_exemplars + n_heldout_exemplars, item_dim): held-out classes
        are the last ids, held-out exemplars the last indices of each class."""
        return fixed_exemplars(self.data_seed, self.n_classes + self.n_heldout_classes,
                               self.n_exemplars + self.n_heldout_exemplars, self.item_dim, self.exemplar_noise)

    @cached_property
    def label_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """(training sets, held-out sets): sorted m-subsets of range(K), as (S, m) int32 arrays. The
        held-out ones are `n_heldout_label_sets` chosen by data_seed (empty without them)."""
        m = self.n_context_classes
        if not self.n_heldout_label_sets:
            return np.zeros((0, m), np.int32), np.zeros((0, m), np.int32)
        sets = np.array(list(itertools.combinations(range(self.n_labels), m)), np.int32)
        order = np.random.default_rng([self.data_seed, 1]).permutation(len(sets))
        held = np.sort(order[:self.n_heldout_label_sets])
        keep = np.sort(order[self.n_heldout_label_sets:])
        return sets[keep], sets[held]

    @property
    def chance_loss(self) -> float:
        """ln m: a model that uses the context's labels but not which exemplar they follow (Singh's ln 2)."""
        return math.log(self.n_context_classes)

    @property
    def chance_text(self) -> str:
        return f"ln {self.n_context_classes}"

    def trained_check(self) -> TrainedCheck:
        """The query loss against ln K, the uniform guess over all K labels: the ln m plateau (answering
        with a context label) is already learned, and a run can end there without an induction head."""
        chance = math.log(self.n_labels)
        return TrainedCheck(self.main_metric, chance, f"ln {self.n_labels}", 0.95 * chance)

    def phase_threshold(self, phase_cfg) -> tuple[float, float]:
        """Singh et al.'s threshold 0.4·ln m (0.4·ln 2 for two pairs), and a fitted drop of at least
        0.5·ln m; the lab's default fractions (of ln K) do not apply."""
        return 0.4 * self.chance_loss, 0.5 * self.chance_loss

    def phase_curve(self, values: np.ndarray) -> np.ndarray:
        """The query-loss curve as phase detection should fit it: clipped at ln m. The first fall, from
        ln K to the ln m plateau (learning to answer with a context label), is not the phase change, and
        one sigmoid fitted to both falls places the change too early or calls it gradual."""
        return np.minimum(values, self.chance_loss)

    # ---- sampling ----
    def _sample_one(self, key, class_lo: int, class_hi: int, ex_lo: int, ex_hi: int, label_sets) -> ClassBatch:
        """One sequence with classes from [class_lo, class_hi), exemplar indices from [ex_lo, ex_hi),
        and labels from `label_sets` ((S, m) array) or, if None, any m distinct labels."""
        N, m, K = self.n_context, self.n_context_classes, self.n_labels
        n_pool, n_ex = class_hi - class_lo, ex_hi - ex_lo
        u_cls, u_fill, u_order, u_ex, u_set, u_lab = uniforms(key, (n_pool,), (N - m,), (N,), (m, n_ex), (),
                                                              (m if label_sets is not None else K,))
        classes = class_lo + jnp.argsort(u_cls)[:m]                     # m distinct classes; classes[0]: query
        slots = jnp.concatenate([jnp.arange(m), uniform_int(u_fill, m)])[jnp.argsort(u_order)]   # (N,) class slot of each pair
        # distinct exemplars per class: the j-th use of slot c takes perm[c, j]; the query takes the next
        # one; with fewer exemplars than uses they repeat (j mod n_ex; one exemplar: the query is its context item)
        perm = ex_lo + jnp.argsort(u_ex, axis=-1)
        onehot = jax.nn.one_hot(slots, m, dtype=jnp.int32)
        use = jnp.take_along_axis(jnp.cumsum(onehot, 0), slots[:, None], 1)[:, 0] - 1
        ex_idx = perm[slots, use % n_ex]
        q_idx = perm[0, onehot[:, 0].sum() % n_ex]
        if label_sets is None:                                           # m distinct labels out of K
            labels = jnp.argsort(u_lab)[:m]
        else:                                                            # a random allowed set, shuffled
            labels = jnp.asarray(label_sets)[uniform_int(u_set, label_sets.shape[0])][jnp.argsort(u_lab)]
        ex = jnp.asarray(self.exemplars)
        return build_sequence(ex[classes[slots], ex_idx], labels[slots], classes[slots], ex[classes[0], q_idx],
                              labels[0], classes[0], self.n_labels)

    def _sampler(self, classes: str = "train", exemplars: str = "train", labels: str = "train"):
        class_range = (0, self.n_classes) if classes == "train" else \
            (self.n_classes, self.n_classes + self.n_heldout_classes)
        ex_range = {"train": (0, self.n_exemplars),
                    "heldout": (self.n_exemplars, self.n_exemplars + self.n_heldout_exemplars),
                    "all": (0, self.n_exemplars + self.n_heldout_exemplars)}[exemplars]
        train_sets, held_sets = self.label_sets
        sets = held_sets if labels == "heldout" else (train_sets if self.n_heldout_label_sets else None)

        def sample(key, batch_size: int) -> ClassBatch:
            one = lambda k: self._sample_one(k, *class_range, *ex_range, sets)
            return jax.vmap(one)(jax.random.split(key, batch_size))
        return sample

    def sample(self, key: jax.Array, batch_size: int) -> ClassBatch:
        """The training distribution: training classes, exemplars and label sets."""
        return self._sampler()(key, batch_size)

    @cached_property
    def _eval_batches(self) -> dict:
        samplers = {}
        if self.n_heldout_label_sets:
            samplers["heldout_labels"] = (1, self._sampler(labels="heldout"))
        if self.n_heldout_exemplars:
            samplers["heldout_exemplars"] = (2, self._sampler(exemplars="heldout"))
        if self.n_heldout_classes:
            samplers["heldout_classes"] = (3, self._sampler(classes="heldout", exemplars="all"))
        return fixed_batches(self, samplers)

    def eval_sets(self) -> dict:
        """The held-out sets present (a set is left out when its n_heldout_* is 0), fixed batches of
        probe_size sequences."""
        return dict(self._eval_batches)


Task = SinghTask
