"""In-context linear regression (von Oswald et al. 2022): generator statistics, the closed-form GD
learning rate against Monte Carlo, each measure on hand-built inputs, a hand-built linear-attention
model that implements one GD step exactly, the config errors, and one tiny end-to-end run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lab
from lab.config.compose import validate
from lab.core import ConfigError
from lab.model import Model
from lab.tasks import regression as R
from lab.tasks import make_task


def make(**kw):
    base = dict(seq_len=6, dim=3, n_context=5, noise=0.0, x_dist="uniform", probe_size=32, probe_seed=0)
    base.update(kw)
    base["seq_len"] = base["n_context"] + 1
    return R.RegressionTask(**base)


def test_generator_structure_and_statistics():
    task = make()
    b = jax.device_get(task.sample(jax.random.PRNGKey(0), 8192))
    d, N = task.dim, task.n_context
    assert b.tokens.shape == (8192, N + 1) and np.all(b.tokens == 0)
    assert b.features.shape == (8192, N + 1, d + 1) and task.feature_dim == d + 1
    x, y = b.features[..., :d], b.features[..., d]
    np.testing.assert_allclose(y[:, :N], np.einsum("bid,bd->bi", x[:, :N], b.w), atol=1e-5)   # y_i = w·x_i
    assert np.all(y[:, N] == 0)                                                             # query's y slot
    np.testing.assert_allclose(b.target, np.einsum("bd,bd->b", x[:, N], b.w), atol=1e-5)
    assert np.all(np.abs(x) <= 1)
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1 / 3) < 0.01                           # U(-1, 1)
    assert abs(b.w.mean()) < 0.03 and abs(b.w.var() - 1) < 0.05                             # w ~ N(0, I)
    assert abs(0.5 * np.mean(b.target ** 2) - task.chance_loss) < 0.05 * task.chance_loss   # d/6
    assert task.chance_loss == pytest.approx(3 / 6)
    # w is fresh per sequence: no two sequences share it
    assert len(np.unique(b.w, axis=0)) == 8192


def test_normal_inputs_and_noise():
    task = make(x_dist="normal", noise=0.5)
    b = jax.device_get(task.sample(jax.random.PRNGKey(1), 8192))
    x, y = b.features[..., :3], b.features[..., 3]
    assert abs(x.var() - 1) < 0.03 and np.abs(x).max() > 3
    resid = y[:, :5] - np.einsum("bid,bd->bi", x[:, :5], b.w)
    assert abs(resid.std() - 0.5) < 0.01
    assert task.chance_loss == pytest.approx(0.5 * (3 + 0.25))


def test_probe_is_fixed_and_sampling_is_seeded():
    task = make()
    np.testing.assert_array_equal(task.probe().features, task.probe().features)
    a, b = task.sample(jax.random.PRNGKey(3), 4), task.sample(jax.random.PRNGKey(4), 4)
    assert not np.array_equal(a.features, b.features)


@pytest.mark.parametrize("x_dist,noise", [("uniform", 0.0), ("normal", 0.3)])
def test_gd_learning_rate_matches_monte_carlo(x_dist, noise):
    task = make(dim=4, n_context=6, x_dist=x_dist, noise=noise)
    b = jax.device_get(task.sample(jax.random.PRNGKey(2), 100_000))
    g = np.asarray(R.gd_prediction(jnp.asarray(b.features), 1.0), np.float64)   # Σ_i y_i x_i·x_q
    eta_mc = np.sum(g * b.target) / np.sum(g * g)                                 # least-squares η
    assert task.gd_lr == pytest.approx(eta_mc, rel=0.03)
    loss_mc = 0.5 * np.mean((task.gd_lr * g - b.target) ** 2)
    assert task.gd_loss_expected == pytest.approx(loss_mc, rel=0.03)
    if x_dist == "normal":
        assert task.gd_lr == pytest.approx(1 / (4 + 6 + 1 + noise ** 2))


def test_gd_prediction_and_sensitivity_by_hand():
    # d = 2, N = 2: x_1 = (1, 0), y_1 = 2; x_2 = (0, 1), y_2 = -1; x_q = (3, 4)
    f = jnp.asarray([[[1, 0, 2], [0, 1, -1], [3, 4, 0]]], jnp.float32)
    # ŷ_GD = η (2·3 + (-1)·4) = 2η
    np.testing.assert_allclose(R.gd_prediction(f, 0.5), [1.0])
    np.testing.assert_allclose(R.gd_sensitivity(f), [[2.0, -1.0]])


def test_scalar_measures_by_hand():
    pred, target = jnp.asarray([1.0, 2.0]), jnp.asarray([0.0, 4.0])
    np.testing.assert_allclose(R.half_squared_error(pred, target), 0.5 * (1 + 4) / 2)
    np.testing.assert_allclose(R.r2_vs_zero(pred, target), 1 - 5 / 16)
    np.testing.assert_allclose(R.r2_vs_zero(jnp.zeros(2), target), 0.0)
    np.testing.assert_allclose(R.pred_distance(pred, jnp.asarray([1.0, 0.0])), 2.0)
    g = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    ref = jnp.asarray([[3.0, 0.0], [-1.0, -1.0], [5.0, 0.0]])     # cosines 1, -1, 0
    np.testing.assert_allclose(R.sensitivity_cosine(g, ref), 0.0, atol=1e-7)
    np.testing.assert_allclose(R.sensitivity_cosine(g[:1], ref[:1]), 1.0)


def test_gd_attention_score_by_hand():
    f = jnp.asarray([[[1, 0, 2], [0, 1, -1], [1, 1, 5], [3, 4, 0]]], jnp.float32)   # N = 3, x_q = (3, 4)
    kernel = np.array([3.0, 4.0, 7.0])                                                # x_q·x_i
    p = np.zeros((1, 4, 4, 4), np.float32)
    p[0, 0, 3, :3] = 2 * kernel + 5          # an affine image of the kernel: correlation 1
    p[0, 1, 3, :3] = -kernel                 # sign carried by the OV circuit: |corr| = 1
    p[0, 2, 3, :3] = 1.0                     # constant row: 0
    p[0, 3, 3, :3] = [1.0, 0.0, 0.0]         # corr with (3, 4, 7): by hand
    p[0, :, 3, 3] = 100.0                    # the query's attention to itself is not counted
    k, a = kernel - kernel.mean(), np.array([2 / 3, -1 / 3, -1 / 3])
    expected = abs(k @ a) / (np.linalg.norm(k) * np.linalg.norm(a))
    np.testing.assert_allclose(R.gd_attention_score(jnp.asarray(p), f), [1, 1, 0, expected], rtol=1e-5, atol=1e-6)


def gd_model(task):
    """One linear self-attention layer that computes ŷ_GD exactly (von Oswald et al.'s construction):
    W_F = I, W_E = 0, W_Q = W_K = projection on x, W_V = projection on y, W_O = η*, W_U reads y."""
    cfg = lab.load_config(["task=regression", "model=linear_attn", f"model.d_model={task.dim + 1}"])
    model = Model.for_task(cfg.model, task)
    D, d = task.dim + 1, task.dim
    px = np.diag([1.0] * d + [0.0])[:, None, :]
    py = np.zeros((D, 1, D)); py[d, 0, d] = 1.0
    params = {"W_E": np.zeros((1, D)), "W_F": np.eye(D), "W_U": np.eye(D)[:, d:],
              "blocks": {0: {"attn": {"W_Q": px, "W_K": px, "W_V": py, "W_O": task.gd_lr * np.eye(D)[None]}}}}
    return model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def test_measures_of_an_exact_gd_model():
    task = make(probe_size=64)
    model, params = gd_model(task)
    probe = task.probe()
    forward = lambda batch, names: model.apply(params, batch, cache_names=names)
    out = jax.jit(lambda p: task.measures(model, p, probe, forward, None, True))(params)
    np.testing.assert_allclose(out["loss_query"], out["gd_loss"], rtol=1e-5)
    assert out["loss"] == out["loss_query"]
    assert float(out["pred_distance"]) < 1e-10
    np.testing.assert_allclose(out["sensitivity_cosine"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["induction"], [[1.0]], rtol=1e-5)
    assert out["prev_token"].shape == out["prev_token_corrected"].shape == (1, 1)
    assert out["attention"].shape == (1, 1, task.seq_len, task.seq_len)
    assert 0 < float(out["r2_query"]) < 1
    # the learning rate is the best one: scaling the output up or down loses
    for s in (0.8, 1.25):
        scaled = jax.tree.map(lambda a: a, params)
        scaled["W_U"] = params["W_U"] * s
        logits, _ = model.apply(scaled, probe)
        assert task.main_scores(logits, probe)[0] > out["gd_loss"]


@pytest.mark.parametrize("override,message", [
    (["task.n_context=20"], "task.seq_len=11 must equal task.n_context + 1 = 21"),
    (["task.dim=0"], "task.dim=0 must be positive"),
    (["task.n_context=0", "task.seq_len=1"], "task.n_context=0 must be positive"),
    (["task.noise=-0.1"], "task.noise=-0.1 must be >= 0"),
    (["task.x_dist=cauchy"], "task.x_dist='cauchy' is not allowed"),
])
def test_config_errors(override, message):
    cfg = lab.load_config(["task=regression", "model=linear_attn"] + override)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_default_config_is_valid():
    cfg = lab.load_config(["task=regression", "model=linear_attn"])
    validate(cfg)
    task = make_task(cfg.task)
    assert (task.dim, task.n_context, task.seq_len) == (10, 10, 11)


def test_tiny_end_to_end(tmp_path):
    from tests.conftest import CACHE
    cfg = lab.load_config(["task=regression", "model=linear_attn", "task.dim=3", "task.n_context=4",
                           "task.seq_len=5", "task.probe_size=16", "model.d_model=8", "train=tiny",
                           f"train.compile_cache={CACHE}", "train.tensorboard=false"])
    r = lab.run(cfg, tmp_path)
    for key in ("loss", "loss_query", "r2_query", "gd_loss", "pred_distance", "sensitivity_cosine"):
        assert r.metrics[key].shape == (5, 1) and np.all(np.isfinite(r.metrics[key])), key
    for key in ("induction", "prev_token", "prev_token_corrected"):
        assert r.metrics[key].shape == (5, 1, 1, 1) and np.all(np.isfinite(r.metrics[key])), key
    assert (tmp_path / "summary.json").exists() and (tmp_path / "plots" / "loss.png").exists()


# ---- K steps of GD and of GD++ (von Oswald et al. 2022's multi-layer references) ----

def test_gd_steps_and_gdpp_by_hand():
    # d = 1, N = 2: x = (1, 2), y = (2, 4) (w = 2), x_q = 1; η = 0.1 every step
    f = jnp.asarray([[[1, 2], [2, 4], [1, 0]]], jnp.float32)
    # one step: w_1 = η Σ y_i x_i = 0.1 (2 + 8) = 1, ŷ = 1
    np.testing.assert_allclose(R.gdpp_prediction(f, jnp.asarray([0.1])), [1.0], rtol=1e-6)
    # two steps: residuals r = y − w_1 x = (1, 2), w_2 = 1 + 0.1 (1·1 + 2·2) = 1.5
    np.testing.assert_allclose(R.gdpp_prediction(f, jnp.asarray([0.1, 0.1])), [1.5], rtol=1e-6)
    # GD++ with γ_1 = 0.1: C = Σ x_i² = 5, so step 1 also maps every x to (1 − 0.5) x = x/2; step 2 then
    # adds 0.1 Σ (x_q/2)(x_i/2) r_i = 0.1 (0.25 + 1) = 0.125: ŷ = 1.125; γ_2 never reaches ŷ
    for g2 in (0.0, 3.0):
        np.testing.assert_allclose(R.gdpp_prediction(f, jnp.asarray([0.1, 0.1]), jnp.asarray([0.1, g2])),
                                   [1.125], rtol=1e-6)
    # ŷ is linear in x_q with slope 1.125
    np.testing.assert_allclose(R.gdpp_sensitivity(f, jnp.asarray([0.1, 0.1]), jnp.asarray([0.1, 0.0])),
                               [[1.125]], rtol=1e-6)
    # one GD++ step is one GD step, whatever γ
    np.testing.assert_allclose(R.gdpp_prediction(f, jnp.asarray([0.5]), jnp.asarray([7.0])),
                               R.gd_prediction(f, 0.5), rtol=1e-6)


def test_fitted_references():
    task = make()
    one = R.fit_references(task, 1)
    features, target = R.fit_sample(task, R.FIT_SIZE, task.probe_seed + R.FIT_SEED_OFFSET)
    # one step: the loss is quadratic in η, minimised at Σ_b g_b y_b / Σ_b g_b² with g = ŷ_GD at η = 1
    g = np.asarray(R.gd_prediction(jnp.asarray(features), 1.0), np.float64)
    np.testing.assert_allclose(one.eta_gd, g @ target / (g @ g), rtol=1e-3)
    np.testing.assert_allclose(one.gdpp_fit_loss, one.gd_fit_loss, rtol=1e-6)
    two = R.fit_references(task, 2)
    assert two.gdpp_fit_loss < two.gd_fit_loss < one.gd_fit_loss   # more steps help; GD++ starts from GD
    assert two.gammas_gdpp[-1] == 0.0 and len(two.etas_gdpp) == 2
    pred = R.gdpp_prediction(jnp.asarray(features), jnp.asarray(two.etas_gdpp), jnp.asarray(two.gammas_gdpp))
    np.testing.assert_allclose(R.half_squared_error(pred, jnp.asarray(target)), two.gdpp_fit_loss, rtol=1e-4)
    assert R.fit_references(task, 2) is two                            # cached per (task, K)


def gdpp_model(task, etas, gammas, mask="context"):
    """len(etas) linear self-attention layers that run GD++ exactly (von Oswald et al.'s construction,
    src/data.py create_weights(lin_diag=True)): the stream is [x, s] (W_F = I), every layer's head
    has W_Q = W_K = projection on x, W_V = I and W_O = diag(−γ_l I, −η_l), so position t gets
    (−γ_l Σ_i (x_t·x_i) x_i, −η_l Σ_i (x_t·x_i) s_i) from the context i; the query's s is −ŷ: W_U = −1."""
    D, d = task.dim + 1, task.dim
    cfg = lab.load_config(["task=regression", "model=linear_attn", f"model.d_model={D}",
                           f"model.n_layers={len(etas)}", f"model.attn_mask={mask}"])
    model = Model.for_task(cfg.model, task)
    px = np.diag([1.0] * d + [0.0])[:, None, :]
    blocks = {l: {"attn": {"W_Q": px, "W_K": px, "W_V": np.eye(D)[:, None, :],
                           "W_O": -np.diag([g] * d + [e])[None]}} for l, (e, g) in enumerate(zip(etas, gammas))}
    params = {"W_E": np.zeros((1, D)), "W_F": np.eye(D), "W_U": -np.eye(D)[:, d:], "blocks": blocks}
    return model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def test_context_mask_linear_attention_runs_gdpp():
    task = make(probe_size=64)
    probe = task.probe()
    etas, gammas = [0.2, 0.3], [0.05, 0.0]
    model, params = gdpp_model(task, etas, gammas)
    logits, _ = model.apply(params, probe)
    ref = R.gdpp_prediction(probe.features, jnp.asarray(etas), jnp.asarray(gammas))
    np.testing.assert_allclose(task.prediction(logits), ref, rtol=1e-4, atol=1e-5)
    # under the causal mask a context token reads only the ones before it: not GD++ any more
    causal, _ = gdpp_model(task, etas, gammas, mask="causal")
    assert float(jnp.max(jnp.abs(task.prediction(causal.apply(params, probe)[0]) - ref))) > 1e-2


def test_measures_of_an_exact_gdpp_model():
    task = make(probe_size=64)
    ref = R.fit_references(task, 2)
    model, params = gdpp_model(task, ref.etas_gdpp, ref.gammas_gdpp)
    probe = task.probe()
    forward = lambda batch, names: model.apply(params, batch, cache_names=names)
    out = jax.jit(lambda p: task.measures(model, p, probe, forward, None, False))(params)
    np.testing.assert_allclose(out["loss_query"], out["gdpp_loss"], rtol=1e-4)
    assert float(out["pred_distance_gdpp"]) < 1e-8
    np.testing.assert_allclose(out["sensitivity_cosine_gdpp"], 1.0, rtol=1e-5)
    assert out["gdpp_loss"] < out["gd_steps_loss"] < out["gd_loss"]


@pytest.mark.parametrize("override,message", [
    (["model.attn_mask=full"], "model.attn_mask='full' is not allowed"),
    (["model.attention=softmax"], "model.attn_mask=context (every position reads the context tokens"),
])
def test_attn_mask_errors(override, message):
    cfg = lab.load_config(["task=regression", "model=linear_attn", "model.attn_mask=context"] + override)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_context_mask_by_hand():
    from lab.model.kernels import context_mask
    # T = 3: positions 0, 1 are the context, 2 the query; every row reads keys 0 and 1 only
    np.testing.assert_array_equal(context_mask(3), [[1, 1, 0], [1, 1, 0], [1, 1, 0]])
