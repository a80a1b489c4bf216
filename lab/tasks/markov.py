"""In-context Markov chains (ICL-MC; Edelman, Edelman, Goel, Malach & Tsilivis 2024, "The evolution
of statistical induction heads: in-context learning Markov chains").

Every sequence has its own chain over k states (the tokens 0..k-1): a transition matrix P whose
rows are drawn independently from Dirichlet(α·1), a first state x_0 from P's stationary
distribution π (π P = π; `initial_state: uniform` draws it uniformly instead), then
x_{t+1} ~ P[x_t, ·] for t = 0..T-2. The model predicts the next token at every position; since P
is new in every sequence, it can only be estimated from the context.

`transitions: doubly_stochastic` is Edelman et al.'s control: P uniform on the Birkhoff polytope (rows
and columns sum to 1; their rejection sampler, see `uniform_doubly_stochastic`), so π is uniform and
the in-context unigram predictor is no better than the uniform guess: no unigram stage to pass through.
`probe_transitions` draws the probe (every measure) from the other prior, so both conditions are
measured on the same Dirichlet chains, as in their figure.

Two in-context strategies bracket what the model learns (Edelman et al.'s phases: uniform, then
unigram, then bigram):
  - unigram:  p_t(b) = (n_t(b) + α) / (t + 1 + kα),                 n_t(b) = #{s <= t : x_s = b}
  - bigram:   p_t(b) = (n_t(a->b) + α) / (n_t(a->.) + kα),  a = x_t,  n_t(a->b) = #{s < t : x_s = a, x_{s+1} = b}
The bigram one is the posterior mean of P[x_t, ·] under the Dirichlet(α) prior, i.e. the
Bayes-optimal prediction (up to the information in x_0); the unigram one is the same estimate for
a chain whose rows are all equal. Both are computed from the tokens inside jit.

A statistical induction head (second layer) attends from query i to the keys j <= i with
x_{j-1} = x_i (the tokens that followed earlier occurrences of the current token) and averages
them, which is the bigram estimate; a previous-token head in the first layer supplies x_{j-1} at key j.

Measures (all on the predictions from positions t >= burn_in, t <= T-2): `loss_markov` (main) and
`acc_markov`, the model's; `loss_unigram`, `loss_bigram`, `loss_oracle` (true P), the references';
`kl_unigram`, `kl_bigram` = mean KL(predictor || model), which fall in turn as the model passes
through the two phases; per head `induction` = the baseline-corrected statistical-induction score
(1 perfect, 0 uniform attention; `induction_raw` uncorrected), `prev_token(_corrected)`, `copying`.
Phase detection runs between the unigram and bigram predictors' losses (`phase_threshold`).

Defaults: k = 5 rather than Edelman et al.'s k = 3, because with k = 3 the first drop (chance to
unigram, about 0.1 nat) is as large as the unigram-to-bigram gap and a single sigmoid fit of the
loss curve locks onto it; α = 1 and T = 64 as a CPU-sized context. The `edelman` experiment preset
sets their k = 3 and T = 101 (its script reads the stages from KL curves, not one sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError
from lab.measures.heads import attention_measures, copying_scores, earlier_occurrence_keys
from lab.measures.losses import icl_positions, icl_score, masked_mean, token_losses
from lab.tasks.base import Task as BaseTask, TrainedCheck

INITIAL_STATES = ("stationary", "uniform")
TRANSITIONS = ("dirichlet", "doubly_stochastic")
MAX_DOUBLY_STOCHASTIC_STATES = 4   # rejection accepts 1 draw in ~900 at k = 4 and far fewer beyond (Edelman et al. stop at 5)
FORMED_TAIL = 3        # head_formed judges the mean of a score's last 3 logged values


@dataclass
class Config(TaskConfig):
    """In-context Markov chains: a fresh k-state chain with Dirichlet(α) rows (or, as a control, a uniformly
    drawn doubly-stochastic matrix) in every sequence."""
    name: str = "markov"
    seq_len: int = 64              # T, tokens per sequence (no BOS)
    n_states: int = 5              # k, the number of states = token ids 0..k-1
    dirichlet_alpha: float = 1.0   # α: rows P[a, .] ~ Dirichlet(α·1); also the predictors' pseudo-count
    initial_state: str = "stationary"  # x_0 ~ π(P), the stationary distribution | uniform over the k states
    burn_in: int = 16              # the main metric scores predictions from positions t >= burn_in only
    transitions: str = "dirichlet"     # dirichlet: rows ~ Dirichlet(α) | doubly_stochastic: uniform on the Birkhoff polytope (Edelman et al.'s control)
    probe_transitions: Optional[str] = None  # the probe's chains: null = as `transitions` | dirichlet | doubly_stochastic


def validate(cfg) -> None:
    t = cfg.task
    if t.n_states < 2:
        raise ConfigError(f"task.n_states={t.n_states} must be >= 2 (a chain needs at least two states)")
    if not t.dirichlet_alpha > 0:
        raise ConfigError(f"task.dirichlet_alpha={t.dirichlet_alpha} must be > 0 (the Dirichlet concentration)")
    if t.initial_state not in INITIAL_STATES:
        raise ConfigError(f"task.initial_state={t.initial_state!r} is not allowed; choose one of "
                          f"{', '.join(INITIAL_STATES)}")
    for key in ("transitions", "probe_transitions"):
        if t[key] is not None and t[key] not in TRANSITIONS:
            raise ConfigError(f"task.{key}={t[key]!r} is not allowed; choose one of {', '.join(TRANSITIONS)}")
    if "doubly_stochastic" in (t.transitions, t.probe_transitions) and t.n_states > MAX_DOUBLY_STOCHASTIC_STATES:
        raise ConfigError(f"task.transitions=doubly_stochastic samples uniformly by rejection, which accepts too rarely "
                          f"for task.n_states={t.n_states}; use n_states <= {MAX_DOUBLY_STOCHASTIC_STATES}")
    if t.burn_in < 0:
        raise ConfigError(f"task.burn_in={t.burn_in} must be >= 0")
    if t.seq_len < t.burn_in + 2:
        raise ConfigError(f"task.seq_len={t.seq_len} leaves no prediction after task.burn_in={t.burn_in}; "
                          f"raise seq_len to >= {t.burn_in + 2} or lower burn_in")


class MarkovBatch(NamedTuple):
    tokens: jax.Array        # (B, T) int32 states
    transitions: jax.Array   # (B, k, k) each sequence's transition matrix P


# ----------------------------------------------------------------------------- measures (pure)


def stationary_distribution(P: jax.Array) -> jax.Array:
    """π with π P = π and Σ π = 1, from the linear system (I - Pᵀ + 1 1ᵀ) π = 1 (unique solution
    for an irreducible chain; Dirichlet rows are positive almost surely). Works on (..., k, k)."""
    k = P.shape[-1]
    A = jnp.eye(k) - jnp.swapaxes(P, -1, -2) + 1.0
    pi = jnp.linalg.solve(A, jnp.ones(P.shape[:-1])[..., None])[..., 0]
    pi = jnp.clip(pi, 0.0)
    return pi / pi.sum(-1, keepdims=True)


def complete_doubly_stochastic(block: jax.Array) -> jax.Array:
    """The k x k matrix whose top-left (k-1) x (k-1) block is `block` and whose last column and row make
    every row and column sum to 1: P[a, k-1] = 1 - Σ_{b<k-1} block[a, b], then P[k-1, b] = 1 - Σ_{a<k-1} P[a, b]
    (so P[k-1, k-1] = Σ block - (k - 2)). It is doubly stochastic iff every entry is >= 0, and every
    doubly-stochastic matrix is the completion of its own block: the (k-1)² free coordinates of the
    Birkhoff polytope."""
    top = jnp.concatenate([block, 1 - block.sum(-1, keepdims=True)], -1)           # (..., k-1, k)
    return jnp.concatenate([top, 1 - top.sum(-2, keepdims=True)], -2)               # (..., k, k)


def uniform_doubly_stochastic(key: jax.Array, k: int) -> jax.Array:
    """A k x k doubly-stochastic matrix drawn uniformly from the Birkhoff polytope (Edelman et al. 2024's
    `doubly_stochastic` chains, their k < 6 sampler): the (k-1)² free entries uniform on [0, 1),
    completed by `complete_doubly_stochastic`, redrawn until every entry is positive (rejection; the
    completion is affine, so what is accepted is uniform on the polytope). Its stationary distribution
    is uniform, so the in-context unigram statistics carry no information about the next token beyond
    what the uniform guess has. About 1 in 8 draws is accepted for k = 3 and 1 in 900 for k = 4 (hence MAX_DOUBLY_STOCHASTIC_STATES)."""
    def draw(key):
        return complete_doubly_stochastic(jax.random.uniform(key, (k - 1, k - 1)))

    def redraw(state):
        key, sub = jax.random.split(state[0])
        return key, draw(sub)

    key, sub = jax.random.split(key)
    return jax.lax.while_loop(lambda state: ~jnp.all(state[1] > 0), redraw, (key, draw(sub)))[1]


# Edelman et al.'s statistical-induction keys are the keys after every earlier occurrence
statistical_induction_keys = earlier_occurrence_keys


def unigram_predictor(tokens: jax.Array, k: int, alpha: float) -> jax.Array:
    """(B, T, k) in-context unigram prediction of x_{t+1} from x_0..x_t: the posterior mean under a
    symmetric Dirichlet(α) prior on the token frequencies, p_t(b) = (n_t(b) + α) / (t + 1 + kα)
    with n_t(b) = #{s <= t : x_s = b} (Edelman et al. 2024's unigram strategy, α = 1 there)."""
    counts = jnp.cumsum(jax.nn.one_hot(tokens, k), axis=-2)
    n = jnp.arange(1, tokens.shape[-1] + 1)[:, None]
    return (counts + alpha) / (n + k * alpha)


