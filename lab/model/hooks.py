"""Hook sites, caches and interventions.

Every activation the model computes passes through `hooks(name, x)`, with TransformerLens-style
names (`blocks.0.attn.pattern`, ...). An intervention is data, not code: a mask, a replacement
value (or a function of this pass's activations, e.g. "perfect copy" logits from a head's pattern)
and a strength; a site may hold a list of them, applied in order as `where(mask, s*value + (1-s)*x, x)`.
Masks, values and strengths are traced arrays, so changing them between steps never recompiles; only changing
*which* sites are intervened on does (keep idle sites present with an all-False mask).
Gradients flow through x wherever the mask is False (and with weight 1-s where it is True).

TransformerLens' own names are aliases: its names are the lab's with `hook_` before the last part
(`blocks.0.attn.hook_pattern`, `hook_embed`, `blocks.0.hook_resid_pre`, `blocks.0.mlp.hook_pre`), with
three renamed sites: `attn.hook_result` is the lab's per-head `attn.out`, `attn.hook_attn_scores` its
`attn.scores`, and a block's `hook_mlp_out` its `mlp.out`. `canonical_name` maps them.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
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


# TransformerLens' leaf names that differ from the lab's by more than `hook_`
_TL_RENAMED = {("attn", "result"): ("attn", "out"), ("attn", "attn_scores"): ("attn", "scores")}
# TransformerLens sites the lab has no equivalent of, with what to use instead (for the error message)
_TL_ONLY = {
    r"hook_tokens": "the lab has no hook on the tokens",
    r"blocks\.[^.]+\.hook_attn_out": "the lab hooks each head's output: blocks.<l>.attn.out, summed over "
                                       "its head axis (2), or blocks.<l>.resid_mid - blocks.<l>.resid_pre",
    r"(blocks\.[^.]+\.ln[12]|ln_final)\.hook_(normalized|scale)":
        "the lab has no hooks inside its LayerNorms (TransformerLens' hook_normalized comes before the "
        "LayerNorm's weight and bias); 'final' is ln_final's output, the unembedding's input",
    r"blocks\.[^.]+\.attn\.hook_rot_[qk]": "the lab hooks q and k before the rotary embedding only",
    r"blocks\.[^.]+\.(hook_(q|k|v|attn|mlp)_in(put)?)": "the lab has no hooks on a head's or the MLP's input",
}


def canonical_name(name: str) -> str:
    """The lab's name of a hook site given by its TransformerLens name, globs included
    (`blocks.*.attn.hook_pattern` -> `blocks.*.attn.pattern`, `blocks.0.attn.hook_result` ->
    `blocks.0.attn.out`, `blocks.0.hook_mlp_out` -> `blocks.0.mlp.out`); lab names come back as they are."""
    parts = name.split(".")
    if not parts[-1].startswith("hook_"):
        return name
    parent, leaf = parts[:-1], parts[-1][len("hook_"):]
    if parent and (parent[-1], leaf) in _TL_RENAMED:
        parent[-1], leaf = _TL_RENAMED[(parent[-1], leaf)]
    elif leaf == "mlp_out":
        parent, leaf = parent + ["mlp"], "out"
    return ".".join(parent + [leaf])


def unknown_hook_message(name: str, available: list[str]) -> str:
    """One line: the site does not exist, the closest names that do, and (for a TransformerLens site the
    lab lacks) what to use instead."""
    note = next((why for pattern, why in _TL_ONLY.items() if re.fullmatch(pattern, name)), None)
    close = difflib.get_close_matches(canonical_name(name), available, n=3, cutoff=0.6)
    return (f"hook site {name!r} does not exist in this model"
            + (f" ({note})" if note else "")
            + (f"; closest: {', '.join(close)}" if close else "")
            + f"; all {len(available)} sites are in model.hook_names (e.g. {', '.join(available[:3])}, ...)")


def resolve_names(patterns: Iterable[str], available: list[str]) -> list[str]:
    """Expand names and glob patterns (`blocks.*.attn.pattern`), the lab's or TransformerLens' (see
    `canonical_name`), into the model's hook names; an unknown one raises UnknownHookError naming the
    closest sites."""
    out = []
    for p in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, canonical_name(p))]
        if not hits:
            raise UnknownHookError(unknown_hook_message(p, available))
        out += [h for h in hits if h not in out]
    return out


def resolve_interventions(interventions: dict | None, available: list[str]) -> dict:
    """Interventions keyed by the model's hook names: aliases and globs resolved (a glob puts the
    intervention on every site it matches); interventions that land on one site apply in the order given."""
    out: dict = {}
    for key, ivs in (interventions or {}).items():
        ivs = ivs if isinstance(ivs, list) else [ivs]
        for site in resolve_names([key], available):
            out[site] = out.get(site, []) + list(ivs)
    return {site: ivs[0] if len(ivs) == 1 else ivs for site, ivs in out.items()}


class ActivationCache(dict):
    """{site: activation} under the lab's names, which also answers to TransformerLens' names
    (`cache["blocks.0.attn.hook_pattern"]` is `cache["blocks.0.attn.pattern"]`)."""

    def __getitem__(self, name):
        return super().__getitem__(name if dict.__contains__(self, name) else canonical_name(name))

    def __contains__(self, name):
        return dict.__contains__(self, name) or dict.__contains__(self, canonical_name(name))

    def get(self, name, default=None):
        return self[name] if name in self else default


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
            raise UnknownHookError("; ".join(unknown_hook_message(m, self.seen) for m in sorted(missing)))
