"""The local learning coefficient (LLC, Lau et al. 2023; Hoogland et al. 2024), estimated with SGLD
around a parameter point w*, for any loss: pure JAX, chains as a batch axis, so seeds x checkpoints
x chains run as one compiled program (the caller vmaps or maps over seeds and checkpoints).

Definition. With L(w) the loss on a batch of n samples and nβ = n / log n by default,

    λ̂(w*) = nβ · (E_w[L(w)] − L(w*)),

the expectation over the localised, tempered posterior p(w) ∝ exp(−nβ L(w) − (γ/2)|w − w*|²),
sampled by SGLD from w*:

    w ← w − (ε/2) · G · (nβ ∇L_batch(w) + γ (w − w*)) + N(0, ε G),

G = 1 (plain SGLD) or, with `precondition="rmsprop"` (Li et al. 2016's pSGLD, which Timaeus'
benchmarks found best), G = 1 / (sqrt(v̂) + eps) with v the running mean (decay `alpha`,
bias-corrected) of the squared drift nβ ∇L + γ (w − w*). A fresh batch is sampled at every step.
The preconditioner follows the chain, so it correlates with the recent position and biases the
stationary law: averaging over ~1000 steps (alpha 0.999) kept the calibration quadratic within
3 %, over ~100 (alpha 0.99) put it 13-23 % high.

The difference E[L(w)] − L(w*) is taken per draw on the *same* batch (`baseline="paired"`): the
batch-to-batch noise of L cancels, at the cost of one more forward pass per step. `"init"` uses the
loss at w* on the chain's first batch, as `devinterp` does.

Why not blackjax: its stochastic-gradient samplers (sgld, sghmc, csgld, sgnht) have no
preconditioned SGLD, and the localisation term would enter through a custom gradient estimator
anyway; one Optax-style transformation (`sgld`) serves both variants with the same vmapped code.

Diagnostics per estimate (`diagnose`, NumPy): chains whose loss or parameters went non-finite are
dropped from the estimate and flagged (a step size too large blows chains up); an estimate is
"not settled" when the chains' mean loss still drifts between the third and the last quarter of
the draws by more than `settle_tol` of the estimate plus two standard errors; a negative estimate
means w* is not a local minimum at this temperature or the chains wandered off.

Calibration (tests/test_llc.py): for L = Σ a_i w_i² (regular, d parameters) λ = d/2; for
L = Σ_i w_i^{p_i} with even p_i, E[w^p] under exp(−nβ w^p) is 1/(p nβ), so the estimator's
expectation is Σ 1/p_i exactly at any nβ (without localisation), which is also that loss's learning
coefficient.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclass(frozen=True)
class Settings:
    chains: int = 4
    draws: int = 30             # SGLD steps per chain after burn-in
    burn_in: int = 15           # SGLD steps first dropped
    step_size: float = 1e-3     # ε
    localization: float = 100.0  # γ
    nbeta: Optional[float] = None  # nβ; None: batch_size / log(batch_size)
    batch_size: int = 16        # samples per SGLD step
    precondition: str = "none"  # none | rmsprop
    alpha: float = 0.999        # rmsprop: decay of the squared-drift average (0.99 biased the calibration quadratic +13-23 %)
    eps: float = 0.1            # rmsprop: added to sqrt(v̂), in drift units: at w* the drift is 0, and 1/sqrt(v̂) unbounded
    baseline: str = "paired"    # paired | init
    settle_tol: float = 0.2

    @property
    def steps(self) -> int:
        return self.burn_in + self.draws

    @property
    def nbeta_value(self) -> float:
        return self.nbeta if self.nbeta is not None else self.batch_size / math.log(self.batch_size)

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "nbeta": self.nbeta_value})


def check_settings(s: Settings) -> Optional[str]:
    """Why these settings cannot run, in one line; None if they can."""
    if s.chains < 1 or s.draws < 4:
        return "needs chains >= 1 and draws >= 4"
    if s.burn_in < 0 or s.batch_size < 2:
        return "needs burn_in >= 0 and batch_size >= 2 (nβ = n / log n)"
    if not s.step_size > 0 or s.localization < 0 or (s.nbeta is not None and not s.nbeta > 0):
        return "needs step_size > 0, localization >= 0 and nbeta > 0 (or null)"
    if s.precondition not in ("none", "rmsprop"):
        return f"precondition={s.precondition!r}: use none or rmsprop"
    if s.baseline not in ("paired", "init"):
        return f"baseline={s.baseline!r}: use paired or init"
    return None


class SGLDState(NamedTuple):
    key: jax.Array
    nu: Any            # running mean of the squared drift (rmsprop), else ()
    count: jax.Array


def sgld(step_size: float, nbeta: float, localization: float, center, key: jax.Array,
         precondition: str = "none", alpha: float = 0.999, eps: float = 0.1) -> optax.GradientTransformation:
    """SGLD (or RMSProp-preconditioned SGLD) around `center` as an Optax transformation: `update`
    takes the gradient of the batch loss L and the current parameters, and returns the move
    −(ε/2) G (nβ ∇L + γ (w − w*)) + N(0, ε G)."""
    rms = precondition == "rmsprop"

    def init(params):
        nu = jax.tree.map(jnp.zeros_like, params) if rms else ()
        return SGLDState(key, nu, jnp.zeros((), jnp.int32))

    def update(grads, state, params):
        drift = jax.tree.map(lambda g, w, c: nbeta * g + localization * (w - c), grads, params, center)
        count = state.count + 1
        if rms:
            nu = jax.tree.map(lambda v, d: alpha * v + (1 - alpha) * d * d, state.nu, drift)
            correction = 1 - alpha ** count.astype(jnp.float32)
            gain = jax.tree.map(lambda v: 1 / (jnp.sqrt(v / correction) + eps), nu)
        else:
            nu, gain = (), jax.tree.map(lambda d: jnp.ones((), d.dtype), drift)
        key, k = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(drift)
        noise = treedef.unflatten([jax.random.normal(kk, x.shape, x.dtype)
                                   for kk, x in zip(jax.random.split(k, len(leaves)), leaves)])
        move = jax.tree.map(lambda d, g, z: -0.5 * step_size * g * d + jnp.sqrt(step_size * g) * z, drift, gain, noise)
        return move, SGLDState(key, nu, count)

    return optax.GradientTransformation(init, update)


def value_and_grad_in_parts(loss_fn: Callable, params, batch, parts: int):
    """loss_fn(params, batch) and its gradient, the batch taken in `parts` equal microbatches whose
    results are averaged: the same numbers up to rounding for a loss that is a mean over sequences,
    but on CPU microbatches whose attention stays in cache run faster (lab/train/trainer.py)."""
    if parts <= 1:
        return jax.value_and_grad(loss_fn)(params, batch)
    split = jax.tree.map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]), batch)

    def add(total, part):
        return jax.tree.map(jnp.add, total, jax.value_and_grad(loss_fn)(params, part)), None

    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(add, zero, split)
    return jax.tree.map(lambda x: x / parts, total)


def run_chain(loss_fn: Callable, draw: Callable, center, key: jax.Array, s: Settings, parts: int = 1) -> dict:
    """One SGLD chain from `center`. `draw(key)` samples a batch, `loss_fn(params, batch)` is the loss
    on it (a mean over its sequences when `parts` > 1 microbatches). Returns per step: `delta` (M,) =
    L(w_t) − L(w*) (same batch if paired, else against the first batch), `distance` (M,) =
    |w_t − w*|; `finite` whether the chain stayed finite; `init_loss` the loss at w* on the first batch."""
    k_noise, k_data = jax.random.split(key)
    data_keys = jax.random.split(k_data, s.steps)
    tx = sgld(s.step_size, s.nbeta_value, s.localization, center, k_noise, s.precondition, s.alpha, s.eps)
    init_loss = loss_fn(center, draw(data_keys[0]))

    def step(carry, k):
        w, opt = carry
        batch = draw(k)
        loss, grads = value_and_grad_in_parts(loss_fn, w, batch, parts)
        base = loss_fn(center, batch) if s.baseline == "paired" else init_loss
        move, opt = tx.update(grads, opt, w)
        dist = optax.tree.norm(jax.tree.map(jnp.subtract, w, center))
        return (optax.apply_updates(w, move), opt), (loss - base, dist)

    _, (delta, dist) = jax.lax.scan(step, (center, tx.init(center)), data_keys)
    finite = jnp.all(jnp.isfinite(delta)) & jnp.all(jnp.isfinite(dist))
    return {"delta": delta, "distance": dist, "finite": finite, "init_loss": init_loss}


def sample(loss_fn: Callable, center, key: jax.Array, s: Settings) -> dict:
    """`s.chains` chains from `center` (a leading chain axis on every output, vmapped), for a loss
    `loss_fn(params, key) -> scalar` that samples its own batch from `key`."""
    chain = lambda k: run_chain(lambda p, kk: loss_fn(p, kk), lambda kk: kk, center, k, s)
    return jax.vmap(chain)(jax.random.split(key, s.chains))


def diagnose(delta: np.ndarray, finite: np.ndarray, s: Settings) -> dict:
    """The estimate and its health from one point's chains (NumPy; delta (C, M), finite (C,)).
    `llc`: nβ × mean over the finite chains of their mean delta after burn-in (NaN if none is
    finite); `chains` (C,) per chain (NaN where it blew up); `llc_std` the sample std over finite
    chains; `not_settled`: the finite chains' mean delta moved between the third and last quarter
    of the draws by more than settle_tol × |llc| / nβ plus two standard errors over chains."""
    delta, finite = np.asarray(delta, float), np.asarray(finite, bool)
    draws = delta[:, s.burn_in:]
    per_chain = np.where(finite, s.nbeta_value * draws.mean(1), np.nan)
    good = draws[finite]
    if not len(good):
        return {"llc": math.nan, "llc_std": math.nan, "chains": per_chain, "not_settled": True}
    llc = float(np.mean(per_chain[finite]))
    std = float(np.std(per_chain[finite], ddof=1)) if len(good) > 1 else math.nan
    q = good.shape[1] // 4
    drift = good[:, -q:].mean(1) - good[:, -2 * q:-q].mean(1)     # per chain
    se = float(np.std(drift, ddof=1) / math.sqrt(len(drift))) if len(drift) > 1 else 0.0
    not_settled = abs(float(drift.mean())) > s.settle_tol * abs(llc) / s.nbeta_value + 2 * se
    return {"llc": llc, "llc_std": std, "chains": per_chain, "not_settled": bool(not_settled)}


def warnings_for(d: dict, nonfinite: int, chains: int) -> list[str]:
    """Plain-language warnings for one estimate (what `diagnose` returned)."""
    out = []
    if nonfinite:
        out.append(f"{nonfinite} of {chains} chains blew up (non-finite loss or parameters): lower step_size")
    if d["not_settled"] and nonfinite < chains:
        out.append("the chains' loss has not settled: raise burn_in/draws or lower step_size")
    if d["llc"] < 0:
        out.append("negative estimate: w* is not a local minimum at this temperature; raise localization or nbeta")
    return out


def sample_many(loss_fn: Callable, draw: Callable, centers, keys: jax.Array, s: Settings, parts: int = 1,
                mode: str = "map") -> dict:
    """Chains at many centres in one program: `centers` and `keys` share a leading axis (e.g. seeds x
    checkpoints x chains flattened; repeat a centre once per chain); `lax.map` loops over it inside
    the program (best on CPU), `vmap` batches it (accelerators)."""
    one = lambda ck: run_chain(loss_fn, draw, ck[0], ck[1], s, parts)
    return jax.vmap(one)((centers, keys)) if mode == "vmap" else jax.lax.map(one, (centers, keys))


def estimates(out: dict, s: Settings) -> dict:
    """`diagnose` over the leading axes of `sample`'s outputs (NumPy arrays): llc, llc_std,
    not_settled shaped like the leading axes; chains (..., C)."""
    delta, finite = np.asarray(out["delta"]), np.asarray(out["finite"])
    lead = delta.shape[:-2]
    flat = [diagnose(d, f, s) for d, f in zip(delta.reshape(-1, *delta.shape[-2:]), finite.reshape(-1, finite.shape[-1]))]
    return {"llc": np.array([d["llc"] for d in flat]).reshape(lead),
            "llc_std": np.array([d["llc_std"] for d in flat]).reshape(lead),
            "not_settled": np.array([d["not_settled"] for d in flat]).reshape(lead),
            "chains": np.stack([d["chains"] for d in flat]).reshape(*lead, -1)}