def bigram_predictor(tokens: jax.Array, k: int, alpha: float) -> jax.Array:
    """(B, T, k) in-context bigram prediction of x_{t+1}: the posterior mean of the row P[a, .] under
    its Dirichlet(α) prior, p_t(b) = (n_t(a->b) + α) / (n_t(a->.) + kα) with a = x_t and
    n_t(a->b) = #{s < t : x_s = a, x_{s+1} = b} (Edelman et al. 2024's Bayes-optimal bigram strategy).
    n_t(a->b) sums one-hot(x_j) over the statistical-induction keys j of query t."""
    keys = statistical_induction_keys(tokens).astype(jnp.float32)
    counts = jnp.einsum("...ij,...jv->...iv", keys, jax.nn.one_hot(tokens, k))
    return (counts + alpha) / (counts.sum(-1, keepdims=True) + k * alpha)


def predictor_losses(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """(B, T-1) cross-entropy -log p_t(x_{t+1}) of a predictor's (B, T, k) distributions."""
    p = jnp.take_along_axis(probs[..., :-1, :], tokens[..., 1:, None], -1)[..., 0]
    return -jnp.log(p)


def kl_to_model(probs: jax.Array, logits: jax.Array) -> jax.Array:
    """(B, T-1) KL(p_t || q_t) = Σ_b p_t(b) (log p_t(b) - log q_t(b)), q = softmax(logits): how far the
    model's prediction at position t is from a predictor's (Edelman et al. 2024, Fig. 1's distances)."""
    p = probs[..., :-1, :]
    logq = jax.nn.log_softmax(logits[..., :-1, :], -1)
    return jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-30)) - logq), -1)


