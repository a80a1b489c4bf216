"""The LLC estimator against losses whose learning coefficient is known exactly (CPU, seconds)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.measures.llc import Settings, check_settings, diagnose, sample, warnings_for


def estimate(loss, center, settings, seed=0):
    out = jax.jit(lambda c, k: sample(lambda w, _: loss(w), c, k, settings))(center, jax.random.PRNGKey(seed))
    return diagnose(np.asarray(out["delta"]), np.asarray(out["finite"]), settings), out


CALIBRATION = Settings(chains=8, burn_in=2000, draws=20000, step_size=1e-3, localization=0.0, nbeta=10.0,
                       batch_size=2, baseline="init")


def test_regular_quadratic_has_half_its_dimension():
    # L = sum_i a_i w_i^2 in d = 10 parameters: exp(-nβ L) is Gaussian with E[a_i w_i^2] = 1/(2 nβ),
    # so nβ E[L] = d/2 = 5 whatever the curvatures a_i.
    a = jnp.array([0.5, 1, 1, 2, 2, 3, 1, 1, 0.7, 1.5])
    d, _ = estimate(lambda w: jnp.sum(a * w["w"] ** 2), {"w": jnp.zeros(10)}, CALIBRATION)
    assert d["llc"] == pytest.approx(5.0, rel=0.08)
    assert not d["not_settled"] and np.isfinite(d["chains"]).all()


def test_sum_of_monomials_has_sum_of_inverse_powers():
    # L = w1^2 + w2^4 + w3^6: E[w^p] under exp(-nβ w^p) is 1/(p nβ) (a Gamma integral), so
    # λ = 1/2 + 1/4 + 1/6 = 11/12, the learning coefficient of this sum of monomials.
    p = jnp.array([2, 4, 6])
    d, _ = estimate(lambda w: jnp.sum(w["w"] ** p), {"w": jnp.zeros(3)}, CALIBRATION)
    assert d["llc"] == pytest.approx(11 / 12, rel=0.1)


def test_localisation_shrinks_the_estimate_as_derived():
    # With γ the quadratic's posterior precision is 2 nβ a + γ: λ̂ = nβ d a / (2 nβ a + γ).
    s = Settings(**{**CALIBRATION.__dict__, "localization": 20.0, "draws": 10000})
    d, _ = estimate(lambda w: jnp.sum(w["w"] ** 2), {"w": jnp.zeros(4)}, s)
    assert d["llc"] == pytest.approx(10 * 4 / (20 + 20), rel=0.08)


def test_preconditioned_sgld_is_calibrated_too():
    s = Settings(**{**CALIBRATION.__dict__, "precondition": "rmsprop", "step_size": 1e-2, "eps": 1.0,
                                     "alpha": 0.999, "draws": 10000})
    a = jnp.array([0.2, 1.0, 5.0, 25.0])    # curvatures over two orders: what preconditioning is for
    d, _ = estimate(lambda w: jnp.sum(a * w["w"] ** 2), {"w": jnp.zeros(4)}, s)
    assert d["llc"] == pytest.approx(2.0, rel=0.1)


def test_paired_baseline_cancels_batch_noise():
    # L_batch(w) = |w|^2 + noise(batch): the paired difference removes the noise exactly.
    def loss(w, k):
        return jnp.sum(w["w"] ** 2) + jax.random.normal(k)
    s = Settings(chains=4, burn_in=200, draws=2000, step_size=1e-3, localization=0.0, nbeta=10.0, batch_size=2)
    paired = jax.jit(lambda k: sample(loss, {"w": jnp.zeros(2)}, k, s))(jax.random.PRNGKey(0))
    init = jax.jit(lambda k: sample(loss, {"w": jnp.zeros(2)}, k, Settings(**{**s.__dict__, "baseline": "init"})))(
        jax.random.PRNGKey(0))
    assert np.std(np.asarray(paired["delta"])) < 0.2 < np.std(np.asarray(init["delta"]))
    assert diagnose(paired["delta"], paired["finite"], s)["llc"] == pytest.approx(1.0, rel=0.15)


def test_too_large_a_step_is_flagged():
    s = Settings(chains=4, burn_in=10, draws=100, step_size=1.0, localization=0.0, nbeta=10.0, batch_size=2)
    d, out = estimate(lambda w: jnp.sum(w["w"] ** 4), {"w": jnp.zeros(3)}, s)
    assert not np.asarray(out["finite"]).any() and math.isnan(d["llc"])
    assert "blew up" in warnings_for(d, 4, 4)[0]


def test_drifting_chains_are_not_settled():
    delta = np.tile(np.linspace(0, 1, 200), (4, 1)) + 0.01 * np.random.default_rng(0).standard_normal((4, 200))
    s = Settings(chains=4, burn_in=0, draws=200, nbeta=10.0)
    assert diagnose(delta, np.ones(4, bool), s)["not_settled"]
    flat = 0.5 + 0.01 * np.random.default_rng(1).standard_normal((4, 200))
    d = diagnose(flat, np.ones(4, bool), s)
    assert not d["not_settled"] and d["llc"] == pytest.approx(5.0, rel=0.01)


def test_bad_settings_get_one_line():
    assert "rmsprop" in check_settings(Settings(precondition="adam"))
    assert "step_size" in check_settings(Settings(step_size=0))
    assert check_settings(Settings()) is None
