"""The LLC's SGLD chains (lab/measures/llc.py) of many centres as one compiled program: online for
the trainer's seeds, offline for a finished run's checkpoints x seeds. Every (centre, chain) pair is
one chain; the chains are spread over the devices (on CPU, one XLA device per core) and looped
(CPU) or vmapped (accelerators) on each. Batches are taken in microbatches sized as in training."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from lab.core import RunLoadError
from lab.measures import llc
from lab.rundir import checkpoint_steps
from lab.train.restore import load_run
from lab.train.runtime import batch_axis_mode, cache_sized_microbatch, largest_divisor

SALT = 0x11C   # folded into a seed's key so the LLC's batches and noise differ from training's


def parts_for(task, model, batch_size: int) -> int:
    """Microbatches per SGLD batch, sized as training's."""
    return batch_size // cache_sized_microbatch(batch_size, task, model)


def chain_keys(seeds, step: int, chains: int) -> jax.Array:
    """One key per (seed, chain), fixed by seed and step: online and offline estimates of the same
    parameters at the same step draw the same chains."""
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed ^ SALT), step), c)
                      for seed in seeds for c in range(chains)])


def program(loss: Callable, draw: Callable, s: llc.Settings, n_chains: int, parts: int, mode: str) -> Callable:
    """fn(params, extra, index, keys, shared) -> `run_chain` outputs with a leading chain axis.
    `params` and `extra` (per-centre loss arguments, e.g. clamp arrays) have a leading centre axis;
    chain i starts from centre `index[i]` with `keys[i]`; `loss(params, batch, extra_i, shared)`."""
    def chains(params, extra, index, keys, shared):
        def one(i, key):
            pick = lambda tree: jax.tree.map(lambda x: x[i], tree)
            e = pick(extra)
            return llc.run_chain(lambda p, b: loss(p, b, e, shared), draw, pick(params), key, s, parts)
        if mode == "vmap":
            return jax.vmap(one)(index, keys)
        return jax.lax.map(lambda ik: one(*ik), (index, keys))

    devices = jax.devices()
    n_dev = largest_divisor(n_chains, len(devices))
    if n_dev > 1:
        mesh = Mesh(np.array(devices[:n_dev]), ("chains",))
        chains = jax.shard_map(chains, mesh=mesh, in_specs=(P(), P(), P("chains"), P("chains"), P()),
                               out_specs=P("chains"), check_vma=False)
    return jax.jit(chains)


def run(fn: Callable, centres, extra, seeds, steps: list[int], s: llc.Settings, shared=()) -> dict:
    """`fn` (from `program`) on the centres of `steps` x `seeds` (their leading axis, flattened in
    that order); returns NumPy arrays shaped (steps, seeds, chains, ...) with `estimates` merged in."""
    K, S = len(steps), len(seeds)
    index = jnp.repeat(jnp.arange(K * S), s.chains)
    keys = jnp.concatenate([chain_keys(seeds, t, s.chains) for t in steps])
    out = jax.device_get(fn(jax.device_get(centres), extra, index, keys, shared))
    samples = jax.tree.map(lambda x: np.asarray(x).reshape(K, S, s.chains, *x.shape[1:]), out)
    return {**samples, **llc.estimates(samples, s)}


def estimate_checkpoints(run_dir, s: llc.Settings, steps=None, mode: str = "auto") -> tuple[list[int], dict]:
    """Offline: the LLC at a finished run's checkpoints (`steps`, default all), every checkpoint x
    seed x chain in one program, under the task's own loss without the run's clamps. Returns the
    steps and NumPy arrays shaped (steps, seeds, chains, ...) with `estimates` merged in. The keys
    are those of the online estimate, so an unclamped run's online and offline estimates at the same
    step and settings agree to float rounding."""
    available = checkpoint_steps(run_dir)
    steps = available if steps is None else list(steps)
    missing = [t for t in steps if t not in available]
    if missing:
        raise RunLoadError(f"no checkpoint at step(s) {missing} in {Path(run_dir) / 'checkpoints'}; available: {available}")
    runs = [load_run(run_dir, t) for t in steps]
    task, model, seeds = runs[0].task, runs[0].model, runs[0].seeds
    centres = jax.tree.map(lambda *xs: np.concatenate(xs), *[jax.device_get(r.params) for r in runs])   # (K*S, ...)
    n = len(steps) * len(seeds) * s.chains
    loss = lambda p, batch, extra, shared: task.loss(model.apply(p, batch)[0], batch)
    fn = program(loss, lambda k: task.sample(k, s.batch_size), s, n, parts_for(task, model, s.batch_size),
                 batch_axis_mode(mode))
    return steps, run(fn, centres, jnp.zeros(len(steps) * len(seeds)), seeds, steps, s)
