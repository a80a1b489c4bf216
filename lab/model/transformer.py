"""A decoder-only transformer in Flax NNX with named hook sites (see lab/model/hooks.py).

Shapes: q, k, v, z are (batch, pos, head, d_head); scores and pattern are (batch, head, query, key);
`attn.out` is the per-head output (batch, pos, head, d_model), computed only when hooked.
`Model` wraps the NNX module in a pure functional API (params as a plain dict), which is what the
trainer jits and vmaps over seeds.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lab.model.hooks import ActivationCache, Hooks, resolve_interventions, resolve_names
from lab.model.kernels import causal_mask, context_mask, dense, softmax_attention


def _normal(rngs: nnx.Rngs, shape, std):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape))


LN_EPS = 1e-5   # LayerNorm's epsilon (TransformerLens' default too)


class LayerNorm(nnx.Module):
    """Plain LayerNorm; written out because it compiles to faster CPU code than nnx.LayerNorm here."""

    def __init__(self, d: int, eps: float = LN_EPS):
        self.scale, self.bias, self.eps = nnx.Param(jnp.ones(d)), nnx.Param(jnp.zeros(d)), eps

    def __call__(self, x):
        x = x - x.mean(-1, keepdims=True)
        return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.scale[...] + self.bias[...]


def _norm(d: int, enabled: bool, rngs: nnx.Rngs):
    return LayerNorm(d) if enabled else None


def _apply_norm(norm, x):
    return x if norm is None else norm(x)


def sinusoidal_table(seq_len: int, d: int) -> jax.Array:
    pos = jnp.arange(seq_len)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2) / d)
    table = jnp.zeros((seq_len, d))
    table = table.at[:, 0::2].set(jnp.sin(pos * freq))
    return table.at[:, 1::2].set(jnp.cos(pos * freq)[:, : d // 2])


def rotary(x: jax.Array, base: float) -> jax.Array:
    """Rotate pairs (x[2i], x[2i+1]) of each head vector by angle pos * base^(-2i/d)."""
    T, d = x.shape[1], x.shape[-1]
    angle = jnp.arange(T)[:, None] * base ** (-jnp.arange(0, d, 2) / d)   # (T, d/2)
    cos, sin = jnp.cos(angle)[None, :, None], jnp.sin(angle)[None, :, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)


SMEAR_INIT = 0.0   # alpha_h at initialisation: sigma(0) = 0.5, an even mix of each key with the previous one


def previous_position(x: jax.Array) -> jax.Array:
    """x with each position (axis 1) holding the previous position's value; position 0 keeps its own."""
    return jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)


def smear_keys(k: jax.Array, alpha: jax.Array) -> jax.Array:
    """Olsson et al. (2022)'s smeared keys: k'_j = sigma(alpha_h) k_j + (1 - sigma(alpha_h)) k_{j-1} for
    k of shape (batch, pos, head, d_head) and one learned scalar alpha_h per head, (head,). Position 0
    has no previous key and keeps its own: k_{-1} := k_0, so k'_0 = k_0."""
    prev = previous_position(k)   # k_{j-1}, with k_{-1} = k_0
    mix = jax.nn.sigmoid(alpha)[None, None, :, None].astype(k.dtype)
    return mix * k + (1 - mix) * prev


def relative_key_scores(q: jax.Array, table: jax.Array) -> jax.Array:
    """Shaw et al. (2018)'s relative-position term of the attention scores, as Edelman et al. (2024) use
    it: s[b, h, i, j] = q[b, i, h] . table[i - j, h] for j <= i (0 above the diagonal, which the causal
    mask hides). q is (batch, pos, head, d_head); table (max_offset, head, d_head) holds one learned
    key-side vector per offset i - j = 0 .. max_offset - 1 and head. Returns (batch, head, query, key)."""
    T = q.shape[1]
    per_offset = jnp.einsum("bqhe,ohe->bhqo", q, table[:T])               # q_i . r_o for every offset o
    offset = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]             # (query, key): i - j
    rel = jnp.take_along_axis(per_offset, jnp.broadcast_to(jnp.maximum(offset, 0), per_offset.shape), axis=-1)
    return jnp.where(offset >= 0, rel, 0.0)


