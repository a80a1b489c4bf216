"""In-context Markov chains (Edelman et al. 2024): generator statistics, the in-context predictors and
the statistical-induction score on hand-built inputs, config errors, and a tiny end-to-end run."""
import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE
from lab.config.compose import validate
from lab.core import ConfigError
from lab.config.compose import load_config
from lab.tasks.markov import (MarkovBatch, MarkovTask, bigram_predictor, complete_doubly_stochastic, kl_to_model,
                              predictor_losses, stationary_distribution, statistical_induction_keys,
                              statistical_induction_score, unigram_predictor)

TINY = ["task=markov", "task.seq_len=24", "task.burn_in=4", "task.probe_size=8", "model.d_model=16",
        "model.n_heads=2", "train=tiny", f"train.compile_cache={CACHE}", "train.tensorboard=false"]


def make(**kw):
    base = dict(seq_len=64, n_states=3, dirichlet_alpha=1.0, initial_state="stationary", burn_in=8,
                probe_size=16, probe_seed=0)
    base.update(kw)
    return MarkovTask(**base)


@lru_cache(maxsize=None)
def sampler(task):
    return jax.jit(task.sample, static_argnums=1)


N = 4000   # one batch size everywhere: each task's sampler compiles once


def sample(task, seed=0):
    return jax.device_get(sampler(task)(jax.random.PRNGKey(seed), N))


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_transition_rows_are_dirichlet(alpha):
    k = 3
    P = sample(make(dirichlet_alpha=alpha)).transitions
    np.testing.assert_allclose(P.sum(-1), 1.0, rtol=1e-5)
    # Dirichlet(α·1) marginals: mean 1/k, variance (1/k)(1 - 1/k) / (kα + 1)
    np.testing.assert_allclose(P.mean((0, 1)), 1 / k, atol=0.01)
    np.testing.assert_allclose(P.var(axis=(0, 1)), (1 / k) * (1 - 1 / k) / (k * alpha + 1), rtol=0.06)


