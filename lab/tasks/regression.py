"""Linear regression in context (von Oswald et al. 2022, "Transformers learn in-context by gradient descent").

Each sequence has its own weight vector w ~ N(0, I_d). Inputs x_i are drawn i.i.d. from U(-1, 1)^d (von
Oswald et al.'s choice; `x_dist=normal` gives N(0, I_d)), targets are y_i = w·x_i + σ ε_i with ε_i ~ N(0, 1)
(the query's target too). The model reads N context tokens e_i = [x_i, y_i] and a query token [x_q, 0]
as continuous `features` (B, T, d+1), T = N + 1, which it projects with a learned W_F; every token id is 0
(a vocabulary of one id, so W_E[0] is just a learned constant added to every position, and the query is
told apart from the context only by its y slot being 0, as in the paper). The model's output is one
number per position (n_outputs = 1); its value at the query position is the prediction ŷ.

Loss: ½(ŷ − y_q)² (von Oswald et al.'s squared loss with the ½), averaged over sequences. Predicting 0
costs E[½ y_q²] = ½(d E[x²] + σ²) = d/6 + σ²/2 for U(-1, 1) inputs: the chance loss.

The reference is one step of gradient descent from w = 0 on the context's squared loss
L(w) = ½ Σ_i (w·x_i − y_i)², i.e. w_1 = η Σ_i y_i x_i and ŷ_GD = η Σ_i y_i x_i·x_q, with the learning
rate η* that minimises the expected query loss of ŷ_GD over this data distribution (closed form in
`gd_learning_rate`). Von Oswald et al. show a single linear self-attention layer can implement this step
exactly and that trained ones converge to it; `gd_loss`, `pred_distance` and `sensitivity_cosine` test
that. Because y_q is odd in w while every term of a one-layer linear-attention output that is not of
the form Σ_i y_i (x_q^T A x_i + ...) is even in w, the best one-layer model *is* ŷ_GD with A = η* I (by
the coordinate symmetry of the input distribution), so loss_query → gd_loss is the expected end point.

For a K-layer model the measures also compare it with K steps of GD from w = 0 with one fitted rate
(`gd_steps_loss`) and with K steps of GD++ (`gdpp_loss`, `pred_distance_gdpp`, `sensitivity_cosine_gdpp`),
von Oswald et al.'s multi-layer references: GD++ also maps every input by x ← (I − γ_l Σ_i x_i x_iᵀ) x
at each step (`gdpp_prediction`); both are fitted on FIT_SIZE sequences of the training distribution
(`fit_references`). With model.attn_mask=context (every token reads the context tokens, as in their
code) K linear layers can run either exactly; under the causal mask they cannot (a context token
would only read the tokens before it).

Per-head scores (so the lab's plots and phase detection have their usual keys):
  - "induction" here is the *GD-kernel alignment* of the head (`gd_attention_score`): the Pearson
    correlation, over the context keys, between the query's attention row and the kernel x_q·x_i that
    one GD step attends with, averaged over probe sequences, absolute value (the sign of a linear head's
    scores is arbitrary: its value/output weights can flip it). 1 for a GD head, ≈ 0 for an unrelated one.
  - "prev_token" / "prev_token_corrected" are lab.measures.prev_token_scores on the pattern as it is; with
    linear attention the "pattern" is the raw causal scores (not probabilities), so these are reported
    for completeness but have no previous-token meaning here.
There is no ideal induction pattern for this task (`induction_attention` is the base class's
NotImplementedError): the `induction` clamp value does not apply.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lab.config.schema import TaskConfig
from lab.core import ConfigError, choice, positive
from lab.measures.heads import attention_measures
from lab.tasks.base import Task as BaseTask

X_MOMENTS = {"uniform": (1 / 3, 1 / 5), "normal": (1.0, 3.0)}   # (E[x²], E[x⁴]) of one input coordinate


@dataclass
class Config(TaskConfig):
    """Linear regression in context: N pairs (x_i, w·x_i + σε) and a query x_q, w fresh per sequence."""
    name: str = "regression"
    seq_len: int = 11          # T = N + 1 (the N context tokens and the query); must equal n_context + 1
    dim: int = 10              # d: input dimension; w ~ N(0, I_d); tokens have d + 1 features [x, y]
    n_context: int = 10        # N: context pairs (x_i, y_i) before the query
    noise: float = 0.0         # σ: y_i = w·x_i + σ ε_i, ε_i ~ N(0, 1) (query target included)
    x_dist: str = "uniform"    # x_i ~ U(-1, 1)^d (von Oswald et al.) | normal: N(0, I_d)
    probe_size: int = 1024     # the GD comparison is a mean over probe sequences (heavy-tailed): keep it large


def validate(cfg) -> None:
    t = cfg.task
    positive("task.dim", t.dim)
    positive("task.n_context", t.n_context)
    if t.noise < 0:
        raise ConfigError(f"task.noise={t.noise} must be >= 0 (the standard deviation σ of the label noise)")
    choice("task.x_dist", t.x_dist, tuple(X_MOMENTS))
    if t.seq_len != t.n_context + 1:
        raise ConfigError(f"task.seq_len={t.seq_len} must equal task.n_context + 1 = {t.n_context + 1} "
                          f"(N context tokens and the query); set task.seq_len={t.n_context + 1}")


class RegressionBatch(NamedTuple):
    tokens: jax.Array     # (B, T) int32, all 0
    features: jax.Array   # (B, T, d+1): rows [x_i, y_i] for i < N, then [x_q, 0]
    w: jax.Array          # (B, d) the sequence's weight vector
    target: jax.Array     # (B,) y_q = w·x_q + σ ε_q


# ---------------------------------------------------------------------------------- measures (pure)

def gd_learning_rate(dim: int, n_context: int, noise: float, x_dist: str = "uniform") -> float:
    """η* = argmin_η E[½(η Σ_i y_i x_i·x_q − y_q)²] for w ~ N(0, I_d), x i.i.d. with per-coordinate
    moments m2 = E[x²], m4 = E[x⁴] and noise σ. With s = Σ_i y_i x_i: E[ŷ y_q] = η m2 E[s·w] = η m2² N d and
    E[ŷ²] = η² m2 E|s|², E|s|² = N d (m4 + (d + N − 2) m2² + σ² m2), so
        η* = m2 / (m4 + (d + N − 2) m2² + σ² m2)
    (U(-1,1): m2 = 1/3, m4 = 1/5; N(0,1): η* = 1/(d + N + 1 + σ²)). Derived here from the setup of
    von Oswald et al. 2022 (their η is fitted; this is its population optimum)."""
    m2, m4 = X_MOMENTS[x_dist]
    return m2 / (m4 + (dim + n_context - 2) * m2 ** 2 + noise ** 2 * m2)


def gd_expected_loss(dim: int, n_context: int, noise: float, x_dist: str = "uniform") -> float:
    """Population loss of one GD step with η*: ½(d m2 + σ² − η* N d m2²) (from the moments in
    `gd_learning_rate`; E[y_q²] = d m2 + σ²)."""
    m2, _ = X_MOMENTS[x_dist]
    eta = gd_learning_rate(dim, n_context, noise, x_dist)
    return 0.5 * (dim * m2 + noise ** 2 - eta * n_context * dim * m2 ** 2)


def split_features(features: jax.Array):
    """(x (B, N, d), y (B, N), x_q (B, d)) from token features (B, N+1, d+1)."""
    return features[:, :-1, :-1], features[:, :-1, -1], features[:, -1, :-1]


def gd_prediction(features: jax.Array, eta) -> jax.Array:
    """ŷ_GD = η Σ_i y_i x_i·x_q: the query prediction after one gradient-descent step from w = 0 on
    L(w) = ½ Σ_i (w·x_i − y_i)² (von Oswald et al. 2022, eq. 2 with W_0 = 0). Returns (B,)."""
    x, y, xq = split_features(features)
    return eta * jnp.einsum("bi,bid,bd->b", y, x, xq)


def gdpp_prediction(features: jax.Array, etas, gammas=None) -> jax.Array:
    """ŷ after K = len(etas) steps of GD++ from w = 0 (von Oswald et al. 2022, sec. 4 "GD++"; the K-layer
    construction of their code, src/data.py `create_weights(lin_diag=True)`): step l takes a GD step
    with rate η_l on the current inputs and, in parallel, transforms every input (context and query)
    by x ← (I − γ_l C_l) x with C_l = Σ_i x_i x_iᵀ over the current context inputs. Tracking the
    residuals r_i = y_i − w·x_i and the prediction p = w·x_q, step l is
        p ← p + η_l Σ_i (x_q·x_i) r_i,   r_j ← r_j − η_l Σ_i (x_j·x_i) r_i,   x ← (I − γ_l C_l) x.
    gammas=None (all 0) is K steps of plain GD with rates η_l; with K = 1 GD++ is one GD step. The
    last γ never reaches ŷ. features (B, N+1, d+1); etas, gammas (K,). Returns (B,)."""
    x, r, xq = split_features(features)
    p = jnp.zeros(r.shape[0], features.dtype)
    gammas = jnp.zeros(len(etas)) if gammas is None else gammas
    for l in range(len(etas)):
        kq = jnp.einsum("bd,bid->bi", xq, x)                  # x_q·x_i
        kc = jnp.einsum("bjd,bid->bji", x, x)                 # x_j·x_i
        cov = jnp.einsum("bid,bie->bde", x, x)                # C_l
        p = p + etas[l] * jnp.sum(kq * r, -1)
        r = r - etas[l] * jnp.einsum("bji,bi->bj", kc, r)
        x = x - gammas[l] * jnp.einsum("bde,bie->bid", cov, x)
        xq = xq - gammas[l] * jnp.einsum("bde,be->bd", cov, xq)
    return p


def _split_theta(theta, steps: int):
    """GD++ parameters as one vector [η_1..η_K, γ_1..γ_{K-1}] (γ_K never reaches ŷ) -> (etas, gammas)."""
    return theta[:steps], jnp.concatenate([theta[steps:], jnp.zeros(1)])


@functools.partial(jax.jit, static_argnums=(3, 4))
def _reference_loss(theta, features, target, steps: int, shared: bool):
    """(loss, gradient in θ) of K GD steps with one rate θ[0] (shared) or of GD++ with θ = [η, γ]."""
    def loss(t):
        etas, gammas = (jnp.full(steps, t[0]), None) if shared else _split_theta(t, steps)
        return half_squared_error(gdpp_prediction(features, etas, gammas), target)
    return jax.value_and_grad(loss)(theta)


def _minimize(features, target, steps: int, shared: bool, theta0) -> tuple[np.ndarray, float]:
    """BFGS (scipy) from theta0 on the reference loss; returns theta0 unless the result is better."""
    from scipy.optimize import minimize

    def f(t):
        value, grad = _reference_loss(jnp.asarray(t, jnp.float32), features, target, steps, shared)
        return float(value), np.asarray(grad, np.float64)
    res = minimize(f, np.asarray(theta0, np.float64), jac=True, method="BFGS")
    start = f(theta0)[0]
    return (res.x, float(res.fun)) if res.fun <= start else (np.asarray(theta0, np.float64), start)


def _fit_references(features, target, steps: int, eta_start: float):
    """(η_GD, GD loss, GD++ θ, GD++ loss) fitted on (features, target); see `fit_references`."""
    grid = eta_start * np.linspace(0.02, 2.0, 100)   # the paper's grid search, then a refinement
    losses = [float(_reference_loss(jnp.array([e], jnp.float32), features, target, steps, True)[0]) for e in grid]
    (eta,), gd = _minimize(features, target, steps, True, [grid[int(np.argmin(losses))]])
    theta0 = np.concatenate([np.full(steps, eta), np.zeros(steps - 1)])   # = GD: GD++ can only improve on it
    theta, pp = _minimize(features, target, steps, False, theta0)
    return eta, gd, theta, pp


FIT_SIZE = 10000     # sequences the references are fitted on (von Oswald et al. fit on 10k tasks too)
FIT_SEED_OFFSET = 1  # numpy seed probe_seed + 1: a sample apart from the probe


def fit_sample(task: "RegressionTask", n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, N+1, d+1), targets (n,)) drawn with numpy from the task's distribution (as
    `RegressionTask.sample`, whose compilation for one more batch size costs more than the fit)."""
    rng = np.random.default_rng(seed)
    d, T = task.dim, task.seq_len
    w = rng.standard_normal((n, d))
    x = rng.uniform(-1, 1, (n, T, d)) if task.x_dist == "uniform" else rng.standard_normal((n, T, d))
    y = np.einsum("ntd,nd->nt", x, w) + task.noise * rng.standard_normal((n, T))
    features = np.concatenate([x, y[..., None]], -1).astype(np.float32)
    features[:, -1, -1] = 0.0
    return features, y[:, -1].astype(np.float32)


