import jax
import numpy as np
import pytest

from lab.tasks import InductionTask


def make(**kw):
    base = dict(seq_len=40, vocab_size=10, bos=True, min_repeat_len=3, max_repeat_len=9, n_repeats=2,
                probe_size=16, probe_seed=0)
    base.update(kw)
    return InductionTask(**base)


@pytest.mark.parametrize("n_repeats", [2, 3, None])
def test_repeat_structure(n_repeats):
    task = make(n_repeats=n_repeats)
    b = jax.device_get(task.sample(jax.random.PRNGKey(1), 256))
    T = task.seq_len
    for tokens, prev, target, start, n in zip(b.tokens, b.prev_occ, b.repeat_target, b.repeat_start, b.repeat_len):
        assert tokens[0] == task.vocab_size                      # BOS id
        assert np.all(tokens[1:] < task.vocab_size)
        assert 3 <= n <= 9 and start >= 1
        span = T - start if n_repeats is None else n_repeats * n
        assert start + span <= T
        for i in range(T):
            later = start + n <= i < start + span
            assert prev[i] == (i - n if later else -1)
            if later:
                assert tokens[i] == tokens[i - n]
            # the next token is predictable exactly when i and i+1 both lie in a later copy
            assert target[i] == (later and i + 1 < start + span)
            if target[i]:
                assert tokens[i + 1] == tokens[prev[i] + 1]


def test_length_and_start_vary():
    b = make().sample(jax.random.PRNGKey(0), 512)
    assert len(np.unique(np.asarray(b.repeat_len))) == 7           # every n in 3..9 drawn
    assert len(np.unique(np.asarray(b.repeat_start))) > 10


def test_probe_is_fixed_and_sampling_is_seeded():
    task = make()
    np.testing.assert_array_equal(task.probe().tokens, task.probe().tokens)
    a, b = task.sample(jax.random.PRNGKey(3), 4), task.sample(jax.random.PRNGKey(4), 4)
    assert not np.array_equal(a.tokens, b.tokens)


def test_no_bos():
    b = make(bos=False).sample(jax.random.PRNGKey(0), 64)
    assert np.all(np.asarray(b.tokens) < 10) and np.min(b.repeat_start) >= 0
    assert make(bos=False).model_vocab_size == 10 and make().model_vocab_size == 11
