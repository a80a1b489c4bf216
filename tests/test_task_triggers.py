"""Bigram data with triggers (Bietti et al. 2023): generator statistics, the measures on hand-built
inputs, config errors, and a tiny end-to-end run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE
from lab.config.compose import validate
from lab.core import ConfigError
from lab.measures.heads import induction_recent_score, induction_score
from lab.config.compose import load_config
from lab.tasks.triggers import (TriggerBatch, TriggersTask, bigram_oracle_losses, global_model,
                                masked_loss_and_accuracy, previous_occurrence)

TINY = ["task=triggers", "task.seq_len=24", "task.vocab_size=12", "task.n_triggers=2", "task.probe_size=8",
        "model.d_model=16", "model.n_heads=2", "train=tiny", f"train.compile_cache={CACHE}", "train.tensorboard=false"]


def make(**kw):
    base = dict(seq_len=64, vocab_size=16, n_triggers=3, bigram_alpha=0.5, bigram_seed=0, probe_size=16,
                probe_seed=0)
    base.update(kw)
    return TriggersTask(**base)


def sample(task, n, seed=0):
    return jax.device_get(jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(seed), n))


def test_global_model_fixed_by_seed():
    bigram, pi, triggers = global_model(16, 3, 0.5, 0)
    np.testing.assert_allclose(bigram.sum(1), 1.0)
    np.testing.assert_allclose(pi @ bigram, pi, atol=1e-10)
    assert len(set(triggers)) == 3 and list(triggers) == sorted(triggers)
    np.testing.assert_array_equal(global_model(16, 3, 0.5, 0)[0], bigram)
    assert not np.array_equal(global_model(16, 3, 0.5, 1)[0], bigram)
    np.testing.assert_array_equal(make().triggers, triggers)


def test_triggers_are_followed_by_the_sequence_output():
    task = make()
    b = sample(task, 2000)
    trig, N, K = task.triggers, task.vocab_size, task.n_triggers
    assert b.tokens.dtype == np.int32 and b.tokens.min() >= 0 and b.tokens.max() < N
    assert not np.isin(b.outputs, trig).any()                       # outputs are non-trigger tokens
    for x, o in zip(b.tokens[:300], b.outputs[:300]):
        for i in range(len(x) - 1):
            if x[i] in trig:
                assert x[i + 1] == o[list(trig).index(x[i])]
    # o_k uniform over the N - K non-triggers, and drawn independently per sequence and trigger
    freq = np.bincount(b.outputs.ravel(), minlength=N)[np.setdiff1d(np.arange(N), trig)] / b.outputs.size
    np.testing.assert_allclose(freq, 1 / (N - K), atol=0.012)
    assert np.mean(b.outputs[:, 0] == b.outputs[:, 1]) < 2 / (N - K)


def test_other_transitions_follow_the_global_bigram_and_start_from_pi():
    task = make()
    bigram, pi, trig = task.global_model()
    b = sample(task, 4000, seed=1)
    counts = np.zeros_like(bigram)
    np.add.at(counts, (b.tokens[:, :-1].ravel(), b.tokens[:, 1:].ravel()), 1)
    rows = np.setdiff1d(np.flatnonzero(counts.sum(1) > 2000), trig)
    assert len(rows) >= 8
    freq = counts[rows] / counts[rows].sum(1, keepdims=True)
    assert np.abs(freq - bigram[rows]).max() < 0.03
    x0 = np.bincount(b.tokens[:, 0], minlength=task.vocab_size) / len(b.tokens)
    assert 0.5 * np.abs(x0 - pi).sum() < 0.05                        # total variation distance


def test_occurrence_fields_match_brute_force():
    task = make()
    b = sample(task, 64, seed=2)
    T, trig = task.seq_len, set(task.triggers)
    for x, prev, rep, first, is_t in zip(b.tokens, b.prev_occ, b.repeat_target, b.first_trigger, b.is_trigger):
        for i in range(T):
            earlier = [j for j in range(i) if x[j] == x[i]]
            want = earlier[-1] if (x[i] in trig and earlier) else -1
            assert prev[i] == want and is_t[i] == (x[i] in trig)
            assert rep[i] == (want >= 0 and i < T - 1)
            assert first[i] == (x[i] in trig and want < 0 and i < T - 1)
            if rep[i]:
                assert x[i + 1] == x[prev[i] + 1]                   # induction predicts it exactly
    assert b.repeat_target.sum() > 64                               # repeated triggers are common


def test_previous_occurrence_by_hand():
    tokens = jnp.asarray([[3, 1, 3, 3, 2, 1]])
    np.testing.assert_array_equal(np.asarray(previous_occurrence(tokens))[0], [-1, -1, 0, 2, -1, 1])


def hand_batch():
    """Trigger 0 at positions 0, 2, 4 with output 1; non-trigger tokens 1 and 2."""
    tokens = jnp.asarray([[0, 1, 0, 1, 0, 1, 2]])
    prev = jnp.asarray([[-1, -1, 0, -1, 2, -1, -1]])
    rep = prev >= 0
    first = jnp.asarray([[True, False, False, False, False, False, False]])
    return TriggerBatch(tokens, prev, rep, first, tokens == 0, jnp.asarray([[1]]))


def test_losses_and_accuracy_by_hand():
    b = hand_batch()
    # logits [0, ln 2, 0] everywhere: probabilities [1/4, 1/2, 1/4]
    logits = jnp.broadcast_to(jnp.asarray([0.0, np.log(2.0), 0.0]), (1, 7, 3))
    loss, acc = masked_loss_and_accuracy(logits, b.tokens, b.repeat_target)
    np.testing.assert_allclose(loss, -np.log(0.5), rtol=1e-6)        # positions 2 and 4 predict a 1
    assert float(acc) == 1.0
    loss_nt, acc_nt = masked_loss_and_accuracy(logits, b.tokens, ~b.is_trigger & (jnp.arange(7) < 6))
    # positions 1, 3, 5 predict 0, 0, 2: each with probability 1/4
    np.testing.assert_allclose(loss_nt, -np.log(0.25), rtol=1e-6)
    assert float(acc_nt) == 0.0
    bigram = jnp.asarray([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(np.asarray(bigram_oracle_losses(b.tokens, bigram))[0],
                               -np.log([0.8, 0.5, 0.8, 0.5, 0.8, 0.25]), rtol=1e-6)


def test_induction_score_and_ideal_pattern():
    b = hand_batch()
    task = make(seq_len=7)
    weights, rows = task.induction_attention(b)
    np.testing.assert_array_equal(np.asarray(rows)[0], [False, False, True, False, True, False, False])
    assert float(weights[0, 2, 1]) == 1.0 and float(weights[0, 4, 3]) == 1.0 and float(weights.sum()) == 2.0
    T = 7
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    ideal = np.where(np.asarray(rows)[0][:, None], np.asarray(weights)[0], np.eye(T))
    scores = np.asarray(induction_score(jnp.asarray(np.stack([ideal, uniform])[None]), b))
    # uniform attention: query 2 has one earlier trigger (key 1: 1/3), query 4 two (keys 1 and 3: 2/5);
    # the most-recent-copy variant counts only key 3 at query 4 (1/5)
    np.testing.assert_allclose(scores, [1.0, (1 / 3 + 2 / 5) / 2], rtol=1e-6)
    recent = np.asarray(induction_recent_score(jnp.asarray(np.stack([ideal, uniform])[None]), b))
    np.testing.assert_allclose(recent, [1.0, (1 / 3 + 1 / 5) / 2], rtol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("task.vocab_size=1", "task.vocab_size=1 must be >= 2"),
    ("task.n_triggers=0", "task.n_triggers=0 must be in [1, task.vocab_size - 1 = 31]"),
    ("task.n_triggers=32", "task.n_triggers=32 must be in [1, task.vocab_size - 1 = 31]"),
    ("task.bigram_alpha=0", "task.bigram_alpha=0.0 must be > 0"),
    ("task.seq_len=3", "task.seq_len=3 is too short"),
])
def test_config_errors(override, message):
    cfg = load_config(["task=triggers", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_tiny_run(tmp_path):
    from lab.app.run import run
    r = run(load_config(TINY), tmp_path, plots=False)
    m = r.metrics
    for key in ("loss", "loss_trigger", "acc_trigger", "loss_trigger_first", "acc_trigger_first", "loss_non_trigger",
                "acc_non_trigger", "loss_non_trigger_oracle", "icl_score"):
        assert m[key].shape == (5, 1) and np.all(np.isfinite(m[key])), key
    for key in ("induction", "prev_token", "prev_token_corrected", "copying"):
        assert m[key].shape == (5, 1, 2, 2) and np.all(np.isfinite(m[key])), key
    assert m["loss_non_trigger_oracle"][0, 0] < np.log(12)
    assert r.summary["main_metric"] == "loss_trigger" and "verdict" in r.summary
