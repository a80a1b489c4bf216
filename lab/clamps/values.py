"""Clamp value kinds: what a clamped activation is set to, one registry entry per kind.

Each kind (the config's `value:`) is one `ValueKind` in `KINDS` below. The entry says everything
the clamp set (lab/clamps/clamp_set.py) needs to know about the kind: the sites it may sit on, whether
`grad: true` is allowed, which extra forward pass it reads, whether it takes `copy_from`, and
`compute`, which builds the value inside the compiled step from a `Context`. clamp_set.py has no
per-kind code: its checks, the extra passes it runs and the values it applies (and the kinds that
an error lists, e.g. those that allow `grad: true`) all read the entry.

To add a kind, add one `ValueKind` to `KINDS` (its position is its place in the list of allowed
values that errors print). For example, a median ablation over the probe batch would be

    ValueKind("median", lambda ctx: ctx.sg(jnp.median(ctx.extra[ctx.site], 0, keepdims=True)),
              needs="probe", grad=True),

`compute` runs while tracing, so it must build the value from `ctx`'s arrays: a clamp's numbers
(strength, pattern_strength, factor, masks) are traced data, and changing them never recompiles.
It returns the value, broadcastable to the site's activation (see `site_axes` in clamp_set.py), or
a function `(x, cache) -> value` of the site's unclamped activation and the clamped pass's cache so
far; or a `Value` that also restricts the clamp's mask or names the sites that function reads
from the cache. The hook blends it in as `strength * value + (1 - strength) * x` where the mask
holds (lab/model/hooks.py).

The ideal patterns used by prev_token, induction and perfect_copy live beside their kinds here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lab.model.transformer import previous_position

PASSES = ("clean", "probe", "source")   # the extra passes a kind can read (`ValueKind.needs`)


# ---- ideal patterns ----
def prev_token_pattern(T: int, s) -> jax.Array:
    """(T, T) ideal previous-token pattern: row i puts s on i-1 and 1-s on i; row 0 attends to itself."""
    eye = jnp.eye(T)
    return (s * jnp.eye(T, k=-1) + (1 - s) * eye).at[0].set(eye[0])


def induction_pattern(weights: jax.Array, s) -> jax.Array:
    """(B, T, T) ideal induction pattern from the task's target weights (B, T, T): s on the targets,
    1-s on the query itself."""
    return s * weights + (1 - s) * jnp.eye(weights.shape[-1])


def copy_logits(pattern: jax.Array, tokens: jax.Array, vocab: int, keys=None) -> jax.Array:
    """(B, T, V) "perfect copy" logits: log of the attention mass on each token id, i.e. the head's
    attention read out as a distribution over the tokens it attends to. `keys` ((B, T) bool, or None
    for every key): the keys the copy may read; the pattern is renormalised over them, so it is
    softmax(scores restricted to those keys), as Singh et al.'s copy clamp restricts to the label
    positions. Ids no read key holds get log(1e-6): probability ~1e-6 instead of Singh's exact 0.
    The renormalisation is a difference of logs with the same 1e-6 floor, so its gradient stays finite
    where a row has no mass on the keys (a `copy_from: auto` clamp before its head is chosen)."""
    if keys is not None:
        pattern = pattern * keys[:, None, :]
    mass = jnp.einsum("bqk,bkv->bqv", pattern, jax.nn.one_hot(tokens, vocab, dtype=pattern.dtype))
    if keys is None:
        return jnp.log(mass + 1e-6)
    return jnp.log(mass + 1e-6) - jnp.log(pattern.sum(-1, keepdims=True) + 1e-6)


# ---- the registry's types ----
@dataclass(frozen=True)
class Context:
    """What a kind's `compute` sees, for one clamp on one site, inside the compiled step."""
    site: str                 # the concrete hook site
    arrays: dict              # the clamp's traced arrays (pattern_strength, factor, masks, window, ...)
    batch: Any                # the task batch of this forward pass
    strength: jax.Array       # the scheduled strength at this step
    extra: dict               # {site: activation} of the pass the kind `needs` ({} when none)
    grad: bool                # the clamp's `grad:`
    head: Optional[tuple]     # (layer, head) of `copy_from`, for kinds that take it; head None: `copy_from: auto`,
                              # the head is arrays["heads"] (chosen per seed, lab/train/callbacks.py)
    task: Any
    seq_len: int
    n_outputs: int            # the model's output size (vocabulary)

    def sg(self, x):
        """x without gradients, unless the clamp asked for them (`grad: true`)."""
        return x if self.grad else jax.lax.stop_gradient(x)


class Value(NamedTuple):
    """A value with more to say than the value itself (a `compute` may also return the value alone)."""
    value: Any                            # array broadcastable to the site, or fn(x, cache) -> array
    where: Optional[jax.Array] = None     # ANDed into the clamp's mask (e.g. rows with a target)
    reads: tuple = ()                     # sites fn(x, cache) reads from the clamped pass's cache