class Attention(nnx.Module):
    """Multi-head attention. With `smeared_keys` (Olsson et al. 2022) each head h has a learned scalar
    `smear_alpha[h]` and its scores use the smeared keys k'_j = sigma(alpha_h) k_j + (1 - sigma(alpha_h)) k_{j-1}
    (k'_0 = k_0: position 0 has no previous key), which lets a single layer attend by the previous
    token's identity, i.e. form an induction head without a previous-token head in an earlier layer.

    - alpha starts at SMEAR_INIT = 0, an even mix (sigma = 0.5): no prior for smearing or not, and the
      one place from which Adam, which moves alpha by about lr per step, can reach either end within a
      run; a start near "unsmeared" (alpha = 3, sigma = 0.95) would barely move in a few thousand steps.
    - The keys are smeared after the rotary embedding (pos_embed=rope), so the score of query i with
      key j is exactly sigma q_i.k_j + (1 - sigma) q_i.k_{j-1}, each term with its own relative position,
      as without RoPE; smearing before it would rotate position j-1's key as if it sat at j.
    - Hook sites: `attn.k` stays the key projection of each position's own residual (x_j W_K, before
      RoPE, as in every model and TransformerLens' hook_k); the smeared key the scores use has its own
      site, `attn.k_smeared` (after RoPE), present only in smeared-key models. An intervention on `attn.k`
      reaches the scores through the smear (a patched k_j changes k'_j and k'_{j+1}).

    With `pos_embed=relative` (Shaw et al. 2018; Edelman et al. 2024's model) each layer has a learned
    table `W_rel` (seq_len, head, d_head), one key-side vector per offset i - j, and the scores are
    (q_i . k_j + q_i . W_rel[i - j]) * scale (see `relative_key_scores`); the stream carries no position.
    These scores have no fused kernel: the model takes the explicit path, so `attn.scores` includes the term.
    """

    def __init__(self, cfg, d_head: int, rngs: nnx.Rngs, seq_len: int = 0):
        D, H, s = cfg.d_model, cfg.n_heads, cfg.init_std
        self.W_Q = _normal(rngs, (D, H, d_head), s)
        self.W_K = _normal(rngs, (D, H, d_head), s)
        self.W_V = _normal(rngs, (D, H, d_head), s)
        self.W_O = _normal(rngs, (H, d_head, D), s)
        self.rope_base = cfg.rope_base if cfg.pos_embed == "rope" else None
        self.scale = 1 / math.sqrt(d_head) if cfg.attn_scale else 1.0
        self.linear = cfg.attention == "linear"
        self.fused = cfg.fused_attention and not self.linear
        self.context_only = getattr(cfg, "attn_mask", "causal") == "context"   # a run saved before the option has none
        if getattr(cfg, "smeared_keys", False):   # a run saved before the option has none
            self.smear_alpha = nnx.Param(jnp.full((H,), SMEAR_INIT))
        if cfg.pos_embed == "relative":
            self.W_rel = _normal(rngs, (seq_len, H, d_head), s)
            self.fused = False

    def __call__(self, x, hooks: Hooks, p: str):
        q = hooks(f"{p}.q", jnp.einsum("btd,dhe->bthe", x, self.W_Q[...]))
        k = hooks(f"{p}.k", jnp.einsum("btd,dhe->bthe", x, self.W_K[...]))
        v = hooks(f"{p}.v", jnp.einsum("btd,dhe->bthe", x, self.W_V[...]))
        if self.rope_base is not None:
            q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
        if hasattr(self, "smear_alpha"):   # after RoPE: see the class docstring
            k = hooks(f"{p}.k_smeared", smear_keys(k, self.smear_alpha[...]))
        if self.fused and not (hooks.wants(f"{p}.scores") or hooks.wants(f"{p}.pattern")):
            hooks.seen += [f"{p}.scores", f"{p}.pattern"]
            return self._project(hooks(f"{p}.z", softmax_attention(q, k, v, self.scale)), hooks, p)
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k)
        if hasattr(self, "W_rel"):
            scores = scores + relative_key_scores(q, self.W_rel[...])
        scores = scores * self.scale
        causal = context_mask(x.shape[1]) if self.context_only else causal_mask(x.shape[1])
        if self.linear:   # linear self-attention (von Oswald et al. 2022): the masked scores themselves
            scores = hooks(f"{p}.scores", jnp.where(causal, scores, 0.0))
            pattern = hooks(f"{p}.pattern", scores)
        else:
            scores = hooks(f"{p}.scores", jnp.where(causal, scores, -1e30))
            pattern = hooks(f"{p}.pattern", jax.nn.softmax(scores, axis=-1))
        return self._project(hooks(f"{p}.z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v)), hooks, p)

    def _project(self, z, hooks: Hooks, p: str):
        if hooks.wants(f"{p}.out"):
            out = hooks(f"{p}.out", jnp.einsum("bqhe,hed->bqhd", z, self.W_O[...]))
            return out.sum(axis=2)
        hooks.seen.append(f"{p}.out")
        B, T, H, E = z.shape   # one (B T, H E) x (H E, D) product; as an einsum XLA reordered (h, e)
        return dense(z.reshape(B, T, H * E), self.W_O[...].reshape(H * E, -1))


class MLP(nnx.Module):
    def __init__(self, cfg, rngs: nnx.Rngs):
        D, M, s = cfg.d_model, cfg.d_mlp or 4 * cfg.d_model, cfg.init_std
        self.W_in, self.b_in = _normal(rngs, (D, M), s), nnx.Param(jnp.zeros(M))
        self.W_out, self.b_out = _normal(rngs, (M, D), s), nnx.Param(jnp.zeros(D))

    def __call__(self, x, hooks: Hooks, p: str):
        pre = hooks(f"{p}.pre", dense(x, self.W_in[...]) + self.b_in[...])
        post = hooks(f"{p}.post", jax.nn.gelu(pre))
        return hooks(f"{p}.out", dense(post, self.W_out[...]) + self.b_out[...])


class Block(nnx.Module):
    def __init__(self, cfg, d_head: int, rngs: nnx.Rngs, seq_len: int = 0):
        self.ln1 = _norm(cfg.d_model, cfg.layer_norm, rngs)
        self.attn = Attention(cfg, d_head, rngs, seq_len)
        if not cfg.attn_only:
            self.ln2 = _norm(cfg.d_model, cfg.layer_norm, rngs)
            self.mlp = MLP(cfg, rngs)
        self.attn_only = cfg.attn_only

    def __call__(self, x, hooks: Hooks, p: str):
        x = hooks(f"{p}.resid_pre", x)
        x = hooks(f"{p}.resid_mid", x + self.attn(_apply_norm(self.ln1, x), hooks, f"{p}.attn"))
        if not self.attn_only:
            x = x + self.mlp(_apply_norm(self.ln2, x), hooks, f"{p}.mlp")
        return hooks(f"{p}.resid_post", x)


class Readout(nnx.Module):
    """Reddy (2024)'s classifier after the attention layers: a ReLU MLP from the residual stream.
    `layers` ReLU layers of width `hidden`, then a linear map to the logits:
        h_1 = relu(x W_1 + b_1),  h_j = relu(h_{j-1} W_mid[j-2] + b_mid[j-2])  (j = 2..layers),
        logits = h_layers W_2 + b_2.
    layers = 1 is the lab's original readout (W_1, W_2 only); Reddy's code has layers = 3. The hook
    `readout.post` is the last ReLU layer's output (the one the logits read)."""

    def __init__(self, d: int, hidden: int, n_out: int, s: float, rngs: nnx.Rngs, layers: int = 1,
                 init: str = "normal"):
        # init "normal": every weight N(0, s²) (the model's init_std); "he", as Reddy's code: the ReLU
        # layers N(0, 2/fan_in), the output layer N(0, 1/fan_in), so the signal neither dies nor grows
        # through the stack (with s = 0.02 three layers shrink it ~100-fold and plain SGD stalls).
        he = init == "he"
        self.W_1 = _normal(rngs, (d, hidden), math.sqrt(2 / d) if he else s)
        self.b_1 = nnx.Param(jnp.zeros(hidden))
        if layers > 1:
            self.W_mid = _normal(rngs, (layers - 1, hidden, hidden), math.sqrt(2 / hidden) if he else s)
            self.b_mid = nnx.Param(jnp.zeros((layers - 1, hidden)))
        self.W_2, self.b_2 = _normal(rngs, (hidden, n_out), math.sqrt(1 / hidden) if he else s), nnx.Param(jnp.zeros(n_out))
        self.layers = layers

    def __call__(self, x, hooks: Hooks):
        h = jax.nn.relu(dense(x, self.W_1[...]) + self.b_1[...])
        for j in range(self.layers - 1):
            h = jax.nn.relu(dense(h, self.W_mid[...][j]) + self.b_mid[...][j])
        h = hooks("readout.post", h)
        return dense(h, self.W_2[...]) + self.b_2[...]


class Transformer(nnx.Module):
    def __init__(self, cfg, vocab_size: int, seq_len: int, rngs: nnx.Rngs, n_outputs: Optional[int] = None,
                 feature_dim: int = 0):
        D, s = cfg.d_model, cfg.init_std
        d_head = cfg.d_head or D // cfg.n_heads
        n_outputs = n_outputs or vocab_size
        self.W_E = _normal(rngs, (vocab_size, D), s)
        if feature_dim:   # continuous items (e.g. exemplar vectors) are projected into the stream
            self.W_F = _normal(rngs, (feature_dim, D), 1 / math.sqrt(feature_dim))
        self.pos_kind = cfg.pos_embed
        if cfg.pos_embed == "learned":
            self.W_pos = _normal(rngs, (seq_len, D), s)
        self.blocks = nnx.List([Block(cfg, d_head, rngs, seq_len) for _ in range(cfg.n_layers)])
        self.ln_final = _norm(D, cfg.layer_norm, rngs)
        if cfg.readout_hidden:
            self.readout = Readout(D, cfg.readout_hidden, n_outputs, s, rngs, cfg.get("readout_layers", 1),
                                  cfg.get("readout_init", "normal"))
        else:
            self.W_U = _normal(rngs, (D, n_outputs), s)

    def __call__(self, tokens, hooks: Hooks, features=None):
        T = tokens.shape[1]
        x = self.W_E[...][tokens]
        if features is not None:
            x = x + dense(features, self.W_F[...])
        x = hooks("embed", x)
        if self.pos_kind == "learned":
            x = x + hooks("pos_embed", self.W_pos[...][:T])[None]
        elif self.pos_kind == "sinusoidal":
            x = x + hooks("pos_embed", sinusoidal_table(T, x.shape[-1]))[None]
        for l, block in enumerate(self.blocks):
            x = block(x, hooks, f"blocks.{l}")
        x = hooks("final", _apply_norm(self.ln_final, x))
        if hasattr(self, "readout"):
            return hooks("logits", self.readout(x, hooks))
        return hooks("logits", dense(x, self.W_U[...]))


def split_inputs(inputs) -> tuple[jax.Array, Optional[jax.Array]]:
    """A task batch (anything with `.tokens`, maybe `.features`) or a plain (B, T) token array."""
    return getattr(inputs, "tokens", inputs), getattr(inputs, "features", None)


class Model:
    """Pure functional face of `Transformer`: `init(key) -> params`, `apply(params, tokens, ...)`."""

    def __init__(self, cfg, vocab_size: int, seq_len: int, n_outputs: Optional[int] = None, feature_dim: int = 0):
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        self.n_outputs, self.feature_dim = n_outputs or vocab_size, feature_dim
        abstract = nnx.eval_shape(lambda: self._module(nnx.Rngs(0)))
        self.graphdef, _ = nnx.split(abstract)
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.hook_names = self._trace_hook_names()

    @classmethod
    def for_task(cls, cfg, task) -> "Model":
        return cls(cfg, task.model_vocab_size, task.seq_len, task.n_outputs, task.feature_dim)

    def _module(self, rngs: nnx.Rngs) -> Transformer:
        return Transformer(self.cfg, self.vocab_size, self.seq_len, rngs, self.n_outputs, self.feature_dim)

    def init(self, key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(self._module(nnx.Rngs(key))))

    def apply(self, params: dict, inputs, interventions: Optional[dict] = None, cache_names: Iterable[str] = ()):
        """Logits (B, T, n_outputs) and the cache {site: activation} for the requested sites.
        `inputs` is a task batch or a (B, T) token array."""
        tokens, features = split_inputs(inputs)
        hooks = Hooks(interventions, cache_names)
        logits = nnx.merge(self.graphdef, params)(tokens, hooks, features)
        hooks.check_used()
        return logits, hooks.cache

    def _trace_hook_names(self) -> list[str]:
        hooks = Hooks()
        params = jax.eval_shape(self.init, jax.random.key(0))
        tokens = jax.ShapeDtypeStruct((1, self.seq_len), jnp.int32)
        features = jax.ShapeDtypeStruct((1, self.seq_len, self.feature_dim), jnp.float32) if self.feature_dim else None
        jax.eval_shape(lambda p, t, f: nnx.merge(self.graphdef, p)(t, hooks, f), params, tokens, features)
        return list(dict.fromkeys(hooks.seen))

    def run_with_cache(self, params: dict, tokens, names: Iterable[str] = ("*",),
                       interventions: Optional[dict] = None):
        """Like TransformerLens: (logits, {name: activation}). Names and intervention keys may be globs
        and TransformerLens' names (`blocks.0.attn.hook_pattern`); the cache answers to both."""
        names = resolve_names(names, self.hook_names)
        interventions = resolve_interventions(interventions, self.hook_names)
        logits, cache = jax.jit(self.apply, static_argnames="cache_names")(params, tokens, interventions, tuple(names))
        return logits, ActivationCache(cache)

    def run_with_hooks(self, params: dict, tokens, interventions: dict):
        """The logits with `interventions` ({site or glob: Intervention or a list of them}) applied."""
        return self.apply(params, tokens, resolve_interventions(interventions, self.hook_names))[0]
