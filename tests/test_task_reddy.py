"""Reddy (2024)'s in-context classification task: generator statistics, measures on hand-built
inputs, one-line config errors, and a tiny end-to-end run."""
import math
from collections import Counter
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.config.compose import validate
from lab.core import ConfigError
from lab.config.compose import load_config
from lab.tasks.reddy import ReddyTask, in_context_choice

from conftest import CACHE


def make(**kw) -> ReddyTask:
    base = dict(seq_len=17, n_classes=64, n_labels=8, n_context=8, item_dim=63, noise=0.1, zipf_alpha=0.0,
                burstiness=4, p_bursty=1.0, p_novel=0.0, eval_burstiness=None, data_seed=0,
                probe_size=32, probe_seed=7, distinct_labels=False)
    base.update(kw)
    return ReddyTask(**base)


def draw(task, n=2000, seed=0):
    return jax.device_get(jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(seed), n))


def is_bursty(classes, query, B):
    counts = Counter(classes.tolist())
    return len(counts) == len(classes) // B and set(counts.values()) == {B} and query in counts


def test_layout_labels_and_bursty_contexts():
    task = make()
    b = draw(task, 500)
    N, L = task.n_context, task.n_labels
    assert b.tokens.shape == (500, 2 * N + 1) and b.features.shape == (500, 2 * N + 1, 63)
    np.testing.assert_array_equal(b.tokens[:, 0::2], L)                     # items and the query
    np.testing.assert_array_equal(b.tokens[:, 1::2], b.context_labels)      # label tokens
    assert np.all(b.features[:, 1::2] == 0)
    np.testing.assert_array_equal(b.context_labels, b.context_classes % L)  # class k has label k mod L
    np.testing.assert_array_equal(b.query_label, b.query_class % L)
    assert all(is_bursty(c, q, 4) for c, q in zip(b.context_classes, b.query_class))
    # the query is uniform over the N/B context classes; the class order is shuffled
    first = np.mean(b.query_class == b.context_classes[:, 0])
    assert 0.4 < first < 0.6


def test_items_are_noisy_normalised_class_means():
    task = make(noise=0.5)
    b = draw(task, 1000)
    mu = task.class_means
    D, eps = task.item_dim, task.noise
    assert abs(mu.var() * D - 1) < 0.05                                     # μ ~ N(0, I/D)
    items = np.concatenate([b.features[:, 0:-1:2].reshape(-1, D), b.features[:, -1]])
    classes = np.concatenate([b.context_classes.reshape(-1), b.query_class])
    resid = items * math.sqrt(1 + eps ** 2) - mu[classes]                   # = ε·η, η ~ N(0, I/D)
    assert abs(resid.var() * D / eps ** 2 - 1) < 0.03
    assert abs(resid.mean()) < 0.01
    # the means come from data_seed only
    np.testing.assert_array_equal(make(noise=0.0, probe_seed=1).class_means, mu)
    assert not np.allclose(make(data_seed=1).class_means, mu)


def test_zipf_frequencies_and_iid_contexts():
    task = make(n_classes=16, burstiness=0, zipf_alpha=1.0)
    b = draw(task, 4000)
    freq = np.bincount(np.concatenate([b.context_classes.reshape(-1), b.query_class]), minlength=16)
    expected = 1 / np.arange(1, 17)
    expected = expected / expected.sum()
    np.testing.assert_allclose(freq / freq.sum(), expected, atol=0.01)
    # i.i.d.: the query is in its context with probability 1 - (1 - P_q)^N, not always
    inside = np.array([q in c for c, q in zip(b.context_classes, b.query_class)]).mean()
    want = np.sum(expected * (1 - (1 - expected) ** 8))
    assert abs(inside - want) < 0.03


@pytest.mark.parametrize("p_bursty", [0.3])
def test_bursty_fraction(p_bursty):
    task = make(n_classes=4096, n_labels=32, p_bursty=p_bursty, burstiness=2)
    b = draw(task, 3000)
    frac = np.mean([is_bursty(c, q, 2) for c, q in zip(b.context_classes, b.query_class)])
    assert abs(frac - p_bursty) < 0.03


