"""Clamp strength schedules: how strongly a clamp applies at each training step of its window.

The schedule's numbers (window, peak, ramp, kind) are traced arrays of the clamp (see
lab/clamps/clamp_set.py), so the strength is computed inside the compiled scan from the step number:
a window starts and stops at exact steps, and changing a schedule's numbers never recompiles.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SCHEDULES = {"constant": 0, "linear": 1, "cosine": 2, "release": 3}   # config name -> traced `kind`
NEVER = 2 ** 30                               # stop of an open-ended window


def schedule_strength(t, a: dict) -> jax.Array:
    """Strength at step t: 0 outside [start, stop); inside, peak times 1 (constant), a linear or
    cosine ramp reaching 1 after ramp steps (linear, cosine), or a linear ramp down to 0 at stop
    (release)."""
    t = jnp.asarray(t, jnp.float32)
    active = (t >= a["start"]) & (t < a["stop"])
    ramp = jnp.maximum(a["ramp"], 1.0)
    up = jnp.clip((t - a["start"] + 1) / ramp, 0.0, 1.0)
    down = jnp.clip((a["stop"] - t) / ramp, 0.0, 1.0)
    frac = jnp.select([a["kind"] == 1, a["kind"] == 2, a["kind"] == 3],
                      [up, 0.5 - 0.5 * jnp.cos(jnp.pi * up), down], 1.0)
    return jnp.where(active, a["peak"] * frac, 0.0)