def oracle_losses(tokens: jax.Array, transitions: jax.Array) -> jax.Array:
    """(B, T-1) -log P[x_t, x_{t+1}] under each sequence's true transition matrix: the loss of a
    predictor that knows P (a lower bound no in-context estimate reaches on a finite context)."""
    rows = jnp.take_along_axis(transitions, tokens[..., :-1, None], -2)            # (B, T-1, k)
    p = jnp.take_along_axis(rows, tokens[..., 1:, None], -1)[..., 0]
    return -jnp.log(jnp.maximum(p, 1e-30))


def statistical_induction_score(pattern: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per head: m_i = Σ_{j in S_i} A[i, j], the attention from query i to its statistical-induction
    keys S_i = {j <= i : x_{j-1} = x_i}, and the baseline-corrected c_i = (m_i - u_i) / (1 - u_i) with
    u_i = |S_i| / (i + 1), the mass uniform causal attention puts there (u_i < 1 since 0 ∉ S_i).
    Means over every query with S_i non-empty. Raw: 1 for a perfect head, about 1/k for uniform
    attention; corrected: 1 for a perfect head, 0 for uniform attention (as Singh et al.'s corrected
    previous-token score). `pattern` (B, H, T, T). Returns (raw, corrected), two (H,) arrays."""
    keys = statistical_induction_keys(tokens)                                     # (B, T, T)
    T = tokens.shape[-1]
    size = keys.sum(-1)                                                           # (B, T)
    u = size / jnp.arange(1, T + 1)
    mass = jnp.sum(jnp.where(keys[:, None], pattern, 0.0), -1)                   # (B, H, T)
    corrected = (mass - u[:, None]) / (1 - u[:, None])
    rows = jnp.broadcast_to((size > 0)[:, None], mass.shape)
    n = jnp.maximum(rows.sum((0, 2)), 1)
    return (jnp.where(rows, mass, 0.0).sum((0, 2)) / n, jnp.where(rows, corrected, 0.0).sum((0, 2)) / n)


# ----------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class MarkovTask(BaseTask):
    name = "markov"
    main_metric, main_accuracy, main_metric_label = "loss_markov", "acc_markov", "loss after burn-in"
    logs_icl_score = True
    # reference predictors' losses (same positions as the main metric) for the loss plot
    baselines = {"loss_unigram": "in-context unigram predictor", "loss_bigram": "in-context bigram predictor (Bayes)",
                 "loss_oracle": "true transition matrix"}

    seq_len: int
    n_states: int
    dirichlet_alpha: float
    initial_state: str
    burn_in: int
    probe_size: int
    probe_seed: int
    transitions: str = "dirichlet"
    probe_transitions: Optional[str] = None

    @property
    def model_vocab_size(self) -> int:
        return self.n_states

    def phase_threshold(self, phase_cfg) -> tuple[float, float]:
        """The bigram phase change: threshold at bigram + frac·(unigram - bigram) (frac =
        loss_threshold_frac, halfway by default) of the two predictors' losses on the probe, and a
        minimum drop of loss_min_drop_frac·(unigram - bigram). Fractions of ln k do not fit here:
        even the Bayes-optimal loss is far from 0."""
        uni, bi = self.baseline_losses()
        gap = uni - bi
        return bi + phase_cfg.loss_threshold_frac * gap, phase_cfg.loss_min_drop_frac * gap

    def head_formed(self, scores, phase_cfg) -> bool:
        """A statistical induction head formed when its corrected score ends at or above
        measures.phase.score_threshold (the mean of the last FORMED_TAIL logged values) having risen by
        at least score_min_rise from the first logged one, however early or gradual the rise.

        The general rule also wants the rise to be a transition: after a plateau, or abrupt enough for a
        sigmoid. That fits the token-induction score, which a random model's diffuse attention already
        scores above zero, but not this one: the corrected score is 0 for uniform causal attention
        (0 at initialisation), so reaching the threshold is already the head's attention mass moving
        onto the statistical-induction keys. Edelman et al.'s heads here start to rise within the first
        ~100 steps, often before a second log step shows a plateau, and climb in two stages (a fast rise
        to ~0.45, then a slow one to ~0.75), so the general rule called heads scoring 0.71-0.76 "not
        formed". When the rise happened (its timing) stays the detectors' job (summary.json "phase")."""
        values = np.asarray(scores, float)
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return False
        end = float(values[-FORMED_TAIL:].mean())
        return end >= phase_cfg.score_threshold and end - float(values[0]) >= phase_cfg.score_min_rise

    def trained_check(self) -> TrainedCheck:
        """Against ln k, with the bar halfway from it to the weaker of the in-context unigram and bigram
        predictors that beat it (the unigram stage is Edelman et al.'s first phase): even the Bayes-optimal
        loss is close to ln k (1.43 against 1.61 for k = 5, α = 1), so 5 % of ln k would call a model at the
        unigram stage untrained. Without a predictor that beats ln k, any loss below it counts."""
        beat = [loss for loss in self.baseline_losses() if loss < self.chance_loss]
        bar = self.chance_loss - 0.5 * (self.chance_loss - max(beat)) if beat else self.chance_loss
        return TrainedCheck(self.main_metric, self.chance_loss, self.chance_text, bar)

    def baseline_losses(self) -> tuple[float, float]:
        """(unigram, bigram) predictors' losses after burn-in on the probe."""
        return _baselines(self)

    def _sample_one(self, key: jax.Array) -> MarkovBatch:
        k, T = self.n_states, self.seq_len
        k_P, k_0, k_u = jax.random.split(key, 3)
        if self.transitions == "doubly_stochastic":
            P = uniform_doubly_stochastic(k_P, k)
        else:
            P = jax.random.dirichlet(k_P, jnp.full((k,), self.dirichlet_alpha), (k,))
        pi = stationary_distribution(P) if self.initial_state == "stationary" else jnp.full((k,), 1.0 / k)
        x0 = jax.random.categorical(k_0, jnp.log(pi)).astype(jnp.int32)
        cum = jnp.cumsum(P, -1)

        def step(x, u):   # inverse CDF: the first b with cum[x, b] > u
            nxt = jnp.minimum(jnp.sum(cum[x] <= u), k - 1).astype(jnp.int32)
            return nxt, nxt

        _, rest = jax.lax.scan(step, x0, jax.random.uniform(k_u, (T - 1,)))
        return MarkovBatch(jnp.concatenate([x0[None], rest]), P)

    def sample(self, key: jax.Array, batch_size: int) -> MarkovBatch:
        return jax.vmap(self._sample_one)(jax.random.split(key, batch_size))

    def probe(self, compiled=None) -> MarkovBatch:
        """The fixed probe, of `probe_transitions` chains when set (e.g. a model trained on doubly-stochastic
        chains measured on Dirichlet ones, as Edelman et al. test it), else of the training chains."""
        if self.probe_transitions in (None, self.transitions):
            return super().probe(compiled)
        return replace(self, transitions=self.probe_transitions, probe_transitions=None).probe(compiled)

    def scored(self) -> jax.Array:
        """(T-1,) bool: the predictions (from positions t >= burn_in) the main metric averages."""
        return jnp.arange(self.seq_len - 1) >= self.burn_in

    def main_scores(self, logits, batch: MarkovBatch):
        mask = self.scored()[None]
        loss = masked_mean(token_losses(logits, batch.tokens), mask)
        correct = jnp.argmax(logits[:, :-1], -1) == batch.tokens[:, 1:]
        return loss, masked_mean(correct.astype(jnp.float32), mask)

    def induction_attention(self, batch: MarkovBatch) -> tuple[jax.Array, jax.Array]:
        """Uniform weights over each query's statistical-induction keys {j <= i : x_{j-1} = x_i}
        (the head that computes the in-context bigram counts); rows: queries with such a key."""
        keys = statistical_induction_keys(batch.tokens).astype(jnp.float32)
        size = keys.sum(-1, keepdims=True)
        return keys / jnp.maximum(size, 1.0), size[..., 0] > 0

    def measures(self, model, params, probe: MarkovBatch, forward, measures_cfg, snapshot: bool) -> dict:
        k, a, tokens = self.n_states, self.dirichlet_alpha, probe.tokens
        logits, _, heads = attention_measures(forward, probe, model.n_layers, snapshot, {
            "induction": lambda p: statistical_induction_score(p, tokens)[1],
            "induction_raw": lambda p: statistical_induction_score(p, tokens)[0]})
        mask = self.scored()[None]
        losses = token_losses(logits, tokens)
        loss_main, acc_main = self.main_scores(logits, probe)
        uni, bi = unigram_predictor(tokens, k, a), bigram_predictor(tokens, k, a)
        early, late = icl_positions(self.seq_len, measures_cfg.icl_early, measures_cfg.icl_late)
        loss_by_pos = losses.mean(0)
        out = {
            "loss": losses.mean(),
            "loss_markov": loss_main,
            "acc_markov": acc_main,
            "loss_unigram": masked_mean(predictor_losses(uni, tokens), mask),
            "loss_bigram": masked_mean(predictor_losses(bi, tokens), mask),
            "loss_oracle": masked_mean(oracle_losses(tokens, probe.transitions), mask),
            "kl_unigram": masked_mean(kl_to_model(uni, logits), mask),
            "kl_bigram": masked_mean(kl_to_model(bi, logits), mask),
            "icl_score": icl_score(loss_by_pos, early, late),
            "loss_by_pos": loss_by_pos,
            **heads,
            "copying": copying_scores(params, model.n_layers),
        }
        return out


@lru_cache(maxsize=32)
def _baselines(task: MarkovTask) -> tuple[float, float]:
    probe = task.probe()
    mask = task.scored()[None]

    @jax.jit
    def losses(tokens):
        k, a = task.n_states, task.dirichlet_alpha
        return (masked_mean(predictor_losses(unigram_predictor(tokens, k, a), tokens), mask),
                masked_mean(predictor_losses(bigram_predictor(tokens, k, a), tokens), mask))
    uni, bi = losses(probe.tokens)
    return float(uni), float(bi)


Task = MarkovTask