def test_novel_sequences():
    task = make(p_novel=0.4)
    b = draw(task, 3000)
    novel = b.query_class >= task.n_classes
    assert abs(novel.mean() - 0.4) < 0.03
    assert np.array_equal(novel, (b.context_classes >= task.n_classes).all(1))   # whole sequences
    assert all(is_bursty(c, q, 4) for c, q in zip(b.context_classes[novel], b.query_class[novel]))
    # fresh labels are uniform, not tied to the class id
    labels = b.context_labels[novel].reshape(-1)
    assert np.bincount(labels, minlength=8).min() > 0.08 * len(labels)
    # fresh items are far from every known mean (known items are within ~ε of theirs)
    mu = task.class_means
    d_novel = np.linalg.norm(b.features[novel, -1][:, None] - mu[None], axis=-1).min(1)
    d_known = np.linalg.norm(b.features[~novel, -1] - mu[b.query_class[~novel]], axis=-1)
    assert d_novel.min() > 0.5 > 0.2 > d_known.max()


def test_distinct_labels_like_reddys_no_repeats():
    """distinct_labels: every bursty or novel context holds N/B classes with N/B different labels, the
    classes still follow P within that constraint (uniform here), and the default stream is unchanged."""
    task = make(burstiness=1, n_labels=8, p_novel=0.3, distinct_labels=True)
    b = draw(task, 3000)
    for c, q, lab in zip(b.context_classes, b.query_class, b.context_labels):
        assert is_bursty(c, q, 1)
        assert len(set(lab.tolist())) == 8          # L = N: every label in every context
    known = b.query_class < task.n_classes
    counts = np.bincount(b.context_classes[known].reshape(-1), minlength=task.n_classes)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
    np.testing.assert_array_equal(b.context_labels[known], b.context_classes[known] % 8)
    plain = draw(make(burstiness=1, n_labels=8, p_novel=0.3), 3000)
    repeats = np.mean([len(set(lab.tolist())) < 8 for lab in plain.context_labels])
    assert repeats > 0.9                            # without it labels repeat in most contexts
    np.testing.assert_array_equal(draw(make(), 50).tokens, draw(make(distinct_labels=False), 50).tokens)


def test_eval_sets_are_fixed_and_built_as_described():
    task = make(n_classes=512, n_labels=32, burstiness=0)   # eval sets do not depend on training B
    sets = task.eval_sets()
    K, L = task.n_classes, task.n_labels
    assert set(sets) == {"ic", "ic2", "iw"}
    ic, ic2, iw = sets["ic"], sets["ic2"], sets["iw"]
    assert ic.tokens.shape == (32, 17)
    # ic: novel classes, bursty with N/2
    assert np.all(ic.context_classes >= K) and all(is_bursty(c, q, 4) for c, q in zip(ic.context_classes, ic.query_class))
    # ic2: known classes, bursty, every label shifted by one, scored against the shifted label
    assert np.all(ic2.context_classes < K)
    np.testing.assert_array_equal(ic2.context_labels, (ic2.context_classes + 1) % L)
    np.testing.assert_array_equal(ic2.query_label, (ic2.query_class + 1) % L)
    assert all(is_bursty(c, q, 4) for c, q in zip(ic2.context_classes, ic2.query_class))
    # iw: i.i.d., true labels, query mostly absent
    np.testing.assert_array_equal(iw.query_label, iw.query_class % L)
    assert np.mean([q in c for c, q in zip(iw.context_classes, iw.query_class)]) < 0.1
    again = make(n_classes=512, n_labels=32, burstiness=4).eval_sets()
    for name in sets:
        np.testing.assert_array_equal(sets[name].features, again[name].features)


def test_in_context_choice_by_hand():
    L = 4
    logits = jnp.zeros((3, 5, L))
    logits = logits.at[0, -1].set(jnp.log(jnp.array([1.0, 3.0, 5.0, 7.0])))
    logits = logits.at[1, -1].set(jnp.log(jnp.array([6.0, 2.0, 1.0, 1.0])))
    batch = SimpleNamespace(context_labels=jnp.array([[0, 1], [0, 1], [0, 0]]), query_label=jnp.array([1, 1, 2]))
    loss, acc = in_context_choice(logits, batch, L)
    # seq 0: p over {0, 1} = (1/4, 3/4), correct; seq 1: (6/8, 2/8), wrong; seq 2: query label absent, skipped
    np.testing.assert_allclose(loss, (-math.log(3 / 4) - math.log(2 / 8)) / 2, rtol=1e-6)
    np.testing.assert_allclose(acc, 0.5)


