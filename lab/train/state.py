"""What a run's config builds (task, model, optimiser) and the training state of one seed and of a
run's seeds: parameters, optimiser state and the data PRNG key. The trainer starts from them;
restoring a checkpoint uses their shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lab.config.compose import validate
from lab.model import Model
from lab.tasks import make_task
from lab.train.optim import make_optimizer


def build(cfg) -> tuple:
    """(task, model, optimizer, schedule) of a config, after its cross-key checks (`validate`)."""
    validate(cfg)
    task = make_task(cfg.task)
    model = Model.for_task(cfg.model, task)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    return task, model, optimizer, schedule


def init_one(model, optimizer, seed_key: jax.Array) -> dict:
    """One seed's state from its PRNG key: the key is split into the init key and the data key."""
    k_init, k_data = jax.random.split(seed_key)
    params = model.init(jax.random.wrap_key_data(k_init))
    return {"params": params, "opt_state": optimizer.init(params), "key": k_data}


def init_state(model, optimizer, seeds: list[int], compiled=None) -> dict:
    """The state of every seed, stacked on a leading seed axis. `compiled(name, jitted)`: how its
    program is compiled (lab-train's program cache, lab/train/programs.py)."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    fn = jax.jit(jax.vmap(lambda k: init_one(model, optimizer, k)))
    return (compiled("init", fn) if compiled else fn)(keys)


def seed_range(train_cfg) -> list[int]:
    """The seeds a run trains: train.seed .. train.seed + train.seeds - 1."""
    return list(range(train_cfg.seed, train_cfg.seed + train_cfg.seeds))
