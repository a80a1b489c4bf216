"""Directional copy snippets interleaved into a background stream (Bi-Induct, Sabry & Belz 2025).

Each sequence is [BOS] + a background stream over [0, V): i.i.d. tokens (uniform, or Zipf with
P_k ∝ k^-α), or `markov`, a walk on the sequence's own sparse Markov chain (`markov_stream`: every
token has `markov_successors` = b successors drawn uniformly from [0, V); with probability
`markov_jump` the walk jumps to a fresh uniform token, else it moves to one of the b successors), a
structured stream whose next token is partly predictable from the context (once a token has been
seen, its successor is one of at most b), as natural text's repeats are; the jumps keep the walk off
short cycles. K snippets are written into it as spans of width 2n+1 at random non-overlapping starts:

    forward copy  (induction):      [S, SEP, S]           S = s_0 .. s_{n-1}
    backward copy (anti-induction): [S, SEP, reverse(S)]

As in the paper's data rewrite, the first copy S is the background already at that place (so S has
the background's token statistics); SEP is the extra id V (BOS, if any, is V+1). n ~ U{min_len..max_len}
per snippet; each snippet is backward with probability `backward_frac`. Starts are drawn, not laid
out, because a fixed layout lets the model copy by position (as with a fixed repeat offset in
lab/tasks/induction.py).

Targets, with s the span start and p = s+n+1+j the j-th position of the second copy (j = 0..n-1):
  forward:  token[p] = s_j      prev_occ(p) = s+j         next token s_{j+1} at prev_occ(p) + 1
  backward: token[p] = s_{n-1-j} prev_occ(p) = s+n-1-j     next token s_{n-2-j} at prev_occ(p) - 1
The next token is predictable by copying for j = 0..n-2 (the last copied token is followed by fresh
background). E.g. [a b c SEP a b c]: at the second 'a' (p=4, prev_occ=0) the next 'b' is at 1 = prev_occ+1;
[a b c SEP c b a]: at the second 'c' (p=4, prev_occ=2) the next 'b' is at 1 = prev_occ-1.
The token after SEP (the first copied token) is not counted: which of S's tokens comes first
depends on the direction, which the model cannot know at SEP in a mixed stream.
prev_occ is structural (the matching position in the first copy); a token repeated inside S or in
the background does not change it.

Measures: the losses (main: loss_copy over both directions) on the run's probe; the per-direction
losses and head scores (induction at prev_occ+1 on forward spans, anti-induction at prev_occ-1 on
backward spans) on a fixed direction-balanced probe, so a forward-only and a backward-only run are
scored on the same spans. Note for reading anti-induction scores: a causal head cannot match the key
prev_occ-1 on the token after it, but with learned positions it can find it as the mirror image of
the query about SEP (2*SEP - i - 1); `backward_match` (attention to prev_occ itself) shows the other
route, a duplicate-token match that reads the token before from a previous-token head.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError, choice, positive
from lab.measures.heads import (attention_measures, copying_scores, induction_recent_score, induction_score,
                                pattern_sites, per_head)
from lab.measures.losses import masked_mean, token_losses
from lab.tasks.base import Task as BaseTask, TrainedCheck


@dataclass
class Config(TaskConfig):
    """Forward / backward copy snippets [S, SEP, S] / [S, SEP, reverse(S)] in a background stream."""
    name: str = "copy"
    vocab_size: int = 64             # V: background and snippet tokens are ids [0, V); SEP = V, BOS = V+1
    background: str = "uniform"      # uniform | zipf: the stream's unigram distribution
    zipf_alpha: float = 1.0          # zipf: P(token k-1) ∝ k^-alpha, k = 1..V
    min_len: int = 4                 # snippet length n ~ U{min_len..max_len} (the paper's span length L = 20)
    max_len: int = 8
    n_snippets: Optional[int] = 3    # K snippets per sequence; null: use `rate`
    rate: Optional[float] = None     # each of the (seq_len - BOS) // (2 max_len + 1) slots holds a snippet with this probability
    backward_frac: float = 0.5       # P(a snippet is a backward copy): 0 forward only (Induction), 1 backward only (Anti), 0.5 balanced
    bos: bool = True
    # Bi-Induct's matched-token baseline (issue 23): a structured background, and snippet-free streams
    markov_successors: int = 1       # markov background: successors per token in each sequence's chain (b)
    markov_jump: float = 0.2         # markov background: P(the next token is a fresh uniform draw, not a successor)


BACKGROUNDS = ("uniform", "zipf", "markov")


def validate(cfg) -> None:
    t = cfg.task
    positive("task.vocab_size", t.vocab_size)
    choice("task.background", t.background, BACKGROUNDS)
    if t.markov_successors < 1:
        raise ConfigError(f"task.markov_successors={t.markov_successors} must be >= 1 (successors per token of the "
                          "markov background)")
    if not 0.0 <= t.markov_jump < 1.0:
        raise ConfigError(f"task.markov_jump={t.markov_jump} must lie in [0, 1) (the probability of a fresh token "
                          "instead of a successor; 1 would be a uniform stream: use task.background=uniform)")
    if t.zipf_alpha < 0:
        raise ConfigError(f"task.zipf_alpha={t.zipf_alpha} must be >= 0 (0 is uniform)")
    if t.min_len < 2:
        raise ConfigError(f"task.min_len={t.min_len} must be >= 2 (a snippet of one token has nothing to copy-predict)")
    if t.min_len > t.max_len:
        raise ConfigError(f"task.min_len={t.min_len} > task.max_len={t.max_len}; need min_len <= max_len")
    if t.vocab_size < t.min_len:
        raise ConfigError(f"task.vocab_size={t.vocab_size} is smaller than task.min_len={t.min_len}: every snippet then "
                          "holds some token twice, so a token's occurrence in the source does not tell which token "
                          f"follows it in the copy; set task.vocab_size >= {t.min_len} or lower min_len")
    if not 0.0 <= t.backward_frac <= 1.0:
        raise ConfigError(f"task.backward_frac={t.backward_frac} must lie in [0, 1] (0 forward only, 1 backward only)")
    if (t.n_snippets is None) == (t.rate is None):
        raise ConfigError(f"task.n_snippets={t.n_snippets}, task.rate={t.rate}: set exactly one of them "
                          "(the other to null)")
    width, room = 2 * t.max_len + 1, t.seq_len - int(t.bos)
    if t.n_snippets is not None:
        if t.n_snippets < 0 or (t.n_snippets == 0 and t.background != "markov"):
            raise ConfigError(f"task.n_snippets={t.n_snippets} must be >= 1, or 0 (a snippet-free stream) with "
                              f"task.background=markov: a {t.background} stream without snippets has nothing in "
                              "context to learn")
        if t.n_snippets * width > room:
            raise ConfigError(f"task.seq_len={t.seq_len} cannot hold task.n_snippets={t.n_snippets} spans of up to "
                              f"2*max_len+1={width} tokens{' after BOS' if t.bos else ''}; raise seq_len to >= "
                              f"{t.n_snippets * width + int(t.bos)} or lower n_snippets / max_len")
    else:
        if not 0.0 < t.rate <= 1.0:
            raise ConfigError(f"task.rate={t.rate} must lie in (0, 1]")
        if width > room:
            raise ConfigError(f"task.seq_len={t.seq_len} cannot hold one span of up to 2*max_len+1={width} tokens"
                              f"{' after BOS' if t.bos else ''}; raise seq_len to >= {width + int(t.bos)} or lower max_len")


class CopyBatch(NamedTuple):
    tokens: jax.Array             # (B, T) int32
    prev_occ: jax.Array           # (B, T) forward second copies: position of the same token in the first copy; else -1
    repeat_target: jax.Array      # (B, T) bool: token i+1 is predictable by forward copying (key prev_occ(i) + 1)
    prev_occ_backward: jax.Array  # (B, T) backward second copies: position of the same token in the first copy; else -1
    anti_target: jax.Array        # (B, T) where backward_target: prev_occ_backward(i) - 1, the key holding token i+1; else -1
    backward_target: jax.Array    # (B, T) bool: token i+1 is predictable by backward copying (key anti_target(i))
    background_target: jax.Array  # (B, T) bool: token i+1 is a fresh stream token (not SEP, not in a second copy)
    snippet_start: jax.Array      # (B, K) start s of each snippet slot (first copy at s .. s+n-1, SEP at s+n)
    snippet_len: jax.Array        # (B, K) n
    snippet_backward: jax.Array   # (B, K) bool
    snippet_active: jax.Array     # (B, K) bool: the slot holds a snippet (always, with n_snippets)

    @property
    def induction_target(self) -> jax.Array:
        """(B, T) the key an ideal induction head attends to on forward copies: prev_occ + 1."""
        return jnp.where(self.prev_occ >= 0, self.prev_occ + 1, -1)

    @property
    def copy_target(self) -> jax.Array:
        """(B, T) bool: token i+1 is predictable from the first copy (forward or backward)."""
        return self.repeat_target | self.backward_target


# ----------------------------------------------------------------------------- measures

def copy_loss_and_accuracy(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy -log p(token[i+1] | tokens[..i]) and top-1 accuracy
    [argmax logits[i] == token[i+1]] over positions i with mask[i] (mask is (B, T); its last column
    is ignored). NaN when the mask is empty (e.g. a probe without backward spans)."""
    m = mask[:, :-1]
    loss = masked_mean(token_losses(logits, tokens), m)
    acc = masked_mean((jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:]).astype(jnp.float32), m)
    empty = ~jnp.any(m)
    return jnp.where(empty, jnp.nan, loss), jnp.where(empty, jnp.nan, acc)


