"""Each measure against values computed by hand on hand-built attention patterns and weights."""
import jax.numpy as jnp
import numpy as np

from lab.measures.heads import (copying_score, earlier_occurrence_keys, induction_recent_score, induction_score,
                                prev_token_scores)
from lab.measures.losses import icl_positions, icl_score
from lab.tasks import TokenBatch

T = 8


def batch_with_repeat(start=1, n=3):
    """One sequence, segment at [start, start+n) repeated once (positions start+n .. start+2n-1)."""
    pos = np.arange(T)
    later = (pos >= start + n) & (pos < start + 2 * n)
    prev = np.where(later, pos - n, -1)
    target = later & (pos + 1 < start + 2 * n)
    tokens = np.where(later, pos - n, pos).astype(np.int32) + 1    # distinct tokens outside the repeat
    return TokenBatch(jnp.asarray(tokens[None]), jnp.asarray(prev[None]), jnp.asarray(target[None]),
                      jnp.asarray([start]), jnp.asarray([n]))


def uniform_causal():
    return np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]


def test_induction_perfect_and_uniform():
    b = batch_with_repeat(start=1, n=3)      # queries 4, 5 are scored (targets 2, 3); 6 predicts fresh 7
    perfect = np.zeros((1, 2, T, T))
    for i, tgt in [(4, 2), (5, 3)]:
        perfect[0, 0, i, tgt] = 1.0
    perfect[0, 1] = uniform_causal()
    scores = np.asarray(induction_score(jnp.asarray(perfect), b))
    assert scores[0] == 1.0
    # uniform attention at query i gives 1/(i+1): mean of 1/5 and 1/6
    np.testing.assert_allclose(scores[1], (1 / 5 + 1 / 6) / 2, rtol=1e-6)


def tiled_batch(tokens, n):
    """One sequence whose segment of length n starts at 1 and is tiled to the end (as the default task)."""
    tokens = np.asarray(tokens, np.int32)
    Tn, pos = len(tokens), np.arange(len(tokens))
    later = pos >= 1 + n
    return TokenBatch(jnp.asarray(tokens[None]), jnp.asarray(np.where(later, pos - n, -1)[None]),
                      jnp.asarray((later & (pos + 1 < Tn))[None]), jnp.asarray([1]), jnp.asarray([n]))


def test_earlier_occurrence_keys_by_hand():
    # BOS=9, segment [1 2] three times: 9 1 2 1 2 1 2
    keys = np.asarray(earlier_occurrence_keys(jnp.asarray([[9, 1, 2, 1, 2, 1, 2]])))[0]
    assert {i: list(np.flatnonzero(keys[i])) for i in range(7) if keys[i].any()} == {
        3: [2], 4: [3], 5: [2, 4], 6: [3, 5]}   # the token after each earlier occurrence of x_i, j <= i


def test_induction_two_copies_counts_the_one_earlier_copy():
    b = tiled_batch([9, 1, 2, 3, 1, 2, 3], n=3)       # scored queries 4, 5 (next tokens 2, 3)
    p = np.zeros((1, 1, 7, 7))
    p[0, 0, 4, 2] = p[0, 0, 5, 3] = 1.0
    p[0, 0, [0, 1, 2, 3, 6], [0, 1, 2, 3, 6]] = 1.0
    np.testing.assert_allclose(induction_score(jnp.asarray(p), b), [1.0])
    np.testing.assert_allclose(induction_recent_score(jnp.asarray(p), b), [1.0])


def test_induction_three_copies_counts_every_earlier_copy():
    # 9 [1 2] [1 2] [1 2]: scored queries 3, 4, 5 (6 is last). Head 0 splits query 5's attention
    # 0.5 / 0.5 over keys 2 and 4 (after the first and the second '1'), puts 1 on key 2 from query 3
    # and 1 on key 3 from query 4: every-copy score (1 + 1 + 1) / 3 = 1; most-recent-copy score
    # (1 + 1 + 0.5) / 3 = 5/6. Head 1 is uniform causal: every copy (1/4 + 1/5 + 2/6) / 3, most recent
    # (1/4 + 1/5 + 1/6) / 3.
    b = tiled_batch([9, 1, 2, 1, 2, 1, 2], n=2)
    p = np.zeros((1, 2, 7, 7))
    p[0, 0] = np.eye(7)
    p[0, 0, 3] = np.eye(7)[2]
    p[0, 0, 4] = np.eye(7)[3]
    p[0, 0, 5] = 0.5 * (np.eye(7)[2] + np.eye(7)[4])
    p[0, 1] = np.tril(np.ones((7, 7))) / np.arange(1, 8)[:, None]
    np.testing.assert_allclose(induction_score(jnp.asarray(p), b), [1.0, (1 / 4 + 1 / 5 + 2 / 6) / 3], rtol=1e-6)
    np.testing.assert_allclose(induction_recent_score(jnp.asarray(p), b), [5 / 6, (1 / 4 + 1 / 5 + 1 / 6) / 3],
                               rtol=1e-6)


def test_prev_token_perfect_and_uniform():
    prev = np.zeros((1, 2, T, T))
    prev[0, 0, 0, 0] = 1.0
    for i in range(1, T):
        prev[0, 0, i, i - 1] = 1.0
    prev[0, 1] = uniform_causal()
    raw, corrected = (np.asarray(x) for x in prev_token_scores(jnp.asarray(prev)))
    np.testing.assert_allclose(raw[0], 1.0) and np.testing.assert_allclose(corrected[0], 1.0)
    np.testing.assert_allclose(raw[1], np.mean([1 / (i + 1) for i in range(1, T)]), rtol=1e-6)
    np.testing.assert_allclose(corrected[1], 0.0, atol=1e-6)   # Singh's correction removes the uniform baseline


def test_prev_token_corrected_half():
    # a_i = 1/2 everywhere: corrected = 1/2 - (1/2)/i, averaged over i = 1..T-1
    p = np.zeros((1, 1, T, T))
    p[0, 0, 0, 0] = 1
    for i in range(1, T):
        p[0, 0, i, i - 1] = p[0, 0, i, i] = 0.5
    _, corrected = prev_token_scores(jnp.asarray(p))
    np.testing.assert_allclose(corrected[0], np.mean([0.5 - 0.5 / i for i in range(1, T)]), rtol=1e-6)


def test_icl_score_and_positions():
    assert icl_positions(512) == (49, 499)      # Olsson: tokens 50 and 500 of 512
    assert icl_positions(64) == (5, 61)
    loss = jnp.arange(10.0)
    assert float(icl_score(loss, 2, 7)) == 5.0


def copy_params(ov_sign: float, V=6, D=6):
    """Embedding = unembedding = identity, one head whose OV circuit is sign * identity."""
    eye = jnp.eye(V, D)
    attn = {"W_V": (ov_sign * jnp.eye(D))[:, None, :], "W_O": jnp.eye(D)[None]}
    return {"W_E": eye, "W_U": eye.T, "blocks": {0: {"attn": attn}}}


def test_copying_score():
    assert float(copying_score(copy_params(1.0), 0)[0]) == 1.0
    assert float(copying_score(copy_params(-1.0), 0)[0]) == 0.0
    assert float(copying_score(copy_params(0.0), 0)[0]) == 0.5   # all ties: no copying