class References(NamedTuple):
    steps: int           # K
    eta_gd: float        # the one rate of K plain GD steps (von Oswald et al.: one tuned lr for every step)
    etas_gdpp: tuple     # GD++'s η_1..η_K
    gammas_gdpp: tuple   # GD++'s γ_1..γ_K (γ_K = 0: it never reaches ŷ)
    gd_fit_loss: float   # losses on the fitting sample
    gdpp_fit_loss: float


@functools.lru_cache(maxsize=16)
def fit_references(task: "RegressionTask", steps: int) -> References:
    """K = `steps` steps of GD (one rate η for every step, fitted by a grid search then BFGS, as von
    Oswald et al. scan their lr) and of GD++ (per-step η_l, γ_l fitted by BFGS from that GD solution;
    they fit theirs by Adam) on FIT_SIZE fresh sequences of the task's distribution. GD++ starts at
    the GD solution (γ = 0), so its fitted loss is never above GD's. Concrete numbers, computed once
    per (task, K), also when first asked for inside a jit trace."""
    with jax.ensure_compile_time_eval():
        features, target = fit_sample(task, FIT_SIZE, task.probe_seed + FIT_SEED_OFFSET)
        eta, gd, theta, pp = _fit_references(jnp.asarray(features), jnp.asarray(target), steps, task.gd_lr)
        etas, gammas = _split_theta(jnp.asarray(theta), steps)
        return References(steps, float(eta), tuple(map(float, etas)), tuple(map(float, gammas)), float(gd), float(pp))


