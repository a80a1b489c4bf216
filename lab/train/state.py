"""The training state of one seed and of a run's seeds: parameters, optimiser state and the data
PRNG key. The trainer starts from it; restoring a checkpoint uses its shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init_one(model, optimizer, seed_key: jax.Array) -> dict:
    """One seed's state from its PRNG key: the key is split into the init key and the data key."""
    k_init, k_data = jax.random.split(seed_key)
    params = model.init(jax.random.wrap_key_data(k_init))
    return {"params": params, "opt_state": optimizer.init(params), "key": k_data}


def init_state(model, optimizer, seeds: list[int]) -> dict:
    """The state of every seed, stacked on a leading seed axis."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    return jax.jit(jax.vmap(lambda k: init_one(model, optimizer, k)))(keys)


def seed_range(train_cfg) -> list[int]:
    """The seeds a run trains: train.seed .. train.seed + train.seeds - 1."""
    return list(range(train_cfg.seed, train_cfg.seed + train_cfg.seeds))