def attention_to(pattern: jax.Array, key: jax.Array, mask: jax.Array) -> jax.Array:
    """Per head h: sum_{b,i: mask[b,i]} pattern[b,h,i,key[b,i]] / #mask, the mean attention from
    query i to key position key[b, i] over masked queries; 0 when the mask is empty. pattern is
    (B, H, T, T), key (B, T) int, mask (B, T) bool. Returns (H,)."""
    att = jnp.take_along_axis(pattern, jnp.clip(key, 0)[:, None, :, None], axis=-1)[..., 0]   # (B, H, T)
    m = mask[:, None, :]
    return jnp.sum(jnp.where(m, att, 0.0), axis=(0, 2)) / jnp.maximum(jnp.sum(mask), 1)


def matched_control_keys(target: jax.Array, mask: jax.Array, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Control keys at matched random offsets: the masked queries' offsets d_i = i - target(i) are
    shuffled among themselves (a fixed permutation drawn from `seed`), and query i's control key is
    i - d_pi(i), so the controls have exactly the targets' distribution of distances and a purely
    positional head scores the same on both. Returns (control (B, T) int, valid (B, T) bool): valid
    drops the masked queries whose shuffled offset would reach before position 0."""
    B, T = mask.shape
    pos = jnp.broadcast_to(jnp.arange(T), (B, T)).reshape(-1)
    flat = mask.reshape(-1)
    offset = (pos - target.reshape(-1))
    where_masked = jnp.argsort(~flat, stable=True)                     # masked queries first, in order
    shuffled = jnp.argsort(jnp.where(flat, jax.random.uniform(jax.random.PRNGKey(seed), flat.shape), 2.0))
    control_offset = jnp.zeros_like(offset).at[where_masked].set(offset[shuffled])
    control = (pos - control_offset).reshape(B, T)
    return jnp.clip(control, 0), mask & (control >= 0)


def anti_induction_score(pattern: jax.Array, batch: CopyBatch) -> tuple[jax.Array, jax.Array]:
    """Anti-induction score per head (Bi-Induct 2025), over backward second-copy queries whose next
    token is predictable (backward_target): raw = mean attention from query i to prev_occ(i) - 1,
    the key before the previous occurrence of the current token (which holds the next token in a
    reversed copy; a perfect anti-induction head scores 1), and corrected = raw minus the mean
    attention to a key at a matched random offset (matched_control_keys), so a head that attends by
    distance alone (a diffuse or positional layer-0 head) scores about 0. Returns (raw, corrected)."""
    raw = attention_to(pattern, batch.anti_target, batch.backward_target)
    control, valid = matched_control_keys(batch.anti_target, batch.backward_target)
    return raw, attention_to(pattern, batch.anti_target, valid) - attention_to(pattern, control, valid)


def backward_match_score(pattern: jax.Array, batch: CopyBatch) -> jax.Array:
    """Per head: mean attention from query i to prev_occ(i) itself (the previous occurrence of the
    current token, a duplicate-token match) over the backward_target positions. A causal model cannot
    match the key prev_occ-1 on the token that follows it, so backward copying can instead attend
    here and read the token before it from a layer-1 previous-token head; this score shows that
    route, which the anti-induction score (key prev_occ-1) misses. Returns (H,)."""
    return attention_to(pattern, batch.prev_occ_backward, batch.backward_target)


def ideal_copy_attention(batch: CopyBatch, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """The ideal copy pattern: one-hot on the key that holds the next token, prev_occ(i) + 1 on forward
    spans (induction) and prev_occ(i) - 1 on backward spans (anti-induction), for the rows
    repeat_target | backward_target; other rows are all zero. Returns ((B, T, T), (B, T))."""
    key = jnp.where(batch.repeat_target, batch.prev_occ + 1, batch.anti_target)
    rows = batch.copy_target
    return jax.nn.one_hot(jnp.where(rows, key, 0), seq_len) * rows[..., None], rows


def zipf_probs(vocab_size: int, alpha: float) -> np.ndarray:
    """P(token k-1) = k^-alpha / sum_j j^-alpha, k = 1..V."""
    w = np.arange(1, vocab_size + 1, dtype=np.float64) ** -alpha
    return w / w.sum()


def markov_stream(u_walk: jax.Array, u_table: jax.Array, vocab_size: int, successors: int,
                  jump: float = 0.0) -> jax.Array:
    """A walk on a sparse Markov chain drawn from uniforms in [0, 1): the chain's successor table is
    succ[a, c] = floor(u_table[a b + c] V) (V x b: token a's b successors, with replacement); the walk
    starts at x_0 = floor(u_walk[0] V) and, with u = u_walk[t+1], jumps to a fresh token
    x_{t+1} = floor(u / jump V) when u < jump, else follows the chain, x_{t+1} = succ[x_t, c] with
    c = floor((u - jump) / (1 - jump) b) (each successor with probability (1 - jump) / b). Every x_t is
    uniform over [0, V) when averaged over chains, so a model that does not use the context scores
    ln V; one that does predicts a token's successor once it has seen it. u_walk (T,), u_table (V b,);
    returns (T,) int32."""
    V, b = vocab_size, successors
    succ = _below(u_table, V).reshape(V, b)
    u = u_walk[1:]
    jumped = u < jump
    fresh = _below(u / max(jump, 1e-9), V)
    successor = _below((u - jump) / (1.0 - jump), b)

    def step(x, inputs):
        is_jump, f, c = inputs
        nxt = jnp.where(is_jump, f, succ[x, c])
        return nxt, nxt

    first = _below(u_walk[0], V)
    _, rest = jax.lax.scan(step, first, (jumped, fresh, successor))
    return jnp.concatenate([first[None], rest]).astype(jnp.int32)


# ----------------------------------------------------------------------------- task

def _below(u: jax.Array, m) -> jax.Array:
    """U{0..m-1} from u ~ U[0, 1): min(floor(u m), m - 1)."""
    return jnp.minimum(jnp.floor(u * m), m - 1).astype(jnp.int32)


@dataclass(frozen=True)
class CopyTask(BaseTask):
    name = "copy"
    main_metric, main_accuracy, main_metric_label = "loss_copy", "acc_copy", "loss on copied snippet tokens"
    head_scores = {"induction": "induction", "prev_token": "prev_token_corrected", "anti_induction": "anti_induction"}

    seq_len: int
    vocab_size: int
    background: str
    zipf_alpha: float
    min_len: int
    max_len: int
    n_snippets: Optional[int]
    rate: Optional[float]
    backward_frac: float
    bos: bool
    probe_size: int
    probe_seed: int
    markov_successors: int = 1
    markov_jump: float = 0.2

    @property
    def table_uniforms(self) -> int:
        """Uniforms per sequence for the markov background's successor table (V b; 0 otherwise)."""
        return self.vocab_size * self.markov_successors if self.background == "markov" else 0

    @property
    def sep_id(self) -> int:
        return self.vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + 1 + int(self.bos)   # SEP = V, BOS = V + 1

    @property
    def chance_loss(self) -> float:
        """Entropy of the background unigram: the loss of a model that knows the token frequencies
        but does not copy (ln V for a uniform background, and for a markov one, whose tokens are
        uniform when averaged over chains)."""
        if self.background in ("uniform", "markov"):
            return math.log(self.vocab_size)
        p = zipf_probs(self.vocab_size, self.zipf_alpha)
        return float(-(p * np.log(p)).sum())

    @property
    def chance_text(self) -> str:
        if self.background in ("uniform", "markov"):
            return f"ln {self.vocab_size}"
        return f"the entropy of the Zipf({self.zipf_alpha:g}) background over {self.vocab_size} tokens"

    @property
    def bag_loss(self) -> float:
        """E_n[ln n], n ~ U{min_len..max_len}: the copy loss of a model that knows the snippet's tokens
        (e.g. summarised at SEP) but not their order, spreading its prediction over the n of them.
        Trained models sit on this plateau before the induction / anti-induction circuit forms."""
        return float(np.mean(np.log(np.arange(self.min_len, self.max_len + 1))))

    def phase_threshold(self, phase_cfg) -> tuple[float, float]:
        """Threshold frac * bag_loss (frac = loss_threshold_frac): the fall below the order-blind
        plateau is the copy circuit's phase change, not the earlier fall from ln V to that plateau;
        minimum drop loss_min_drop_frac * chance_loss as in the default."""
        return phase_cfg.loss_threshold_frac * self.bag_loss, phase_cfg.loss_min_drop_frac * self.chance_loss

    @property
    def max_snippets(self) -> int:
        """K, the snippet slots per sequence."""
        if self.n_snippets is not None:
            return self.n_snippets
        return (self.seq_len - int(self.bos)) // (2 * self.max_len + 1)

    def trained_check(self) -> TrainedCheck:
        """A snippet-free stream (n_snippets = 0) is judged on its own next-token loss (loss_background,
        in-context predictable on a markov background); otherwise the default (loss_copy)."""
        if self.max_snippets == 0:
            return TrainedCheck("loss_background", self.chance_loss, self.chance_text, 0.95 * self.chance_loss)
        return super().trained_check()

    def _background(self, u: jax.Array, u_table: jax.Array) -> jax.Array:
        """Stream tokens from uniforms u ~ U[0, 1): floor(u V), the Zipf inverse CDF, or markov_stream."""
        V = self.vocab_size
        if self.background == "uniform":
            return _below(u, V)
        if self.background == "markov":
            return markov_stream(u, u_table, V, self.markov_successors, self.markov_jump)
        cdf = jnp.asarray(np.cumsum(zipf_probs(V, self.zipf_alpha))[:-1], jnp.float32)
        return jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)

    def _sample_one(self, u: jax.Array) -> CopyBatch:
        """One sequence from T + 4K (+ V b for a markov background) uniforms u ~ U[0, 1)."""
        T, K, first = self.seq_len, self.max_snippets, int(self.bos)
        u_bg, u_len, u_dir, u_on, u_gap, u_table = jnp.split(u, [T, T + K, T + 2 * K, T + 3 * K, T + 4 * K])
        bg = self._background(u_bg, u_table)
        n = self.min_len + _below(u_len, self.max_len - self.min_len + 1)
        backward = u_dir < self.backward_frac
        active = jnp.ones((K,), bool) if self.n_snippets is not None else u_on < self.rate
        width = jnp.where(active, 2 * n + 1, 0)
        free = T - first - width.sum()                     # tokens left to the background between spans
        # K gaps: sorted draws from U{0..free}; span i starts after the gaps and spans before it
        gaps = jnp.sort(_below(u_gap, free + 1))
        start = first + gaps + jnp.cumsum(width) - width
        pos = jnp.arange(T)
        rel = pos[None, :] - start[:, None]                                 # (K, T)
        inside = active[:, None] & (rel >= 0) & (rel < width[:, None])      # at most one slot per position
        pick = lambda x: jnp.sum(jnp.where(inside, x[:, None] if x.ndim == 1 else x, 0), axis=0)
        r, m, s, back = pick(rel), pick(n), pick(start), pick(backward.astype(jnp.int32)) > 0
        in_span = inside.any(0)
        sep = in_span & (r == m)
        second = in_span & (r > m)
        j = r - m - 1                                                       # index in the second copy
        src = jnp.where(back, s + m - 1 - j, s + j)                         # its token's place in the first copy
        tokens = jnp.where(sep, self.sep_id, jnp.where(second, bg[jnp.clip(src, 0, T - 1)], bg))
        if self.bos:
            tokens = tokens.at[0].set(self.vocab_size + 1)
        predictable = second & (j < m - 1)
        fwd_t, bwd_t = predictable & ~back, predictable & back
        fresh = ~sep & ~second & (pos >= first)
        return CopyBatch(
            tokens=tokens.astype(jnp.int32),
            prev_occ=jnp.where(second & ~back, src, -1),
            repeat_target=fwd_t,
            prev_occ_backward=jnp.where(second & back, src, -1),
            anti_target=jnp.where(bwd_t, src - 1, -1),
            backward_target=bwd_t,
            background_target=jnp.append(fresh[1:], False),
            snippet_start=start, snippet_len=n, snippet_backward=backward, snippet_active=active)

    def sample(self, key: jax.Array, batch_size: int) -> CopyBatch:
        # one PRNG call for the whole batch: it compiles several times faster on CPU than one per field
        u = jax.random.uniform(key, (batch_size, self.seq_len + 4 * self.max_snippets + self.table_uniforms))
        return jax.vmap(self._sample_one)(u)

    def direction_probe(self) -> CopyBatch:
        """The probe the direction measures use: the same draws with backward_frac = 0.5, so that
        forward-only and backward-only runs are scored on the same balanced spans; a snippet-free run
        (n_snippets = 0) on as many snippets as fit, (seq_len - BOS) // (2 max_len + 1)."""
        balanced = dataclasses.replace(self, backward_frac=0.5)
        if self.n_snippets == 0:
            balanced = dataclasses.replace(balanced, n_snippets=(self.seq_len - int(self.bos)) // (2 * self.max_len + 1))
        return jax.jit(balanced.sample, static_argnums=1)(jax.random.PRNGKey(self.probe_seed), self.probe_size)

    def main_scores(self, logits, batch: CopyBatch):
        return copy_loss_and_accuracy(logits, batch.tokens, batch.copy_target)

    def induction_attention(self, batch: CopyBatch):
        """Where an ideal copy head attends: the key holding the next token, i.e. prev_occ + 1 on forward
        spans (an induction head) and prev_occ - 1 on backward spans (an anti-induction head), on the rows
        whose next token is predictable by copying. We clamp the ideal *outcome* for both directions;
        a causal model's own backward route attends to prev_occ instead (see backward_match_score)."""
        return ideal_copy_attention(batch, self.seq_len)

    def measures(self, model, params, probe: CopyBatch, forward, measures_cfg, snapshot: bool) -> dict:
        """Losses on the run's probe; the per-direction losses and scores on the balanced direction
        probe (the run's probe itself when backward_frac = 0.5). A snippet-free run's loss_copy is its
        copy loss on the direction probe: how well a model that never saw snippets copies them."""
        logits, patterns, heads = attention_measures(forward, probe, model.n_layers, snapshot)
        losses = token_losses(logits, probe.tokens)
        has_snippets = self.max_snippets > 0
        if self.backward_frac == 0.5 and has_snippets:
            dprobe, dlogits, dpatterns = probe, logits, patterns
        else:
            dprobe = self.direction_probe()
            sites = pattern_sites(model.n_layers)
            dlogits, dcache = forward(dprobe, sites)
            dpatterns = [dcache[s] for s in sites]
        cprobe, clogits = (probe, logits) if has_snippets else (dprobe, dlogits)
        loss_copy, acc_copy = copy_loss_and_accuracy(clogits, cprobe.tokens, cprobe.copy_target)
        loss_fwd, acc_fwd = copy_loss_and_accuracy(dlogits, dprobe.tokens, dprobe.repeat_target)
        loss_bwd, acc_bwd = copy_loss_and_accuracy(dlogits, dprobe.tokens, dprobe.backward_target)
        loss_bg, _ = copy_loss_and_accuracy(logits, probe.tokens, probe.background_target)
        V = self.vocab_size   # the copying score compares the V stream tokens only (not SEP or BOS)
        stream = {**params, "W_E": params["W_E"][:V], "W_U": params["W_U"][:, :V]} if "W_U" in params else None
        out = {
            "loss": losses.mean(),
            "loss_copy": loss_copy, "acc_copy": acc_copy,
            "loss_copy_forward": loss_fwd, "acc_copy_forward": acc_fwd,
            "loss_copy_backward": loss_bwd, "acc_copy_backward": acc_bwd,
            "loss_background": loss_bg,
            "loss_by_pos": losses.mean(0),
            **per_head(dpatterns, {"induction": lambda p: induction_score(p, dprobe),
                                   "induction_recent": lambda p: induction_recent_score(p, dprobe),
                                   "anti_induction": lambda p: anti_induction_score(p, dprobe)[1],
                                   "anti_induction_raw": lambda p: anti_induction_score(p, dprobe)[0],
                                   "backward_match": lambda p: backward_match_score(p, dprobe)}),
            **heads,
        }
        if stream is not None:
            out["copying"] = copying_scores(stream, model.n_layers)
        return out

    def snapshot_info(self, probe: CopyBatch) -> dict:
        return {"tokens": probe.tokens[0], "snippet_start": probe.snippet_start[0],
                "snippet_len": probe.snippet_len[0], "snippet_backward": probe.snippet_backward[0],
                "snippet_active": probe.snippet_active[0]}


Task = CopyTask
