"""Each measure against values computed by hand on hand-built attention patterns and weights."""
import jax.numpy as jnp
import numpy as np

from lab.measures.heads import copying_score, induction_score, prev_token_scores
from lab.measures.losses import icl_positions, icl_score
from lab.tasks import TokenBatch

T = 8


def batch_with_repeat(start=1, n=3):
    """One sequence, segment at [start, start+n) repeated once (positions start+n .. start+2n-1)."""
    pos = np.arange(T)
    later = (pos >= start + n) & (pos < start + 2 * n)
    prev = np.where(later, pos - n, -1)
    target = later & (pos + 1 < start + 2 * n)
    tokens = np.zeros(T, np.int32)
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
