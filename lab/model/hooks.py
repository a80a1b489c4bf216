"""Hook sites, caches and interventions.

Every activation the model computes passes through `hooks(name, x)`, with TransformerLens-style
names (`blocks.0.attn.pattern`, ...). An intervention is data, not code: a mask, a replacement
value (or a function of this pass's activations, e.g. "perfect copy" logits from a head's pattern)
and a strength; a site may hold a list of them, applied in order as `where(mask, s*value + (1-s)*x, x)`.
Masks, values and strengths are traced arrays, so changing them between steps never recompiles; only changing
*which* sites are intervened on does (keep idle sites present with an all-False mask).
Gradients flow through x wherever the mask is False (and with weight 1-s where it is True).
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, NamedTuple, Union

import jax
import jax.numpy as jnp


class Intervention(NamedTuple):
    mask: jax.Array                 # bool, broadcastable to the site's activation
    value: Union[jax.Array, Callable]  # broadcastable to the site's activation, or fn(x, cache) -> value
    strength: Union[float, jax.Array] = 1.0


def apply_intervention(x: jax.Array, iv: Intervention) -> jax.Array:
    mask, value, strength = iv
    if isinstance(strength, (int, float)) and strength == 1.0:
        replaced = value
    else:   # strength 0 leaves x exactly as it is, even where the value is not finite
        replaced = strength * value + (1.0 - strength) * x
        mask = jnp.logical_and(mask, strength != 0)
    return jnp.where(mask, jnp.asarray(replaced).astype(x.dtype), x)


class UnknownHookError(KeyError):
    def __str__(self) -> str:   # KeyError would quote the whole message
        return str(self.args[0])


def resolve_names(patterns: Iterable[str], available: list[str]) -> list[str]:
    """Expand glob patterns (`blocks.*.attn.pattern`) against the model's hook names."""
    out = []
    for p in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise UnknownHookError(f"hook site {p!r} does not exist in this model; available: {', '.join(available)}")
        out += [h for h in hits if h not in out]
    return out


class Hooks:
    """Passed through the forward pass: applies interventions and records the cached sites."""

    def __init__(self, interventions: dict | None = None, cache_names: Iterable[str] = ()):
        self.interventions = dict(interventions or {})
        self.cache_names = frozenset(cache_names)
        self.cache: dict[str, jax.Array] = {}
        self.seen: list[str] = []

    def wants(self, name: str) -> bool:
        """True if the site is cached or intervened on (lets the model skip optional work)."""
        return name in self.interventions or name in self.cache_names

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        self.seen.append(name)
        ivs = self.interventions.get(name, [])
        for iv in ivs if isinstance(ivs, list) else [ivs]:   # several on one site apply in order
            iv = iv if isinstance(iv, Intervention) else Intervention(*iv)
            if callable(iv.value):   # a value computed in this pass, from x or from earlier sites
                iv = iv._replace(value=iv.value(x, self.cache))
            x = apply_intervention(x, iv)
        if name in self.cache_names:
            self.cache[name] = x
        return x

    def check_used(self) -> None:
        missing = (set(self.interventions) | self.cache_names) - set(self.seen)
        if missing:
            raise UnknownHookError(f"hook site(s) {', '.join(sorted(missing))} do not exist in this model; "
                                   f"available: {', '.join(self.seen)}")
