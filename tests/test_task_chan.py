"""Chan et al. (2022)'s bursty / Zipf task: generator statistics, evaluation sets, the restricted
ICL accuracy and the icl-set measures on hand-built inputs, one-line config errors, and a tiny
end-to-end run."""
from collections import Counter
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.config.compose import validate
from lab.core import ConfigError
from lab.app.run import run
from lab.config.compose import load_config
from lab.tasks.chan import ChanTask, restricted_accuracy

from conftest import CACHE


def make(**kw) -> ChanTask:
    base = dict(seq_len=17, n_context=8, burst_size=4, p_bursty=0.9, zipf_alpha=1.0, n_classes=256, n_heldout=16,
                n_labels=32, n_exemplars=5, item_dim=8, exemplar_noise=0.5, n_common=8, n_rare=32, data_seed=0,
                probe_size=64, probe_seed=5)
    base.update(kw)
    return ChanTask(**base)


def draw(task, n=3000, seed=0):
    return jax.device_get(jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(seed), n))


def is_bursty(classes, query, B):
    counts = Counter(classes.tolist())
    return len(counts) == len(classes) // B and set(counts.values()) == {B} and query in counts


def zipf(K, alpha):
    p = np.arange(1, K + 1, dtype=float) ** -alpha
    return p / p.sum()


def test_layout_fixed_labels_and_exemplars():
    task = make()
    b = draw(task, 2000)
    L = task.n_labels
    np.testing.assert_array_equal(b.tokens[:, 0::2], L)
    np.testing.assert_array_equal(b.tokens[:, 1::2], b.context_labels)
    np.testing.assert_array_equal(b.context_labels, b.context_classes % L)           # class k has label k mod L
    np.testing.assert_array_equal(b.query_label, b.query_class % L)
    assert b.context_classes.max() < task.n_classes and b.query_class.max() < task.n_classes   # no held-out class
    # every item is one of its class's fixed exemplars
    ex = task.exemplars
    assert ex.shape == (task.n_classes + task.n_heldout, 5, 8)
    items = b.features[:, 0:-1:2]
    d = ((items[:, :, None, :] - ex[b.context_classes]) ** 2).sum(-1).min(-1)
    assert d.max() < 1e-10
    dq = ((b.features[:, -1][:, None] - ex[b.query_class]) ** 2).sum(-1).min(-1)
    assert dq.max() < 1e-10
    np.testing.assert_array_equal(make(probe_seed=1).exemplars, ex)
    assert not np.allclose(make(data_seed=1).exemplars, ex)


@pytest.mark.parametrize("p_bursty", [0.0, 0.3, 1.0])
def test_bursty_fraction_and_structure(p_bursty):
    task = make(zipf_alpha=0.0, p_bursty=p_bursty, burst_size=2)                  # 4 classes x 2 when bursty
    b = draw(task, 3000)
    bursty = np.array([is_bursty(c, q, 2) for c, q in zip(b.context_classes, b.query_class)])
    assert abs(bursty.mean() - p_bursty) < 0.03                                     # iid ones are (almost) never bursty
    # the query's pair is anywhere in a bursty context
    pos = np.argmax(b.context_classes == b.query_class[:, None], axis=1)[bursty]
    if bursty.any():
        assert len(set(pos)) == 7 and np.mean(pos == 0) < 0.4