def gdpp_sensitivity(features: jax.Array, etas, gammas) -> jax.Array:
    """∂ŷ_GD++/∂x_q (B, d), by autodiff of `gdpp_prediction` (ŷ is linear in x_q; sequences do not
    interact, so the gradient of the batch sum is each sequence's own)."""
    def total(xq):
        return gdpp_prediction(features.at[:, -1, :-1].set(xq), etas, gammas).sum()
    return jax.grad(total)(features[:, -1, :-1])


def gd_sensitivity(features: jax.Array) -> jax.Array:
    """∂ŷ_GD/∂x_q = η Σ_i y_i x_i, up to the positive factor η (cosines do not need it). Returns (B, d)."""
    x, y, _ = split_features(features)
    return jnp.einsum("bi,bid->bd", y, x)


def half_squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """mean_b ½(ŷ_b − y_b)² (von Oswald et al.'s loss)."""
    return 0.5 * jnp.mean((pred - target) ** 2)


def r2_vs_zero(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 − Σ_b (ŷ_b − y_b)² / Σ_b y_b²: the fraction of the target's second moment explained, against
    the chance predictor ŷ = 0 (the prior mean of y). 0 at chance, 1 for a perfect prediction."""
    return 1.0 - jnp.sum((pred - target) ** 2) / jnp.maximum(jnp.sum(target ** 2), 1e-12)


def pred_distance(pred: jax.Array, gd_pred: jax.Array) -> jax.Array:
    """mean_b (ŷ_model,b − ŷ_GD,b)² (von Oswald et al.'s "preds diff", without their ½)."""
    return jnp.mean((pred - gd_pred) ** 2)


def sensitivity_cosine(grad_model: jax.Array, grad_gd: jax.Array, eps: float = 1e-12) -> jax.Array:
    """mean_b cos(∂ŷ_model/∂x_q, ∂ŷ_GD/∂x_q) over (B, d) gradients (von Oswald et al.'s "model
    cosine"). 1: the model's prediction moves with x_q exactly as one GD step's does."""
    dot = jnp.sum(grad_model * grad_gd, -1)
    norms = jnp.linalg.norm(grad_model, axis=-1) * jnp.linalg.norm(grad_gd, axis=-1)
    return jnp.mean(dot / jnp.maximum(norms, eps))


def gd_attention_score(pattern: jax.Array, features: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Per head: |mean_b corr_i(pattern[b, h, N, i], x_q·x_i)|, the Pearson correlation over the context
    keys i < N between the query row of the pattern (B, H, T, T) and the kernel x_q·x_i with which one
    GD step weighs the context values y_i (ŷ_GD = η Σ_i (x_q·x_i) y_i). Absolute value of the mean,
    because a linear head may carry the sign in its value/output weights. Returns (H,)."""
    x, _, xq = split_features(features)
    kernel = jnp.einsum("bid,bd->bi", x, xq)[:, None, :]              # (B, 1, N)
    row = pattern[:, :, -1, :-1]                                       # (B, H, N)
    a = row - row.mean(-1, keepdims=True)
    k = kernel - kernel.mean(-1, keepdims=True)
    corr = jnp.sum(a * k, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(k, axis=-1), eps)
    return jnp.abs(corr.mean(0))


def query_sensitivity(forward, batch: RegressionBatch) -> jax.Array:
    """∂ŷ_model/∂x_q per sequence (B, d): the gradient of the sum over the batch of the query outputs
    with respect to the x part of the query tokens' features (sequences do not interact, so each row
    is that sequence's own gradient). `forward(batch, names) -> (logits, cache)`."""
    def total(xq):
        features = batch.features.at[:, -1, :-1].set(xq)
        logits, _ = forward(batch._replace(features=features), ())
        return logits[:, -1, 0].sum()
    return jax.grad(total)(batch.features[:, -1, :-1])


@dataclass(frozen=True)
class RegressionTask(BaseTask):
    name = "regression"
    main_metric, main_accuracy, main_metric_label = "loss_query", "r2_query", "query loss"
    baselines = {"gd_loss": "one GD step", "gd_steps_loss": "K GD steps (K = layers)",
                 "gdpp_loss": "K GD++ steps"}

    seq_len: int
    dim: int
    n_context: int
    noise: float
    x_dist: str
    probe_size: int
    probe_seed: int

    @property
    def feature_dim(self) -> int:
        return self.dim + 1

    @property
    def model_vocab_size(self) -> int:
        return 1

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def chance_loss(self) -> float:
        """E[½ y_q²] = ½(d E[x²] + σ²): the loss of predicting 0 (d/6 + σ²/2 for U(-1, 1))."""
        return 0.5 * (self.dim * X_MOMENTS[self.x_dist][0] + self.noise ** 2)

    @property
    def chance_text(self) -> str:
        return "½(d·E[x²] + σ²)"   # the loss of predicting 0

    @property
    def gd_lr(self) -> float:
        return gd_learning_rate(self.dim, self.n_context, self.noise, self.x_dist)

    @property
    def gd_loss_expected(self) -> float:
        return gd_expected_loss(self.dim, self.n_context, self.noise, self.x_dist)

    def phase_threshold(self, phase_cfg) -> tuple[float, float]:
        """The solved loss is one GD step's, far above 0 when N is not ≫ d: scale between that and the
        chance loss, threshold = L_GD + frac (L_0 − L_GD), minimum drop = frac' (L_0 − L_GD)."""
        span = self.chance_loss - self.gd_loss_expected
        return (self.gd_loss_expected + phase_cfg.loss_threshold_frac * span, phase_cfg.loss_min_drop_frac * span)

    # ---- data ----
    def _sample_one(self, key: jax.Array) -> RegressionBatch:
        d, T = self.dim, self.seq_len
        k_w, k_x, k_n = jax.random.split(key, 3)
        w = jax.random.normal(k_w, (d,))
        if self.x_dist == "uniform":
            x = jax.random.uniform(k_x, (T, d), minval=-1.0, maxval=1.0)
        else:
            x = jax.random.normal(k_x, (T, d))
        y = x @ w + self.noise * jax.random.normal(k_n, (T,))
        features = jnp.concatenate([x, y[:, None]], -1).at[-1, -1].set(0.0)
        return RegressionBatch(jnp.zeros(T, jnp.int32), features, w, y[-1])

    def sample(self, key: jax.Array, batch_size: int) -> RegressionBatch:
        return jax.vmap(self._sample_one)(jax.random.split(key, batch_size))

    # ---- training ----
    @staticmethod
    def prediction(logits: jax.Array) -> jax.Array:
        """ŷ: the model's single output at the query (last) position. (B,)"""
        return logits[:, -1, 0]

    def loss(self, logits: jax.Array, batch: RegressionBatch) -> jax.Array:
        return half_squared_error(self.prediction(logits), batch.target)

    trajectory_kind = "predictions of y"

    def trajectory_outputs(self, logits, batch: RegressionBatch):
        """The predictions of y (what the loss reads)."""
        return self.prediction(logits).reshape(-1)

    def main_scores(self, logits, batch: RegressionBatch):
        pred = self.prediction(logits)
        return half_squared_error(pred, batch.target), r2_vs_zero(pred, batch.target)

    # ---- measures ----
    def measures(self, model, params, probe: RegressionBatch, forward, measures_cfg, snapshot: bool) -> dict:
        logits, _, heads = attention_measures(forward, probe, model.n_layers, snapshot,
                                              {"induction": lambda p: gd_attention_score(p, probe.features)})
        pred = self.prediction(logits)
        gd_pred = gd_prediction(probe.features, self.gd_lr)
        loss, r2 = self.main_scores(logits, probe)
        ref = fit_references(self, model.n_layers)            # K = the model's depth
        etas, gammas = jnp.asarray(ref.etas_gdpp), jnp.asarray(ref.gammas_gdpp)
        gdk_pred = gdpp_prediction(probe.features, jnp.full(ref.steps, ref.eta_gd))
        gdpp_pred = gdpp_prediction(probe.features, etas, gammas)
        sens = query_sensitivity(forward, probe)
        return {
            "gd_steps_loss": half_squared_error(gdk_pred, probe.target),
            "gdpp_loss": half_squared_error(gdpp_pred, probe.target),
            "pred_distance_gdpp": pred_distance(pred, gdpp_pred),
            "sensitivity_cosine_gdpp": sensitivity_cosine(sens, gdpp_sensitivity(probe.features, etas, gammas)),
            "loss": loss,
            "loss_query": loss,
            "r2_query": r2,
            "gd_loss": half_squared_error(gd_pred, probe.target),
            "pred_distance": pred_distance(pred, gd_pred),
            "sensitivity_cosine": sensitivity_cosine(sens, gd_sensitivity(probe.features)),
            **heads,
        }


Task = RegressionTask