@dataclass(frozen=True)
class ValueKind:
    """One clamp value kind: the config checks and the extra pass it needs, and how it is computed."""
    name: str                              # the config's `value:`
    compute: Callable[[Context], Any]      # -> the value, a fn(x, cache), or a `Value`
    on_site: Optional[Callable[[str, str, tuple], Optional[str]]] = None
    """(kind name, concrete site, the site's axes) -> why the kind cannot sit there, or None.
    None: any site."""
    grad: bool = False                     # `grad: true` allowed: computed from the model being trained
    needs: Optional[str] = None
    """The extra pass whose cache `compute` reads as ctx.extra, one of PASSES: "clean", the
    unclamped pass of the same weights on the same batch; "probe", the unclamped pass on the probe
    batch; "source", the frozen `source:` run's model on the same batch (the clamp then needs
    `source:`). None: no extra pass."""
    copy_from: bool = False                # takes `copy_from: L<l>H<h>` (ctx.head)
    mixes_sequences: bool = False          # a sequence's value comes from other sequences of its batch
    auto_measure: str = "induction"        # the head score `heads: auto` ranks by, unless auto_measure is set

    def __post_init__(self):
        assert self.needs in PASSES + (None,), self.needs

    def site_error(self, site: str, axes: tuple) -> Optional[str]:
        return self.on_site(self.name, site, axes) if self.on_site else None

    def evaluate(self, ctx: Context) -> Value:
        out = self.compute(ctx)
        return out if isinstance(out, Value) else Value(out)


# ---- site rules ----
def on_attention_pattern(kind: str, site: str, axes: tuple) -> Optional[str]:
    if site.endswith(".attn.pattern"):
        return None
    return (f"value={kind} is an attention pattern; put it on "
            f"blocks.<l>.attn.pattern (this site has {'no key axis' if 'key' not in axes else 'pre-softmax scores'})")


def on_logits(kind: str, site: str, axes: tuple) -> Optional[str]:
    return None if site == "logits" else f"value={kind} replaces the output logits; use site: logits"


def on_residual(kind: str, site: str, axes: tuple) -> Optional[str]:
    if re.fullmatch(r"blocks\.\d+\.resid_(pre|mid|post)", site):
        return None
    return f"value={kind} is a residual stream; put it on blocks.<l>.resid_pre, resid_mid or resid_post"


def on_keys(kind: str, site: str, axes: tuple) -> Optional[str]:
    return None if site.endswith(".attn.k") else f"value={kind} shifts a layer's keys; put it on blocks.<l>.attn.k"


# ---- the kinds ----
def _induction(ctx: Context) -> Value:
    """The pattern and the rows it covers come from the batch."""
    weights, rows = ctx.task.induction_attention(ctx.batch)
    return Value(induction_pattern(weights, ctx.arrays["pattern_strength"])[:, None], where=rows[:, None, :, None])


def _scale(ctx: Context):
    """factor 1 while off, so a non-finite factor cannot leak into gradients."""
    a, strength = ctx.arrays, ctx.strength
    return lambda x, cache: jnp.where(strength != 0, a["factor"], 1.0) * x


def _perfect_copy(ctx: Context) -> Value:
    """The copy head's pattern read out over the keys the task lets a copy read (`copy_keys`). The head
    is the clamp's one-hot head mask: `copy_from: L<l>H<h>`'s head, or with `copy_from: auto` the head
    chosen per seed (all zero, so the value is unused, until chosen)."""
    site, tokens, vocab = f"blocks.{ctx.head[0]}.attn.pattern", ctx.batch.tokens, ctx.n_outputs
    keys = ctx.task.copy_keys(ctx.batch)
    w = ctx.arrays["heads"].astype(jnp.float32)
    pick = lambda p: jnp.einsum("bhqk,h->bqk", p, w / jnp.maximum(w.sum(), 1.0))
    return Value(lambda x, cache: copy_logits(pick(cache[site]), tokens, vocab, keys), reads=(site,))


def _embed(ctx: Context) -> Value:
    """The residual stream as it entered layer 0 (embeddings, plus positions where they are added)."""
    return Value(lambda x, cache: cache["blocks.0.resid_pre"], reads=("blocks.0.resid_pre",))


KINDS: dict[str, ValueKind] = {k.name: k for k in (
    ValueKind("prev_token", lambda ctx: prev_token_pattern(ctx.seq_len, ctx.arrays["pattern_strength"]),
              on_site=on_attention_pattern, auto_measure="prev_token_corrected"),
    ValueKind("induction", _induction, on_site=on_attention_pattern),
    ValueKind("zero", lambda ctx: jnp.zeros(())),
    ValueKind("mean", lambda ctx: ctx.sg(ctx.extra[ctx.site].mean(0, keepdims=True)), needs="probe", grad=True),
    ValueKind("preserve", lambda ctx: ctx.sg(ctx.extra[ctx.site]), needs="clean", grad=True),
    # each item gets the activation of another sequence in its (micro)batch
    ValueKind("resample", lambda ctx: ctx.sg(jnp.roll(ctx.extra[ctx.site], 1, axis=0)), needs="clean", grad=True,
              mixes_sequences=True),
    ValueKind("graft", lambda ctx: jax.lax.stop_gradient(ctx.extra[ctx.site]), needs="source"),
    ValueKind("perfect_copy", _perfect_copy, on_site=on_logits, copy_from=True),
    ValueKind("scale", _scale),
    # the layers below the site removed: what reaches it is the embedding (Singh et al.'s "layer 0
    # removed"); gradients reach the embeddings through it
    ValueKind("embed", _embed, on_site=on_residual),
    # each position's key is the previous position's (an ideal previous-token head K-composing with
    # this layer); on the residual of `embed`, Singh et al.'s perfect_prev_token_input
    ValueKind("prev_token_key", lambda ctx: (lambda x, cache: previous_position(x)), on_site=on_keys),
)}
VALUES = tuple(KINDS)     # the allowed `value:` names, in the order errors list them
