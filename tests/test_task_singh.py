"""Singh et al. (2024)'s exemplar-label relabelling task: generator statistics, held-out sets,
measures on hand-built patterns, one-line config errors, and a tiny end-to-end run (with the
perfect-induction clamp)."""
import math
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.config.compose import validate
from lab.core import ConfigError
from lab.app.run import run
from lab.config.compose import load_config
from lab.tasks.classification import query_label_attention
from lab.tasks.singh import SinghTask

from conftest import CACHE


def make(**kw) -> SinghTask:
    base = dict(seq_len=5, n_context=2, n_context_classes=2, n_labels=5, n_classes=12, n_exemplars=6,
                n_heldout_exemplars=3, n_heldout_classes=4, n_heldout_label_sets=2, item_dim=16,
                exemplar_noise=0.5, data_seed=0, probe_size=16, probe_seed=3)
    base.update(kw)
    return SinghTask(**base)


def draw(task, n=3000, seed=0, sampler=None):
    fn = sampler or task.sample
    return jax.device_get(jax.jit(fn, static_argnums=1)(jax.random.PRNGKey(seed), n))


def identify(task, feats):
    """(class, exemplar index) of each vector in feats (..., D), by exact match with every exemplar."""
    C, E, D = task.exemplars.shape
    assert (C, E) == (task.n_classes + task.n_heldout_classes, task.n_exemplars + task.n_heldout_exemplars)
    table = task.exemplars.reshape(C * E, D)
    flat = feats.reshape(-1, feats.shape[-1])
    d = ((flat[:, None, :] - table[None]) ** 2).sum(-1)
    best = d.argmin(1)
    assert np.all(d.min(1) < 1e-10)                      # every item is one of the fixed exemplars
    return (best // E).reshape(feats.shape[:-1]), (best % E).reshape(feats.shape[:-1])


@pytest.mark.parametrize("n_context,m", [(2, 2), (5, 3)])
def test_layout_classes_labels_and_exemplars(n_context, m):
    task = make(seq_len=2 * n_context + 1, n_context=n_context, n_context_classes=m, n_exemplars=n_context + 2,
                n_heldout_label_sets=0 if m == 3 else 2)
    b = draw(task, 2000)
    N, K = n_context, task.n_labels
    np.testing.assert_array_equal(b.tokens[:, 0::2], K)                      # items and query: the item id
    np.testing.assert_array_equal(b.tokens[:, 1::2], b.context_labels)
    assert np.all(b.features[:, 1::2] == 0)
    # features are the exemplars of the stated classes, training ones only, distinct within a sequence
    cls, idx = identify(task, b.features[:, 0::2])
    np.testing.assert_array_equal(cls[:, :N], b.context_classes)
    np.testing.assert_array_equal(cls[:, N], b.query_class)
    assert cls.max() < task.n_classes and idx.max() < task.n_exemplars
    pairs = cls * 100 + idx
    assert all(len(set(p)) == N + 1 for p in pairs)
    for c, lab, q, ql in zip(b.context_classes, b.context_labels, b.query_class, b.query_label):
        assert len(set(c)) == m and q in c                                    # m classes, the query's among them
        mapping = dict(zip(c, lab))
        assert len(set(mapping.values())) == m                                # distinct labels for distinct classes
        assert all(mapping[ci] == li for ci, li in zip(c, lab))               # one label per class
        assert mapping[q] == ql
    # labels are reassigned per sequence: the query label is uniform within a uniform training label set
    # (uniform over K without held-out sets), whatever the class
    train_sets = task.label_sets[0]
    want = np.bincount(train_sets.ravel(), minlength=K) / train_sets.size if len(train_sets) else np.full(K, 1 / K)
    freq = np.bincount(b.query_label, minlength=K) / len(b.query_label)
    np.testing.assert_allclose(freq, want, atol=0.025)
    for c in range(3):
        sel = b.query_label[b.query_class == c]
        assert len(set(sel)) >= 4
    # the query's pair is anywhere in the context; with N=2 first or second half the time
    pos = np.argmax(b.context_classes == b.query_class[:, None], axis=1)
    if N == 2:
        assert 0.45 < np.mean(pos == 0) < 0.55
    # the query's class is uniform over the training classes
    counts = np.bincount(b.query_class, minlength=task.n_classes)
    assert counts.min() > 0.6 * len(b.query_class) / task.n_classes


def test_training_label_sets_exclude_held_out_ones():
    task = make()
    train_sets, held = task.label_sets
    all_sets = set(combinations(range(5), 2))
    assert len(held) == 2 and len(train_sets) == 8
    assert {tuple(s) for s in train_sets} | {tuple(s) for s in held} == all_sets
    assert not {tuple(s) for s in train_sets} & {tuple(s) for s in held}
    b = draw(task, 3000)
    used = {tuple(sorted(l)) for l in b.context_labels}
    assert used == {tuple(s) for s in train_sets}                              # every training set, no other
    h = draw(task, 500, sampler=task._sampler(labels="heldout"))
    assert {tuple(sorted(l)) for l in h.context_labels} == {tuple(s) for s in held}
    # the held-out sets are chosen by data_seed
    assert {tuple(s) for s in make(data_seed=5).label_sets[1]} != {tuple(s) for s in held} or \
           {tuple(s) for s in make(data_seed=6).label_sets[1]} != {tuple(s) for s in held}


def test_one_exemplar_per_class_repeats_it_as_the_query():
    """Singh et al.'s --exemplar_split 1 4 0: each training class has one vector, so the query is its
    class's context item exactly; held-out exemplars (four here) are still distinct within a sequence."""
    task = make(n_exemplars=1, n_heldout_exemplars=4)
    b = draw(task, 500)
    cls, idx = identify(task, b.features[:, 0::2])
    assert np.all(idx == 0)
    pos = np.argmax(b.context_classes == b.query_class[:, None], axis=1)
    np.testing.assert_array_equal(b.features[:, -1], b.features[np.arange(500), 2 * pos])
    held = jax.device_get(task.eval_sets()["heldout_exemplars"])
    _, hidx = identify(task, held.features[:, 0::2])
    hpos = np.argmax(held.context_classes == held.query_class[:, None], axis=1)
    assert np.all(hidx >= 1) and np.all(hidx[:, -1] != hidx[np.arange(len(hidx)), hpos])


def test_eval_sets_are_fresh():
    task = make()
    sets = task.eval_sets()
    assert set(sets) == {"heldout_labels", "heldout_exemplars", "heldout_classes"}
    held = {tuple(s) for s in task.label_sets[1]}
    hl, he, hc = (jax.device_get(sets[k]) for k in ("heldout_labels", "heldout_exemplars", "heldout_classes"))
    assert {tuple(sorted(l)) for l in hl.context_labels} <= held
    cls, idx = identify(task, hl.features[:, 0::2])
    assert cls.max() < task.n_classes and idx.max() < task.n_exemplars
    cls, idx = identify(task, he.features[:, 0::2])
    assert cls.max() < task.n_classes and idx.min() >= task.n_exemplars      # only unseen exemplars
    cls, idx = identify(task, hc.features[:, 0::2])
    assert cls.min() >= task.n_classes and np.all(hc.context_classes >= task.n_classes)
    assert {tuple(sorted(l)) for l in hc.context_labels} <= {tuple(s) for s in task.label_sets[0]}
    assert set(make(n_heldout_label_sets=0, n_heldout_exemplars=0, n_heldout_classes=0).eval_sets()) == set()


def test_exemplars_are_fixed_noisy_class_means():
    kw = dict(exemplar_noise=0.5, item_dim=64, n_classes=36, n_exemplars=40, n_heldout_exemplars=10)
    x = make(**kw).exemplars
    assert x.shape == (40, 50, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x, make(**kw, probe_seed=9).exemplars)       # fixed by data_seed alone
    assert not np.allclose(x, make(**kw, data_seed=1).exemplars)
    assert abs(np.mean(np.sum(x ** 2, -1)) - 1) < 0.03                        # |x| ≈ 1
    # same-class cosine ≈ 1/(1+eps^2) = 0.8, other classes ≈ 0
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    same = np.einsum("ced,cfd->cef", u, u)[:, ~np.eye(50, dtype=bool)].mean()
    pair = np.einsum("ced,fgd->cf", u, u) / 50 ** 2                           # mean cosine, class c vs f
    other = pair[~np.eye(40, dtype=bool)]                                      # ≈ mu_c.mu_f/(1+eps^2) ~ N(0, 0.8^2/D)
    assert abs(same - 0.8) < 0.03 and abs(other.mean()) < 0.02 and 0.08 < other.std() < 0.12


def test_chance_and_phase_threshold():
    task = make()
    assert task.chance_loss == pytest.approx(math.log(2))
    thr, drop = task.phase_threshold(None)
    assert thr == pytest.approx(0.4 * math.log(2)) and drop == pytest.approx(0.5 * math.log(2))
    assert make(seq_len=9, n_context=4, n_context_classes=3, n_heldout_label_sets=0).chance_loss == pytest.approx(math.log(3))
    assert task.n_outputs == 5 and task.model_vocab_size == 6 and task.feature_dim == 16


def test_induction_strength_and_ideal_pattern_on_hand_built_attention():
    task = make(probe_size=4)
    b = task.probe()
    T = 5
    correct_pos = 1 + 2 * np.argmax(np.asarray(b.context_labels) == np.asarray(b.query_label)[:, None], axis=1)
    wrong_pos = 4 - correct_pos                                               # the other label position (1 or 3)
    pat = np.tile(np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None], (4, 3, 1, 1))   # (B, H, T, T) uniform
    pat[np.arange(4), 0, -1] = 0
    pat[np.arange(4), 0, -1, correct_pos] = 1                                 # head 0: query -> correct label
    pat[np.arange(4), 1, -1] = 0
    pat[np.arange(4), 1, -1, wrong_pos] = 1                                   # head 1: query -> wrong label
    tila, tla, strength = query_label_attention(jnp.asarray(pat), b)
    np.testing.assert_allclose(strength, [1.0, -1.0, 0.0], atol=1e-6)          # head 2 uniform: 1/5 - 1/5
    np.testing.assert_allclose(tla, [1.0, 1.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(tila, [1.0, 0.0, 0.2], atol=1e-6)
    weights, rows = task.induction_attention(b)
    assert np.all(np.asarray(rows)[:, -1]) and not np.any(np.asarray(rows)[:, :-1])
    np.testing.assert_array_equal(np.asarray(weights)[np.arange(4), -1], np.eye(T)[correct_pos])


BASE = ["task=singh", "task.n_classes=12", "task.n_exemplars=6", "task.n_heldout_exemplars=3",
        "task.n_heldout_classes=4", "task.item_dim=8", "task.probe_size=8"]


@pytest.mark.parametrize("overrides,message", [
    (["task.seq_len=7"], "task.seq_len=7 does not fit 2 item-label pairs and a query; set task.seq_len=5"),
    (["task.n_context_classes=3"], "task.n_context_classes=3 must be in [2, task.n_context=2]"),
    (["task.n_context=4", "task.seq_len=9", "task.n_context_classes=3", "task.n_labels=2"],
     "task.n_labels=2 cannot give 3 context classes distinct labels"),
    (["task.n_exemplars=0"], "task.n_exemplars=0 must be positive"),
    (["task.n_heldout_classes=1"], "task.n_heldout_classes=1 cannot fill a sequence of 2 held-out classes"),
    (["task.n_heldout_label_sets=10"], "task.n_heldout_label_sets=10 leaves none of the C(5, 2) = 10 label sets"),
    (["task.n_classes=1"], "task.n_classes=1 is fewer than the 2 distinct classes"),
    (["task.exemplar_noise=-1"], "task.exemplar_noise=-1.0 must be >= 0"),
])
def test_config_errors_are_one_line(overrides, message):
    cfg = load_config(BASE + overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_tiny_end_to_end_with_perfect_induction_clamp():
    cfg = load_config(BASE + ["model.d_model=16", "model.n_heads=2", "model.pos_embed=rope", "train=tiny",
                              f"train.compile_cache={CACHE}", "train.tensorboard=false", "clamp=perfect_induction"])
    r = run(cfg)
    m = r.metrics
    for key in ("loss_query", "acc_query", "cla", "label_mass", "loss_heldout_labels", "acc_heldout_labels",
                "loss_heldout_exemplars", "acc_heldout_classes"):
        assert np.all(np.isfinite(m[key])), key
    assert np.all(np.isfinite(m["train_loss"][1:]))                         # step 0 has no training loss
    assert m["induction"].shape[1:] == (1, 2, 2) and m["prev_token_corrected"].shape[1:] == (1, 2, 2)
    np.testing.assert_allclose(m["induction"][:, 0, 1, 0], 1.0, atol=1e-5)    # the clamped head L1H0
    assert r.summary["thresholds"]["loss_query"] == pytest.approx(0.4 * math.log(2))
