import numpy as np
import pytest

from lab.analysis import three_factor as tf


def tensor_loss(true, params):
    """1/2 mean over the d^3 entries of (T - a (x) b (x) c)^2, with the tensor formed."""
    T = np.einsum("i,j,k->ijk", *true)
    return 0.5 * np.mean((T - np.einsum("i,j,k->ijk", *params)) ** 2)


def test_scalar_case_by_hand():
    # d = 1: t = a* b* c* = 2 * 1 * 3 = 6, abc = 1 * 2 * (-1) = -2, error 8, loss 1/2 * 64 = 32;
    # dL/da = -(t - abc) bc = -8 * (-2) = 16, dL/db = -8 * ac = -8 * (-1) = 8, dL/dc = -8 * ab = -16
    true, params = np.array([[2.0], [1.0], [3.0]]), np.array([[1.0], [2.0], [-1.0]])
    loss, grad = tf.loss_and_grad(true, params)
    assert loss == pytest.approx(32.0)
    assert grad[:, 0] == pytest.approx([16.0, 8.0, -16.0])
    assert tf.plateau_level(true) == pytest.approx(18.0)               # 1/2 * 6^2


def test_gradient_matches_finite_differences_of_the_tensor_loss():
    rng = np.random.default_rng(3)
    true, params = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    loss, grad = tf.loss_and_grad(true, params)
    assert loss == pytest.approx(tensor_loss(true, params), rel=1e-12)
    eps, fd = 1e-6, np.zeros_like(params)
    for idx in np.ndindex(params.shape):
        step = np.zeros_like(params)
        step[idx] = eps
        fd[idx] = (tensor_loss(true, params + step) - tensor_loss(true, params - step)) / (2 * eps)
    assert grad == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # seeds along a leading axis: each one's own loss and gradient
    batch = tf.loss_and_grad(np.stack([true, 2 * true]), np.stack([params, params]))
    assert batch[0][0] == pytest.approx(loss) and batch[1][0] == pytest.approx(grad)
    assert batch[0][1] == pytest.approx(tensor_loss(2 * true, params))


def test_clamping_every_factor_gives_zero_loss_throughout():
    steps, loss = tf.train([0, 1], dim=5, clamped=("a", "b", "c"), iters=20)
    assert steps.tolist() == list(range(21)) and loss.shape == (21, 2)
    assert np.all(loss == 0.0)
    with pytest.raises(ValueError):
        tf.train([0], clamped=("d",), iters=1)


def test_unclamped_run_sits_on_the_zero_output_loss_then_fits_the_target():
    # the paper's setting, one seed: from about twice the plateau onto it within a few steps, then to 0
    steps, loss = tf.train([2])
    level = tf.plateau_level(tf.problem(2)[0])
    assert loss[0, 0] > 1.5 * level and abs(loss[50, 0] / level - 1) < 0.1 and loss[-1, 0] < 1e-6 * level


def test_more_factors_left_to_learn_means_a_longer_plateau():
    study = tf.clamp_study(seeds=range(5))
    by_left = {c["left"]: c for c in study["conditions"]}
    mean = {k: c["summary"]["plateau_length"]["mean"] for k, c in by_left.items()}
    assert all(c["summary"]["n_left"] == 5 for c in by_left.values())
    assert mean[3] > mean[2] > mean[1]
    # b and c clamped is a convex problem with no plateau: every seed leaves sooner than with c alone clamped
    # (3 vs 2 left does not hold seed by seed: seed 0 leaves sooner with nothing clamped)
    assert min(study["paired"]["2-1"]["differences"]) > 0