def test_zipf_frequencies_iid_and_bursty():
    K, alpha = 16, 1.0
    p = zipf(K, alpha)
    b = draw(make(n_classes=K, n_labels=8, n_common=4, n_rare=4, p_bursty=0.0), 4000)
    freq = np.bincount(np.concatenate([b.context_classes.ravel(), b.query_class]), minlength=K)
    np.testing.assert_allclose(freq / freq.sum(), p, atol=0.006)
    # iid: the query is in its context with probability sum_k P_k (1 - (1 - P_k)^N)
    inside = np.mean([q in c for c, q in zip(b.context_classes, b.query_class)])
    assert abs(inside - np.sum(p * (1 - (1 - p) ** 8))) < 0.03
    # bursty: the query's class ~ P; the other class by successive sampling: P_j sum_{i != j} P_i / (1 - P_i)
    b = draw(make(n_classes=K, n_labels=8, n_common=4, n_rare=4, p_bursty=1.0), 8000)
    assert all(is_bursty(c, q, 4) for c, q in zip(b.context_classes[:500], b.query_class[:500]))
    np.testing.assert_allclose(np.bincount(b.query_class, minlength=K) / len(b.query_class), p, atol=0.012)
    other = np.where(b.context_classes == b.query_class[:, None], -1, b.context_classes).max(1)
    want = p * (np.sum(p / (1 - p)) - p / (1 - p))
    np.testing.assert_allclose(np.bincount(other, minlength=K) / len(other), want, atol=0.012)


def test_eval_sets():
    task = make()
    sets = task.eval_sets()
    assert set(sets) == {"icl", "iwl", "iwl_rare"}
    icl, iwl, rare = (jax.device_get(sets[k]) for k in ("icl", "iwl", "iwl_rare"))
    K, L = task.n_classes, task.n_labels
    assert icl.tokens.shape == (64, 17)
    # icl: held-out classes only, bursty (2 classes x 4), distinct labels reassigned per sequence
    assert np.all(icl.context_classes >= K) and np.all(icl.query_class >= K)
    for c, lab, q, ql in zip(icl.context_classes, icl.context_labels, icl.query_class, icl.query_label):
        assert is_bursty(c, q, 4)
        mapping = dict(zip(c, lab))
        assert len(set(mapping.values())) == 2 and all(mapping[x] == y for x, y in zip(c, lab)) and mapping[q] == ql
    assert len(set(icl.query_label)) > 16                                              # labels not tied to classes
    label_of = {}
    for c, lab in zip(icl.context_classes.ravel(), icl.context_labels.ravel()):
        label_of.setdefault(c, set()).add(lab)
    assert max(len(v) for v in label_of.values()) > 1
    # iwl: common query classes, neither the class nor its label in the context; fixed labels
    assert np.all(iwl.query_class < task.n_common)
    assert len(set(iwl.query_class)) == task.n_common
    np.testing.assert_array_equal(iwl.query_label, iwl.query_class % L)
    np.testing.assert_array_equal(iwl.context_labels, iwl.context_classes % L)
    assert not np.any(iwl.context_labels == iwl.query_label[:, None])
    assert np.all(rare.query_class >= K - task.n_rare) and np.all(rare.query_class < K)
    assert not np.any(rare.context_labels == rare.query_label[:, None])
    assert np.all(rare.context_classes < K)


def test_restricted_accuracy_by_hand():
    L = 5
    logits = jnp.zeros((3, 7, L))
    logits = logits.at[0, -1].set(jnp.array([0.0, 1.0, 2.0, 0.0, 9.0]))   # 4 absent: restricted argmax over {1, 2} is 2
    logits = logits.at[1, -1].set(jnp.array([3.0, 1.0, 2.0, 0.0, 9.0]))   # restricted over {1, 2}: 2, label 1: wrong
    logits = logits.at[2, -1].set(jnp.array([0.0, 0.0, 0.0, 5.0, 1.0]))   # restricted over {0, 3}: 3, correct
    batch = SimpleNamespace(context_labels=jnp.array([[1, 2, 2], [2, 1, 1], [0, 3, 0]]),
                            query_label=jnp.array([2, 1, 3]))
    np.testing.assert_allclose(restricted_accuracy(logits, batch, L), 2 / 3, rtol=1e-6)


