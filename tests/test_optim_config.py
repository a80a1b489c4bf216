import pytest
from omegaconf import OmegaConf

from lab.config.compose import check_override_keys, validate
from lab.config.schema import OptimConfig
from lab.core import ConfigError
from lab.train.optim import make_schedule


def schedule(**kw):
    return make_schedule(OmegaConf.structured(OptimConfig(**kw)), total_steps=1000)


def test_schedules_by_hand():
    assert float(schedule(lr=0.1)(500)) == pytest.approx(0.1)
    s = schedule(lr=0.1, schedule="warmup_cosine", warmup_steps=100)
    assert float(s(0)) == 0.0 and float(s(50)) == pytest.approx(0.05) and float(s(100)) == pytest.approx(0.1)
    assert float(s(550)) == pytest.approx(0.05, rel=1e-4)          # half-way through the cosine
    r = schedule(lr=0.1, schedule="warmup_rsqrt", warmup_steps=100)
    assert float(r(49)) == pytest.approx(0.05) and float(r(99)) == pytest.approx(0.1)
    assert float(r(399)) == pytest.approx(0.05)                    # lr * sqrt(100 / 400)
    w = schedule(lr=0.1, warmup_steps=10)
    assert float(w(5)) == pytest.approx(0.05) and float(w(500)) == pytest.approx(0.1)


@pytest.mark.parametrize("override, message", [
    ("model.n_layer=3", "did you mean 'model.n_layers'"),
    ("measures.phase.smoth=3", "did you mean 'measures.phase.smooth'"),
    ("train.zzz=1", "keys of train: steps"),
    ("out_dir=runs/x", "unknown config key 'out_dir'; the config's keys"),       # retired: nothing read it; hydra.run.dir chooses the directory
])
def test_unknown_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        check_override_keys([override])


def test_known_and_hydra_keys_pass():
    check_override_keys(["model.n_layers=1", "measures.phase.smooth=3", "hydra.run.dir=x", "+extra=1",
                         "model=attn_only_1l", "task.n_repeats=null"])   # raises nothing


@pytest.mark.parametrize("override, message", [
    ("+model.n_layer=1", "unknown config key 'model.n_layer'; did you mean 'model.n_layers'?"),
    ("++train.stps=1", "unknown config key 'train.stps'; did you mean 'train.steps'?"),
    ("+experimnt=reddy", "unknown config key 'experimnt'; did you mean 'experiment'?"),
    ("+model.n_layers=1", "'+model.n_layers=1' adds model.n_layers, which the config already has; "
                          "set it without the '+': model.n_layers=1"),
    ("+experiment=reddy", "'+experiment=reddy' chooses from the experiment group, which the config already has; "
                          "set it without the '+': experiment=reddy"),
    ("+hydra/launcher=lab", "set it without the '+': hydra/launcher=lab"),
])
def test_plus_overrides_are_checked_like_the_others(override, message):
    """A `+` does not turn a typo into a new key that nothing reads (before: `+model.n_layer=1` trained the
    2-layer model and `+experiment=reddy_icl`-style typos went unnoticed, exit 0), and a `+` on what the
    config already has gets the fix instead of Hydra's "Could not append" / "Multiple values"."""
    with pytest.raises(ConfigError) as e:
        check_override_keys([override])
    assert message in str(e.value)


def test_free_form_plus_keys_pass():
    check_override_keys(["+clamps.x={site: logits, value: zero}", "+note=baseline", "++model.n_layers=1",
                         "+hydra.job.env_set.A=1"])   # raises nothing


def test_unknown_key_is_named_at_the_level_it_goes_wrong():
    with pytest.raises(ConfigError, match="unknown config key 'measures.phse.smooth'; did you mean 'measures.phase'"):
        check_override_keys(["measures.phse.smooth=3"])


def test_non_finite_learning_rates_are_refused_at_startup():
    from lab.config.compose import load_config
    for lr, message in (("nan", "optim.lr=nan must be a finite number"), ("inf", "optim.lr=inf must be a finite number"),
                        ("-1e-3", "optim.lr=-0.001 must be positive")):
        with pytest.raises(ConfigError, match=message):
            validate(load_config([f"optim.lr={lr}"]))


def test_sgd_weight_decay_is_reddys_per_step_decay_by_hand():
    """optim=sgd with weight_decay: w <- (1 - wd) w - lr g each step, whatever the lr (Reddy's code).
    w = 2, g = 0.5, lr 0.1, wd 0.01: 0.99 * 2 - 0.1 * 0.5 = 1.93; again with w = 1.93, g = 0.5:
    0.99 * 1.93 - 0.05 = 1.8607. Without decay: 2 - 0.05 = 1.95."""
    import jax.numpy as jnp
    import optax
    from lab.train.optim import make_optimizer

    def steps(n, **kw):
        opt, _ = make_optimizer(OmegaConf.structured(OptimConfig(name="sgd", lr=0.1, **kw)), total_steps=10)
        w = jnp.array(2.0)
        state = opt.init(w)
        for _ in range(n):
            updates, state = opt.update(jnp.array(0.5), state, w)
            w = optax.apply_updates(w, updates)
        return float(w)

    assert steps(1, weight_decay=0.01) == pytest.approx(1.93)
    assert steps(2, weight_decay=0.01) == pytest.approx(1.8607)
    assert steps(1) == pytest.approx(1.95)


def test_weight_decay_with_plain_adam_is_refused():
    from lab.config.compose import load_config
    with pytest.raises(ConfigError, match="does nothing with optim=adam: use optim=adamw"):
        validate(load_config(["optim.weight_decay=0.1"]))
    with pytest.raises(ConfigError, match=r"optim.weight_decay=1.5 must be in \[0, 1\)"):
        validate(load_config(["optim=sgd", "optim.weight_decay=1.5"]))
    validate(load_config(["optim=sgd", "optim.weight_decay=1e-6"]))
    validate(load_config(["optim=adamw", "optim.weight_decay=0.1"]))