def test_tokens_follow_their_own_chain():
    b = sample(make())
    x, P = b.tokens, b.transitions
    assert x.dtype == np.int32 and x.min() >= 0 and x.max() < 3
    # x_{t+1} ~ P[x_t]: E[P[x_t, x_{t+1}]] = E[Σ_b P[x_t, b]²] (0.5 for Dirichlet(1), k = 3); a sampler that
    # ignored P would give the mean row entry, 1/3, and one that read P's columns something else
    rows = P[np.arange(N)[:, None], x[:, :-1]]                                    # (N, T-1, k)
    hit = np.take_along_axis(rows, x[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(hit.mean(), (rows ** 2).sum(-1).mean(), atol=0.004)
    cols = np.swapaxes(P, 1, 2)[np.arange(N)[:, None], x[:, :-1]]
    assert abs(np.take_along_axis(cols, x[:, 1:, None], -1).mean() - hit.mean()) > 0.01


def test_initial_state_stationary_or_uniform():
    k = 3
    b = sample(make())
    pi = np.asarray(stationary_distribution(jnp.asarray(b.transitions)))
    np.testing.assert_allclose(np.einsum("bi,bij->bj", pi, b.transitions), pi, atol=1e-4)   # π P = π
    # x_0 ~ π: E[π(x_0)] = E[Σ π²] > 1/k; uniform x_0 gives E[π(x_0)] = 1/k
    hit = pi[np.arange(N), b.tokens[:, 0]].mean()
    np.testing.assert_allclose(hit, (pi ** 2).sum(1).mean(), atol=0.008)
    assert hit > 1 / k + 0.03
    u = sample(make(initial_state="uniform"))
    pi_u = np.asarray(stationary_distribution(jnp.asarray(u.transitions)))
    np.testing.assert_allclose(pi_u[np.arange(N), u.tokens[:, 0]].mean(), 1 / k, atol=0.008)


def test_complete_doubly_stochastic_by_hand():
    """Block [[.5, .2], [.3, .4]]: last column 1 - .7 = .3 and 1 - .7 = .3; last row 1 - (.5 + .3 + 0) ... i.e.
    1 - .8 = .2, 1 - .6 = .4, and the corner 1 - (.3 + .3) = .4 (= Σ block - (k - 2) = 1.4 - 1)."""
    P = np.asarray(complete_doubly_stochastic(jnp.array([[0.5, 0.2], [0.3, 0.4]])))
    np.testing.assert_allclose(P, [[0.5, 0.2, 0.3], [0.3, 0.4, 0.3], [0.2, 0.4, 0.4]], atol=1e-6)
    # a block whose first row sums past 1 completes to a negative entry: the sampler redraws it
    assert complete_doubly_stochastic(jnp.array([[0.7, 0.5], [0.1, 0.1]]))[0, 2] < 0


def test_doubly_stochastic_chains():
    """Rows and columns sum to 1 with every entry positive; the uniform measure on the 3-state Birkhoff
    polytope is symmetric under permuting rows or columns, so every entry averages 1/3; π is uniform, so
    the in-context unigram predictor does no better than the uniform guess ln 3 while the bigram one does."""
    task = make(transitions="doubly_stochastic", seq_len=48)
    b = sample(task)
    P = b.transitions
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(P.sum(-2), 1.0, atol=1e-5)
    assert P.min() > 0
    np.testing.assert_allclose(P.mean(0), 1 / 3, atol=0.01)
    np.testing.assert_allclose(stationary_distribution(jnp.asarray(P[:100])), 1 / 3, atol=1e-4)
    x = jnp.asarray(b.tokens)
    mask = task.scored()[None]
    uni = float(jnp.mean(jnp.where(mask, predictor_losses(unigram_predictor(x, 3, 1.0), x), 0)) / mask.mean())
    bi = float(jnp.mean(jnp.where(mask, predictor_losses(bigram_predictor(x, 3, 1.0), x), 0)) / mask.mean())
    assert uni > math.log(3) - 0.005 and bi < math.log(3) - 0.05


def test_probe_transitions():
    """The probe follows probe_transitions (Dirichlet columns do not sum to 1), training batches `transitions`."""
    task = make(transitions="doubly_stochastic", probe_transitions="dirichlet")
    assert np.abs(np.asarray(task.probe().transitions).sum(-2) - 1).max() > 0.1
    np.testing.assert_allclose(np.asarray(task.sample(jax.random.key(0), 4).transitions).sum(-2), 1.0, atol=1e-5)
    same = make(transitions="doubly_stochastic", probe_transitions="doubly_stochastic")
    np.testing.assert_allclose(np.asarray(same.probe().transitions).sum(-2), 1.0, atol=1e-5)


def test_sampling_is_seeded():
    task = make()
    np.testing.assert_array_equal(sample(task, 1).tokens, sample(task, 1).tokens)
    assert not np.array_equal(sample(task, 1).tokens, sample(task, 2).tokens)


TOKENS = jnp.asarray([[0, 1, 0, 1, 0]])


def test_predictors_by_hand():
    uni = np.asarray(unigram_predictor(TOKENS, 2, 1.0))[0]
    np.testing.assert_allclose(uni[:, 0], [2 / 3, 2 / 4, 3 / 5, 3 / 6, 4 / 7], rtol=1e-6)   # (n_t(0)+1)/(t+1+2)
    bi = np.asarray(bigram_predictor(TOKENS, 2, 1.0))[0]
    # t=2 (a=0): one 0->1 before; t=3 (a=1): one 1->0; t=4 (a=0): two 0->1
    np.testing.assert_allclose(bi, [[1 / 2, 1 / 2], [1 / 2, 1 / 2], [1 / 3, 2 / 3], [2 / 3, 1 / 3], [1 / 4, 3 / 4]],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(predictor_losses(bigram_predictor(TOKENS, 2, 1.0), TOKENS))[0],
                               -np.log([1 / 2, 1 / 2, 2 / 3, 2 / 3]), rtol=1e-6)
    # α = 0.5 changes both pseudo-counts: t=4 bigram = (2 + .5) / (2 + 1)
    np.testing.assert_allclose(np.asarray(bigram_predictor(TOKENS, 2, 0.5))[0, 4, 1], 2.5 / 3, rtol=1e-6)


def test_kl_to_model():
    bi = bigram_predictor(TOKENS, 2, 1.0)
    np.testing.assert_allclose(np.asarray(kl_to_model(bi, jnp.log(bi))), 0.0, atol=1e-6)
    kl = np.asarray(kl_to_model(bi, jnp.zeros((1, 5, 2))))[0]           # model uniform: KL = Σ p log(2p)
    p = np.asarray(bi)[0, 2]
    np.testing.assert_allclose(kl[2], np.sum(p * np.log(2 * p)), rtol=1e-5)


def test_statistical_induction_keys_and_score():
    keys = np.asarray(statistical_induction_keys(TOKENS))[0]
    expected = np.zeros((5, 5), bool)
    expected[2, 1] = expected[3, 2] = expected[4, 1] = expected[4, 3] = True   # x_{j-1} = x_i, j <= i
    np.testing.assert_array_equal(keys, expected)
    T = 5
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    ideal = expected / np.maximum(expected.sum(1, keepdims=True), 1)
    patterns = jnp.asarray(np.stack([ideal, uniform, np.eye(T)])[None])
    raw, corrected = (np.asarray(x) for x in statistical_induction_score(patterns, TOKENS))
    # scored queries 2, 3, 4 with u_i = |S_i|/(i+1) = 1/3, 1/4, 2/5
    np.testing.assert_allclose(raw, [1.0, (1 / 3 + 1 / 4 + 2 / 5) / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(corrected, [1.0, 0.0, -(0.5 + 1 / 3 + 2 / 3) / 3], atol=1e-6)
    weights, rows = make(seq_len=5).induction_attention(MarkovBatch(TOKENS, jnp.eye(2)[None]))
    np.testing.assert_allclose(np.asarray(weights)[0], ideal)
    np.testing.assert_array_equal(np.asarray(rows)[0], [False, False, True, True, True])


def test_phase_threshold_lies_between_the_predictors():
    task = make(probe_size=32)
    uni, bi = task.baseline_losses()
    assert bi < uni < task.chance_loss
    cfg = load_config(["task=markov"]).measures.phase
    threshold, drop = task.phase_threshold(cfg)
    np.testing.assert_allclose(threshold, bi + cfg.loss_threshold_frac * (uni - bi), rtol=1e-6)
    np.testing.assert_allclose(drop, cfg.loss_min_drop_frac * (uni - bi), rtol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("task.n_states=1", "task.n_states=1 must be >= 2"),
    ("task.dirichlet_alpha=0", "task.dirichlet_alpha=0.0 must be > 0"),
    ("task.initial_state=first", "task.initial_state='first' is not allowed; choose one of stationary, uniform"),
    ("task.burn_in=-1", "task.burn_in=-1 must be >= 0"),
    ("task.seq_len=17", "task.seq_len=17 leaves no prediction after task.burn_in=16"),
    ("task.transitions=birkhoff", "task.transitions='birkhoff' is not allowed; choose one of dirichlet, doubly_stochastic"),
    ("task.probe_transitions=uniform", "task.probe_transitions='uniform' is not allowed; choose one of dirichlet"),
    ("task.transitions=doubly_stochastic", "task.transitions=doubly_stochastic samples uniformly by rejection, "
                                           "which accepts too rarely for task.n_states=5; use n_states <= 4"),
])
def test_config_errors(override, message):
    cfg = load_config(["task=markov", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_tiny_run(tmp_path):
    from lab.app.run import run
    r = run(load_config(TINY), tmp_path, plots=False)
    m = r.metrics
    for key in ("loss", "loss_markov", "acc_markov", "loss_unigram", "loss_bigram", "loss_oracle", "kl_unigram",
                "kl_bigram", "icl_score"):
        assert m[key].shape == (5, 1) and np.all(np.isfinite(m[key])), key
    for key in ("induction", "induction_raw", "prev_token", "prev_token_corrected", "copying"):
        assert m[key].shape == (5, 1, 2, 2) and np.all(np.isfinite(m[key])), key
    assert m["loss_oracle"][0, 0] < m["loss_bigram"][0, 0] < m["loss_unigram"][0, 0] < math.log(5) + 0.05
    assert r.summary["main_metric"] == "loss_markov" and "verdict" in r.summary