def test_measures_use_the_icl_set_for_induction():
    task = make(probe_size=64, p_bursty=0.5, zipf_alpha=0.0)
    L, T = task.n_labels, 17

    def forward(batch, names):
        """Logits: the query's label gets 1, an absent label (the first not in context) gets 5.
        Layer-0 pattern: the ideal induction pattern at the query, self-attention elsewhere."""
        present = jax.nn.one_hot(batch.context_labels, L).max(1)
        absent = jnp.argmin(present, -1)
        q = 1.0 * jax.nn.one_hot(batch.query_label, L) + 5.0 * jax.nn.one_hot(absent, L)
        logits = jnp.zeros(batch.tokens.shape + (L,)).at[:, -1].set(q)
        weights, rows = task.induction_attention(batch)
        pattern = jnp.where(rows[..., None], weights, jnp.eye(T))[:, None]            # (B, 1, T, T)
        return logits, {n: pattern for n in names}

    model = SimpleNamespace(n_layers=1)
    out = jax.jit(lambda: task.measures(model, None, task.probe(), forward, None, snapshot=False))()
    assert float(out["acc_icl"]) == 0.0                                # argmax over all labels: the absent one
    assert float(out["acc_icl_restricted"]) == 1.0                     # over the context's labels: the query's
    np.testing.assert_allclose(out["induction"], [[1.0]], atol=1e-6)   # icl: all attention on the correct labels
    np.testing.assert_allclose(out["tila"], [[1.0]], atol=1e-6)
    # on the probe, queries whose label is absent from the context have no target row: strength 0 there
    probe = task.probe()
    has = np.asarray((probe.context_labels == probe.query_label[:, None]).any(1)).mean()
    np.testing.assert_allclose(out["induction_train"], [[has]], atol=1e-6)
    assert 0.3 < has < 0.95


BASE = ["task=chan", "task.n_classes=64", "task.n_heldout=8", "task.n_labels=8", "task.item_dim=8",
        "task.n_common=4", "task.n_rare=8", "task.probe_size=8"]


@pytest.mark.parametrize("overrides,message", [
    (["task.seq_len=15"], "task.seq_len=15 does not fit 8 item-label pairs and a query; set task.seq_len=17"),
    (["task.burst_size=3"], "task.n_context=8 cannot hold bursts of task.burst_size=3"),
    (["task.burst_size=8"], "task.burst_size=8 leaves one class in a bursty context"),
    (["task.burst_size=1", "task.n_classes=6", "task.n_common=2", "task.n_rare=2"],
     "task.n_classes=6 is fewer than the 8 distinct classes of a bursty context"),
    (["task.n_heldout=1"], "task.n_heldout=1 is fewer than the 2 held-out classes an icl sequence needs"),
    (["task.n_labels=1"], "task.n_labels=1 cannot give the 2 classes of an icl sequence distinct labels"),
    (["task.p_bursty=1.5"], "task.p_bursty=1.5 is a probability; set it in [0, 1]"),
    (["task.zipf_alpha=-1"], "task.zipf_alpha=-1.0 must be >= 0"),
    (["task.n_common=65"], "task.n_common=65 must be in [1, task.n_classes=64]"),
    (["task.n_classes=100000000"], "task.n_classes: the exemplar table"),
])
def test_config_errors_are_one_line(overrides, message):
    cfg = load_config(BASE + overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_tiny_end_to_end():
    cfg = load_config(BASE + ["model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train=tiny", f"train.compile_cache={CACHE}",
                              "train.tensorboard=false"])
    r = run(cfg)
    m = r.metrics
    for key in ("loss_query", "acc_query", "cla", "label_mass", "loss_icl", "acc_icl", "acc_icl_restricted",
                "loss_iwl", "acc_iwl", "acc_iwl_rare"):
        assert np.all(np.isfinite(m[key])), key
    assert np.all(np.isfinite(m["train_loss"][1:]))
    for key in ("induction", "induction_train", "tila", "tla", "ila", "prev_token_corrected"):
        assert m[key].shape[1:] == (1, 1, 2), key