def test_measures_on_hand_built_patterns():
    task = make(p_bursty=1.0, burstiness=2, probe_size=6)     # probe: B = 2; ic set: B_eval = N/2 = 4
    probe = task.probe()
    N, T = task.n_context, 2 * task.n_context + 1
    lab = np.arange(N) * 2 + 1
    # layer 0: head 0 uniform causal, head 1 each label token fully on its own item
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    prev = uniform.copy()
    prev[lab] = 0
    prev[lab, lab - 1] = 1
    # layer 1: head 0 the query spread evenly over the N label tokens, head 1 the query on itself
    spread, self_ = uniform.copy(), uniform.copy()
    spread[-1] = 0
    spread[-1, lab] = 1 / N
    self_[-1] = 0
    self_[-1, -1] = 1
    pats = [np.stack([uniform, prev]), np.stack([spread, self_])]

    def forward(batch, names):
        B = batch.tokens.shape[0]
        cache = {f"blocks.{l}.attn.pattern": jnp.broadcast_to(jnp.asarray(p, jnp.float32), (B, 2, T, T))
                 for l, p in enumerate(pats) if f"blocks.{l}.attn.pattern" in names}
        return jnp.zeros((B, T, task.n_labels)), cache

    out = jax.jit(lambda p: task.measures(SimpleNamespace(n_layers=2), None, p, forward, None, snapshot=True))(probe)
    np.testing.assert_allclose(out["ila"][0], [np.mean(1 / (lab + 1)), 1.0], rtol=1e-5)
    np.testing.assert_allclose(out["ila1"], 1.0)
    # per head on the probe: 2 of the 8 labels are the query's class; the scalars on the ic set: 4 of 8
    np.testing.assert_allclose(out["tila"][1], [0.25, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["tila2"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(out["tla2"], 1.0, rtol=1e-6)
    # uniform logits: the in-context-choice loss is ln(distinct labels in context) of each ic sequence
    ic = task.eval_sets()["ic"]
    distinct = [len(set(c.tolist())) for c in ic.context_labels]
    np.testing.assert_allclose(out["loss_ic_ctx"], np.mean(np.log(distinct)), rtol=1e-5)
    np.testing.assert_allclose(out["loss_ic"], math.log(task.n_labels), rtol=1e-5)
    for key in ("acc_ic", "acc_ic2", "acc_iw", "cla_ic", "loss_ic2", "loss_iw", "induction", "prev_token"):
        assert key in out
    assert out["attention"].shape == (2, 2, T, T)


BASE = ["task=reddy", "model=reddy"]


@pytest.mark.parametrize("overrides, key", [
    (["task.n_classes=100"], "task.n_classes=100"),
    (["task.burstiness=3"], "N/B is not an integer"),
    (["task.n_classes=32", "task.n_labels=32", "task.burstiness=1", "task.n_context=64", "task.seq_len=129"],
     "task.burstiness=1 asks for N/B=64 classes"),
    (["task.p_bursty=1.5"], "task.p_bursty=1.5"),
    (["task.p_novel=-0.1"], "task.p_novel=-0.1"),
    (["task.seq_len=16"], "task.seq_len=16"),
    (["task.eval_burstiness=8"], "task.eval_burstiness=8"),
    (["task.burstiness=-1"], "task.burstiness=-1"),
    (["task.distinct_labels=true", "task.n_labels=4", "task.n_classes=2048", "task.burstiness=1"],
     "task.distinct_labels=true needs N/B=8 distinct labels"),
])
def test_config_errors_are_one_line(overrides, key):
    cfg = load_config(BASE + overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_default_config_is_valid_and_b0_allowed():
    validate(load_config(BASE))
    validate(load_config(BASE + ["task.burstiness=0"]))


def test_tiny_end_to_end():
    import lab
    cfg = load_config(BASE + ["task.n_classes=64", "task.probe_size=16", "model.d_model=16", "model.readout_hidden=16",
                              "train=tiny", f"train.compile_cache={CACHE}", "train.tensorboard=false"])
    result = lab.run(cfg, plots=False)
    m = result.metrics
    for key in ("loss", "loss_ic_ctx", "acc_ic_ctx", "loss_ic", "acc_ic", "acc_ic2", "acc_iw", "cla_ic", "ila1",
                "tila2", "tla2"):
        assert key in m and np.all(np.isfinite(m[key])), key
    assert np.all(np.isfinite(m["train_loss"][1:]))
    assert m["tila"].shape[-2:] == (2, 1)
    assert (result.summary["main_metric"], result.summary["main_accuracy"]) == ("loss_ic_ctx", "acc_ic_ctx")
    np.testing.assert_allclose(result.summary["chance_loss"], math.log(2))    # N/B_eval = 2 classes in an ic context
    assert "loss_ic_ctx" in result.summary["final"]
