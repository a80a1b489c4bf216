"""Bi-Induct (2025) copy snippets: generator structure and statistics, measures on hand-built
patterns and logits, one-line config errors, and a tiny end-to-end run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.config.compose import validate
from lab.core import ConfigError
from lab.measures.heads import induction_score
from lab.config.compose import load_config
from lab.tasks.copy_snippets import (CopyBatch, CopyTask, anti_induction_score, backward_match_score, matched_control_keys,
                                     copy_loss_and_accuracy, ideal_copy_attention, markov_stream, zipf_probs)

from conftest import CACHE


def make(**kw) -> CopyTask:
    base = dict(seq_len=48, vocab_size=10, background="uniform", zipf_alpha=1.0, min_len=2, max_len=6,
                n_snippets=3, rate=None, backward_frac=0.5, bos=True, probe_size=16, probe_seed=0)
    base.update(kw)
    return CopyTask(**base)


def draw(task, n=512, seed=0):
    return jax.device_get(jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(seed), n))


def expected_fields(tokens, starts, lens, backward, active, T, bos):
    """Every per-position field rebuilt in numpy from the snippet layout, with the checks on tokens."""
    prev = np.full(T, -1); rep = np.zeros(T, bool); prev_b = np.full(T, -1)
    anti = np.full(T, -1); back_t = np.zeros(T, bool); special = np.zeros(T, bool)
    for s, n, b in ((s, n, b) for s, n, b, a in zip(starts, lens, backward, active) if a):
        assert tokens[s + n] == 10                                          # SEP
        first, second = tokens[s:s + n], tokens[s + n + 1:s + 2 * n + 1]
        np.testing.assert_array_equal(second, first[::-1] if b else first)
        special[s + n:s + 2 * n + 1] = True
        for j in range(n):
            p = s + n + 1 + j
            src = s + n - 1 - j if b else s + j
            if b:
                prev_b[p] = src
                if j < n - 1:
                    anti[p], back_t[p] = src - 1, True
            else:
                prev[p], rep[p] = src, j < n - 1
    fresh = ~special & (np.arange(T) >= int(bos))
    return prev, rep, prev_b, anti, back_t, np.append(fresh[1:], False)


@pytest.mark.parametrize("kw", [dict(), dict(bos=False, backward_frac=0.0), dict(backward_frac=1.0, n_snippets=None,
                                                                              rate=0.6, seq_len=40)])
def test_structure_every_field(kw):
    task = make(**kw)
    b = draw(task, 128)
    T, K = task.seq_len, task.max_snippets
    for i in range(len(b.tokens)):
        tok, st, ln, bw, on = b.tokens[i], b.snippet_start[i], b.snippet_len[i], b.snippet_backward[i], b.snippet_active[i]
        assert (tok[0] == 11) == task.bos and np.all(tok[int(task.bos):] <= 10)
        spans = sorted((s, s + 2 * n + 1) for s, n, a in zip(st, ln, on) if a)
        assert all(e <= s2 for (_, e), (s2, _) in zip(spans, spans[1:]))   # no overlap
        assert all(s >= int(task.bos) and e <= T for s, e in spans)        # inside the sequence
        assert np.all((ln >= task.min_len) & (ln <= task.max_len)) and len(st) == K
        prev, rep, prev_b, anti, back_t, bg = expected_fields(tok, st, ln, bw, on, T, task.bos)
        np.testing.assert_array_equal(b.prev_occ[i], prev)
        np.testing.assert_array_equal(b.repeat_target[i], rep)
        np.testing.assert_array_equal(b.prev_occ_backward[i], prev_b)
        np.testing.assert_array_equal(b.anti_target[i], anti)
        np.testing.assert_array_equal(b.backward_target[i], back_t)
        np.testing.assert_array_equal(b.background_target[i], bg)
        q = np.flatnonzero(rep)
        np.testing.assert_array_equal(tok[q + 1], tok[prev[q] + 1])       # forward: next token at prev_occ + 1
        q = np.flatnonzero(back_t)
        np.testing.assert_array_equal(tok[q + 1], tok[anti[q]])            # backward: next token at prev_occ - 1
        np.testing.assert_array_equal(anti[q], prev_b[q] - 1)


def test_hand_examples_abc():
    """[a b c SEP a b c] and [a b c SEP c b a]: the only layout of one 3-token snippet in 7 tokens."""
    fwd = draw(make(seq_len=7, bos=False, min_len=3, max_len=3, n_snippets=1, backward_frac=0.0), 4)
    t = fwd.tokens[0]
    np.testing.assert_array_equal(t, [t[0], t[1], t[2], 10, t[0], t[1], t[2]])
    np.testing.assert_array_equal(fwd.prev_occ[0], [-1, -1, -1, -1, 0, 1, 2])
    np.testing.assert_array_equal(fwd.repeat_target[0], [0, 0, 0, 0, 1, 1, 0])   # 'a'->'b' at 1, 'b'->'c' at 2
    np.testing.assert_array_equal(CopyBatch(*map(jnp.asarray, fwd)).induction_target[0], [-1, -1, -1, -1, 1, 2, 3])
    bwd = draw(make(seq_len=7, bos=False, min_len=3, max_len=3, n_snippets=1, backward_frac=1.0), 4)
    t = bwd.tokens[0]
    np.testing.assert_array_equal(t, [t[0], t[1], t[2], 10, t[2], t[1], t[0]])
    np.testing.assert_array_equal(bwd.prev_occ_backward[0], [-1, -1, -1, -1, 2, 1, 0])
    np.testing.assert_array_equal(bwd.anti_target[0], [-1, -1, -1, -1, 1, 0, -1])  # 'c'->'b' at 1, 'b'->'a' at 0
    np.testing.assert_array_equal(bwd.backward_target[0], [0, 0, 0, 0, 1, 1, 0])
    assert not bwd.repeat_target.any() and (bwd.prev_occ == -1).all()


def test_backward_fraction():
    for p in (0.0, 0.3, 1.0):        # 0 and 1 exactly; 0.3 within 4 standard errors of 3000 snippets
        frac = draw(make(backward_frac=p), 1000).snippet_backward.mean()
        assert abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / 3000)


def test_lengths_and_starts_vary():
    b = draw(make(), 1000)
    counts = np.bincount(b.snippet_len.ravel(), minlength=7)[2:]
    np.testing.assert_allclose(counts / counts.sum(), 1 / 5, atol=0.02)     # n ~ U{2..6}
    first = b.snippet_start.min(1)
    assert len(np.unique(first)) >= 8                                       # not a fixed layout
    layouts = {tuple(s) for s in np.sort(b.snippet_start, 1)}
    assert len(layouts) > 300


@pytest.mark.parametrize("background,alpha", [("uniform", 1.0), ("zipf", 1.5)])
def test_background_frequencies(background, alpha):
    task = make(background=background, zipf_alpha=alpha)
    b = draw(task, 1000)
    fresh_next = b.tokens[:, 1:][b.background_target[:, :-1]]
    freq = np.bincount(fresh_next, minlength=10) / len(fresh_next)
    want = np.full(10, 0.1) if background == "uniform" else zipf_probs(10, alpha)
    np.testing.assert_allclose(freq, want, atol=0.01)
    assert len(fresh_next) > 25000


def test_rate_counts():
    task = make(n_snippets=None, rate=0.4, seq_len=61)        # K = 60 // 13 = 4 slots
    assert task.max_snippets == 4
    b = draw(task, 2000)
    assert abs(b.snippet_active.sum(1).mean() - 1.6) < 0.1
    assert set(np.unique(b.snippet_active.sum(1))) == {0, 1, 2, 3, 4}


def test_direction_probe_is_balanced():
    task = make(backward_frac=0.0)
    d = jax.device_get(task.direction_probe())
    assert d.repeat_target.any() and d.backward_target.any()
    half = make(backward_frac=0.5)      # its own probe is the direction probe (measures reuse it)
    np.testing.assert_array_equal(half.probe().tokens, half.direction_probe().tokens)
    assert make().model_vocab_size == 12 and make(bos=False).model_vocab_size == 11


def test_chance_loss():
    assert make().chance_loss == pytest.approx(math.log(10))
    task = make(vocab_size=2, background="zipf", zipf_alpha=1.0)               # P = (2/3, 1/3)
    assert task.chance_loss == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


def test_phase_threshold_below_the_order_blind_plateau():
    task = make(min_len=2, max_len=4)
    assert task.bag_loss == pytest.approx((math.log(2) + math.log(3) + math.log(4)) / 3)
    cfg = load_config(BASE)
    thr, drop = task.phase_threshold(cfg.measures.phase)
    assert thr == pytest.approx(0.5 * task.bag_loss) and drop == pytest.approx(0.3 * math.log(10))


# ---------------------------------------------------------------- measures on hand-built inputs

T = 7


def hand_batch():
    """Sequence 0: [a b c SEP a b c] (forward); sequence 1: [a b c SEP c b a] (backward)."""
    neg = [-1] * 4
    tokens = jnp.asarray([[0, 1, 2, 10, 0, 1, 2], [0, 1, 2, 10, 2, 1, 0]])
    prev = jnp.asarray([neg + [0, 1, 2], [-1] * 7])
    rep = jnp.asarray([[0, 0, 0, 0, 1, 1, 0], [0] * 7], bool)
    prev_b = jnp.asarray([[-1] * 7, neg + [2, 1, 0]])
    anti = jnp.asarray([[-1] * 7, neg + [1, 0, -1]])
    back = jnp.asarray([[0] * 7, [0, 0, 0, 0, 1, 1, 0]], bool)
    bg = jnp.asarray([[1, 1, 0, 0, 0, 0, 0]] * 2, bool)
    z = jnp.zeros((2, 1), int)
    return CopyBatch(tokens, prev, rep, prev_b, anti, back, bg, z, z + 3, z.astype(bool), z.astype(bool))


def uniform_causal():
    return np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]


def test_direction_scores_by_hand():
    b = hand_batch()
    p = np.zeros((2, 4, T, T))
    p[:, 0] = p[:, 1] = p[:, 2] = np.eye(T)                   # attend to self except where set below
    for q, k in [(4, 1), (5, 2)]:                             # head 0: induction on sequence 0
        p[0, 0, q] = np.eye(T)[k]
    for q, k in [(4, 1), (5, 0)]:                             # head 1: anti-induction on sequence 1
        p[1, 1, q] = np.eye(T)[k]
    for q, k in [(4, 2), (5, 1)]:                             # head 2: attends to prev_occ on sequence 1
        p[1, 2, q] = np.eye(T)[k]
    p[:, 3] = uniform_causal()
    p = jnp.asarray(p)
    u = (1 / 5 + 1 / 6) / 2                                   # uniform attention at queries 4 and 5
    np.testing.assert_allclose(induction_score(p, b), [1, 0, 0, u], rtol=1e-6)
    raw, corrected = anti_induction_score(p, b)
    np.testing.assert_allclose(raw, [0, 1, 0, u], rtol=1e-6)
    # corrected = raw minus attention to the matched control keys, on the rows whose control exists
    control, valid = (np.asarray(x) for x in matched_control_keys(b.anti_target, b.backward_target))
    rows = [(1, q) for q in (4, 5) if valid[1, q]]
    assert rows, "at least one backward query keeps a control key"
    hit = np.mean([control[r] == b.anti_target[r] for r in rows])   # control drawn on the target itself
    np.testing.assert_allclose(corrected, [0, 1 - hit, 0, 0], atol=1e-6)   # uniform: target and control alike
    np.testing.assert_allclose(backward_match_score(p, b), [0, 0, 1, u], rtol=1e-6)


def test_ideal_copy_attention_by_hand():
    w, rows = ideal_copy_attention(hand_batch(), T)
    np.testing.assert_array_equal(rows, [[0, 0, 0, 0, 1, 1, 0]] * 2)
    keys = {(int(b), int(q)): int(np.argmax(w[b, q])) for b, q in zip(*np.nonzero(rows))}
    assert keys == {(0, 4): 1, (0, 5): 2, (1, 4): 1, (1, 5): 0}   # prev_occ + 1 forward, prev_occ - 1 backward
    assert float(w.sum()) == 4.0


def test_copy_loss_and_accuracy_by_hand():
    tokens = jnp.asarray([[0, 1, 2, 1]])
    logits = jnp.zeros((1, 4, 3)).at[0, 0, 1].set(2.0)       # pos 0 favours the right token 1
    mask = jnp.asarray([[1, 0, 1, 0]], bool)
    loss, acc = copy_loss_and_accuracy(logits, tokens, mask)
    l0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert float(loss) == pytest.approx((l0 + math.log(3)) / 2, rel=1e-6)  # pos 2: uniform over 3
    assert float(acc) == pytest.approx(0.5)                    # pos 2's argmax is 0, not 1
    loss, acc = copy_loss_and_accuracy(logits, tokens, jnp.zeros((1, 4), bool))
    assert np.isnan(loss) and np.isnan(acc)


# ---------------------------------------------------------------- config errors and a tiny run

BASE = ["task=copy"]


@pytest.mark.parametrize("overrides,key", [
    (["task.seq_len=40"], "task.seq_len=40"),                       # 3 * 17 + 1 = 52 > 40
    (["task.min_len=9"], "task.min_len=9"),
    (["task.min_len=1"], "task.min_len=1"),
    (["task.backward_frac=1.5"], "task.backward_frac=1.5"),
    (["task.backward_frac=-0.1"], "task.backward_frac=-0.1"),
    (["task.rate=0.5"], "set exactly one"),
    (["task.n_snippets=null"], "set exactly one"),
    (["task.n_snippets=null", "task.rate=0"], "task.rate=0"),
    (["task.n_snippets=null", "task.rate=1.5"], "task.rate=1.5"),
    (["task.n_snippets=null", "task.rate=0.5", "task.seq_len=16"], "task.seq_len=16"),
    (["task.n_snippets=0"], "task.n_snippets=0"),
    (["task.background=gauss"], "task.background='gauss'"),
    (["task.zipf_alpha=-1"], "task.zipf_alpha=-1"),
    (["task.vocab_size=0"], "task.vocab_size=0"),
    (["task.background=markov", "task.n_snippets=-1"], "task.n_snippets=-1"),
    (["task.background=markov", "task.markov_successors=0"], "task.markov_successors=0"),
    (["task.background=markov", "task.markov_jump=1.0"], "task.markov_jump=1.0"),
    (["task.background=markov", "task.markov_jump=-0.1"], "task.markov_jump=-0.1"),
])
def test_config_errors_are_one_line(overrides, key):
    cfg = load_config(BASE + overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_default_config_is_valid():
    validate(load_config(BASE))
    validate(load_config(BASE + ["task.n_snippets=null", "task.rate=1.0", "task.background=zipf"]))


def test_tiny_end_to_end_forward_only():
    """backward_frac=0 trains on forward copies only; the direction measures still see both."""
    import lab
    cfg = load_config(BASE + ["task.seq_len=24", "task.vocab_size=12", "task.min_len=2", "task.max_len=4",
                              "task.n_snippets=2", "task.backward_frac=0.0", "task.probe_size=8", "model.d_model=16",
                              "model.n_heads=2", "train=tiny", f"train.compile_cache={CACHE}", "train.tensorboard=false"])
    result = lab.run(cfg, plots=False)
    m = result.metrics
    for key in ("loss", "loss_copy", "acc_copy", "loss_copy_forward", "acc_copy_forward", "loss_copy_backward",
                "acc_copy_backward", "loss_background"):
        assert key in m and np.all(np.isfinite(m[key])), key
    assert np.all(np.isfinite(m["train_loss"][1:]))            # step 0 is logged before any update
    for key in ("induction", "anti_induction", "backward_match", "prev_token", "prev_token_corrected", "copying"):
        assert m[key].shape[-2:] == (2, 2) and np.all(np.isfinite(m[key])), key
    assert result.summary["main_metric"] == "loss_copy"
    assert "anti_induction_per_head" in result.summary["final"]


def test_matched_control_keys_shuffle_the_offsets():
    """Queries 5..9 of one sequence with target offsets 1, 2, 3, 4, 9: the controls' offsets are the
    same multiset (a permutation among the masked queries), unmasked queries get none, and a control
    that would reach before position 0 (offset 9 from a query < 9) is not valid."""
    T = 12
    mask = np.zeros((1, T), bool)
    mask[0, 5:10] = True
    target = np.full((1, T), -1)
    target[0, 5:10] = np.arange(5, 10) - np.array([1, 2, 3, 4, 9])
    control, valid = (np.asarray(x) for x in matched_control_keys(jnp.asarray(target), jnp.asarray(mask)))
    offsets = np.arange(5, 10) - np.where(valid[0, 5:10], control[0, 5:10], np.arange(5, 10) - 9)
    assert sorted(offsets) == [1, 2, 3, 4, 9]
    assert not valid[0, :5].any() and not valid[0, 10:].any()
    assert valid[0, 5:10].sum() == 5 - sum(1 for q, d in zip(range(5, 10), offsets) if d > q)


def test_markov_stream_by_hand():
    """V = 3. b = 2, no jumps: u_table 0.4 0.9 | 0.1 0.2 | 0.7 0.5 gives succ = [[1, 2], [0, 0], [2, 1]]
    (floor(3u)); x0 = floor(3 * 0.0) = 0, then choices floor(2u) for u = 0.6, 0.3, 0.9, 0.1 are 1, 0, 1, 0:
    0 -> succ[0,1] = 2 -> succ[2,0] = 2 -> succ[2,1] = 1 -> succ[1,0] = 0.
    b = 1, jump 0.5: succ = [1, 0, 2] from u_table 0.4 0.1 0.7; x0 = floor(3 * 0.9) = 2; u = 0.8 follows
    the chain (2 -> 2); u = 0.2 < 0.5 jumps to floor(0.2 / 0.5 * 3) = 1; u = 0.6 follows (1 -> 0);
    u = 0.45 jumps to floor(0.45 / 0.5 * 3) = 2."""
    out = markov_stream(jnp.array([0.0, 0.6, 0.3, 0.9, 0.1]), jnp.array([0.4, 0.9, 0.1, 0.2, 0.7, 0.5]), 3, 2)
    np.testing.assert_array_equal(out, [0, 2, 2, 1, 0])
    out = markov_stream(jnp.array([0.9, 0.8, 0.2, 0.6, 0.45]), jnp.array([0.4, 0.1, 0.7]), 3, 1, jump=0.5)
    np.testing.assert_array_equal(out, [2, 2, 1, 0, 2])


def test_markov_background_follows_one_successor_per_token():
    """b = 1: within a sequence, wherever the walk did not jump, a token is followed by the same token
    each time; without jumps (jump 0) every repeat of a token is followed by the same successor, and
    the tokens are uniform over [0, V) when pooled over chains."""
    task = make(background="markov", markov_successors=1, markov_jump=0.0, n_snippets=0, vocab_size=10, seq_len=32)
    b = draw(task, 256)
    assert task.max_snippets == 0 and not b.copy_target.any() and (b.tokens[:, 0] == 11).all()
    for seq in b.tokens[:, 1:]:
        succ = {}
        for a, nxt in zip(seq[:-1], seq[1:]):
            assert succ.setdefault(int(a), int(nxt)) == int(nxt)
    counts = np.bincount(b.tokens[:, 1:].ravel(), minlength=10) / b.tokens[:, 1:].size
    assert np.abs(counts - 0.1).max() < 0.02                          # 256 * 31 tokens: sd about 0.003


def test_snippet_free_stream_is_measured_on_a_snippet_probe():
    """n_snippets = 0 (markov background only): the direction probe holds as many snippets as fit,
    (48 - 1) // (2 * 6 + 1) = 3, half of them backward; the run is judged on its stream's own loss."""
    task = make(background="markov", n_snippets=0)
    probe = jax.device_get(task.direction_probe())
    assert probe.snippet_start.shape[1] == 3 and probe.repeat_target.any() and probe.backward_target.any()
    assert task.trained_check().metric == "loss_background"
    assert make(background="markov").trained_check().metric == "loss_copy"
    validate(load_config(BASE + ["task.background=markov", "task.n_snippets=0"]))
