"""The clamp set of a run: every clamp's config checked and turned into specs and traced arrays,
and the forward pass with the clamps applied.

A clamp ("artificial optogenetics", Singh et al. 2024) fixes an activation to a chosen value for a
window of training steps, with gradients flowing through everything left free. Its strength
schedule is in lab/clamps/schedules.py, its value kind (one registry entry per kind: where it may
sit, what it needs, how it is computed) in lab/clamps/values.py; nothing here depends on the kind
except through that entry.

A clamp config (`ClampConfig`, one per name under `clamps:`) becomes
- a static `ClampSpec` per concrete hook site (what to compute: site, value kind, when it applies);
  changing these recompiles, and
- a dict of arrays, `args[spec.key]` (window, strength schedule, head/batch/position masks,
  factors), with a leading seed axis, passed to the compiled chunk as a traced argument. Switching
  a clamp on, ramping it, releasing it, or choosing its heads mid-run changes only these arrays,
  so it never recompiles. The strength is computed inside the scan from the step number, so
  windows start and stop at exact steps, not at chunk boundaries.

`Clamps.forward` runs the model with the clamps active for a mode (train / eval / one measure clamp),
including the extra passes their kinds need (`ValueKind.needs`): the clean pass of the same weights
(preserve, resample), the probe pass (mean) and the frozen source model (graft).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lab.clamps.schedules import NEVER, SCHEDULES, schedule_strength
from lab.clamps.values import KINDS, VALUES, Context, ValueKind
from lab.core import ConfigError, RunLoadError, choice
from lab.model.hooks import Intervention, resolve_names

APPLY = ("train", "eval", "both", "measure")
MODES = {"train": ("train", "both"), "eval": ("eval", "both"), "measure": ("measure",)}


def site_axes(site: str) -> tuple:
    """Axis names of a site's activation; None marks a feature axis."""
    kind = site.rsplit(".", 1)[-1]
    if ".attn." in site and kind in ("pattern", "scores"):
        return ("batch", "head", "query", "key")
    if ".attn." in site and kind in ("q", "k", "v", "z", "out"):
        return ("batch", "query", "head", None)
    return ("batch", "query", None)


def layer_of(site: str) -> Optional[int]:
    m = re.match(r"blocks\.(\d+)\.", site)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ClampSpec:
    """The static part of one clamp on one concrete site."""
    name: str
    key: str            # key of its arrays in the clamp args
    site: str
    value: str
    apply: str
    grad: bool
    source: Optional[str] = None
    copy_from: Optional[tuple] = None    # (layer, head), for kinds that take copy_from (perfect_copy)
    group: str = ""     # apply: measure clamps of one group are applied together (default: the clamp's name)

    @property
    def axes(self) -> tuple:
        return site_axes(self.site)

    @property
    def kind(self) -> ValueKind:
        return KINDS[self.value]


def _err(name: str, key: str, value, why: str) -> ConfigError:
    return ConfigError(f"clamps.{name}.{key}={value!r}: {why}")


def _index_mask(name, key, idx, size, what, limit) -> np.ndarray:
    mask = np.zeros(size, bool)
    if idx is None:
        mask[:] = True
        return mask
    for i in idx:
        if not isinstance(i, int) or not -size <= i < size:
            raise _err(name, key, list(idx), f"{what} {i} does not exist ({limit}: 0..{size - 1})")
        mask[int(i)] = True
    return mask


def _parse_head(name: str, value: str, text, n_layers: int, n_heads: int) -> tuple:
    """(layer, head) of `copy_from: L<l>H<h>`; `auto` is (last layer, None): the head is chosen per seed."""
    if text == "auto":
        return n_layers - 1, None
    m = re.fullmatch(r"L(\d+)H(\d+)", str(text or ""))
    if not m:
        raise _err(name, "copy_from", text, f"{value} needs the head whose attention builds the logits, e.g. L1H0, "
                                            "or auto (the last layer's head chosen per seed, as heads: auto)")
    l, h = int(m.group(1)), int(m.group(2))
    if l >= n_layers or h >= n_heads:
        raise _err(name, "copy_from", text, f"no such head (model.n_layers={n_layers}, model.n_heads={n_heads})")
    return l, h


class Clamps:
    """Every clamp of a run: validated specs, their traced arrays, and the clamped forward pass."""

    @property
    def probe(self):
        return self._probe() if callable(self._probe) else self._probe

    def __init__(self, cfgs, model, task, train_cfg, probe, measures_enabled: bool = True, load_run=None):
        """`load_run(run_dir, step) -> (task, model, params)` reads the runs that `graft` and
        `heads: auto` clamps take from (lab/train/restore.py); it raises RunLoadError. `probe`: the probe
        batch, or a function returning it (the trainer's, made on first use while the first chunk compiles)."""
        self.model, self.task, self._probe = model, task, probe
        self.load_run = load_run
        self.T, self.H = task.seq_len, model.n_heads
        n_probe = task.probe_size if callable(probe) else probe.tokens.shape[0]   # every task's batch has tokens
        self.n_batch = max(train_cfg.batch_size, n_probe)
        self.steps = train_cfg.steps
        self.batch_size = train_cfg.batch_size
        self.cfgs = {name: c for name, c in (cfgs or {}).items()}
        self.specs: list[ClampSpec] = []
        self.base_args: dict[str, dict] = {}
        self.auto: dict[str, dict] = {}        # name -> how its heads are chosen, and the choice
        self.sources: dict[str, tuple] = {}    # run dir -> (Model, params with a seed axis)
        for name, c in self.cfgs.items():
            self._add(name, c, measures_enabled)

    def __bool__(self) -> bool:
        return bool(self.specs)

    # ---- config -> specs and arrays ----
    def _add(self, name: str, c, measures_enabled: bool) -> None:
        for key, allowed in (("value", VALUES), ("apply", APPLY), ("schedule", tuple(SCHEDULES))):
            choice(f"clamps.{name}.{key}", c[key], allowed)
        sites = self._sites(name, c)
        if c.start < 0:
            raise _err(name, "start", c.start, "must be >= 0")
        if c.start >= self.steps:
            raise _err(name, "start", c.start, f"the window starts after training ends (train.steps={self.steps})")
        if c.stop is not None and c.stop <= c.start:
            raise _err(name, "stop", c.stop, f"the window [start, stop) ends before it starts (start={c.start})")
        for key in ("strength", "pattern_strength"):
            if not 0.0 <= c[key] <= 1.0:
                raise _err(name, key, c[key], "must lie in [0, 1]")
        if c.schedule != "constant" and c.ramp_steps <= 0:
            raise _err(name, "ramp_steps", c.ramp_steps, f"schedule={c.schedule} needs ramp_steps > 0")
        if c.schedule == "release" and c.stop is None:
            raise _err(name, "stop", None, "schedule=release ramps down to the window's stop; set stop")
        if c.apply == "measure" and not measures_enabled:
            raise _err(name, "apply", "measure", "needs measures.enabled=true")
        kind = KINDS[c.value]
        if c.grad and not kind.grad:
            allowed = [k.name for k in KINDS.values() if k.grad]
            raise _err(name, "grad", True, f"only {', '.join(allowed[:-1])} and {allowed[-1]} values are computed "
                                           f"from the model being trained; value={c.value} has no such gradient path")
        copy_from = None
        if kind.copy_from:
            copy_from = _parse_head(name, c.value, c.copy_from, self.model.n_layers, self.H)
        grafted = kind.needs == "source"
        if grafted or ((c.heads == "auto" or c.copy_from == "auto") and c.source):
            if not c.source:
                raise _err(name, "source", None, f"value={c.value} needs source: a run directory with checkpoints")
            self._load_source(name, c, sites if grafted else [])
        if copy_from is not None and copy_from[1] is None:      # copy_from: auto
            heads = self._auto_heads(name, c, copy_from[0])
        elif copy_from is not None:
            heads = np.eye(self.H, dtype=bool)[copy_from[1]]
        else:
            heads = self._heads(name, c, sites)
        if c.group is not None and c.apply != "measure":
            raise _err(name, "group", c.group, "groups gather apply: measure clamps into one clamped loss; "
                                               "set apply: measure or drop group")
        for i, site in enumerate(sites):
            key = name if len(sites) == 1 else f"{name}/{site}"
            self.specs.append(ClampSpec(name, key, site, c.value, c.apply, bool(c.grad),
                                        c.source if grafted else None, copy_from, c.group or name))
            self.base_args[key] = {
                "start": np.float32(c.start), "stop": np.float32(NEVER if c.stop is None else c.stop),
                "peak": np.float32(c.strength), "ramp": np.float32(c.ramp_steps),
                "kind": np.int32(SCHEDULES[c.schedule]),
                "pattern_strength": np.float32(c.pattern_strength), "factor": np.float32(c.factor),
                "heads": heads, "batch": _index_mask(name, "batch", c.batch, self.n_batch, "batch item", "batch and probe size"),
                "queries": _index_mask(name, "queries", c.queries, self.T, "position", f"task.seq_len={self.T}"),
                "keys": _index_mask(name, "keys", c["keys"], self.T, "key position", f"task.seq_len={self.T}"),
            }
        if c.batch is not None and max(c.batch) >= self.batch_size and c.apply in ("train", "both"):
            raise _err(name, "batch", list(c.batch), f"item {max(c.batch)} does not exist in a training batch "
                                                     f"(train.batch_size={self.batch_size})")

    def _sites(self, name: str, c) -> list[str]:
        names = self.model.hook_names
        L = self.model.n_layers
        layer = layer_of(c.site)
        if layer is not None and layer >= L:
            raise _err(name, "site", c.site, f"layer {layer} does not exist (model.n_layers={L}, layers 0..{L - 1})")
        try:
            sites = resolve_names([c.site], names)
        except KeyError:
            kinds = sorted({re.sub(r"blocks\.\d+\.", "blocks.<l>.", n) for n in names})
            raise _err(name, "site", c.site, f"no such hook site; sites: {', '.join(kinds)}") from None
        if c.layers is not None:
            bad = [l for l in c.layers if not 0 <= l < L]
            if bad:
                raise _err(name, "layers", list(c.layers), f"layer {bad[0]} does not exist (model.n_layers={L})")
            sites = [s for s in sites if layer_of(s) in set(c.layers)]
            if not sites:
                raise _err(name, "layers", list(c.layers), f"no site matching {c.site!r} lies in these layers")
        for site in sites:
            axes = site_axes(site)
            why = KINDS[c.value].site_error(site, axes)
            if why:
                raise _err(name, "site", site, why)
            if c["keys"] is not None and "key" not in axes:
                raise _err(name, "keys", list(c["keys"]), f"site {site} has no key axis (only attn.pattern and attn.scores do)")
            if c.heads is not None and "head" not in axes:
                raise _err(name, "heads", c.heads, f"site {site} has no head axis; drop heads or choose a "
                                                   "blocks.<l>.attn.{q,k,v,z,out,scores,pattern} site")
        return sites

    def _heads(self, name: str, c, sites) -> np.ndarray:
        if c.heads is None:
            return np.ones(self.H, bool)
        if c.heads == "auto":
            if len({layer_of(s) for s in sites}) != 1:
                raise _err(name, "heads", "auto", "automatic heads need a site in one layer")
            return self._auto_heads(name, c, layer_of(sites[0]))
        if isinstance(c.heads, str) or not all(isinstance(h, int) for h in c.heads):
            raise _err(name, "heads", c.heads, "must be null (all heads), a list of head indices, or auto")
        return _index_mask(name, "heads", list(c.heads), self.H, "head", f"model.n_heads={self.H}")

    def _auto_heads(self, name: str, c, layer: int) -> np.ndarray:
        """`heads: auto` (or `copy_from: auto`): the top auto_k heads of `layer` by a per-head measure,
        chosen per seed at auto_step (default: the window's start) or from a source run."""
        if not 1 <= c.auto_k <= self.H:
            raise _err(name, "auto_k", c.auto_k, f"must be in 1..{self.H} (model.n_heads)")
        measure = c.auto_measure or KINDS[c.value].auto_measure
        step = c.start if c.auto_step is None else c.auto_step
        if c.source is None and step > c.start:
            raise _err(name, "auto_step", step, f"heads must be chosen before the window starts (start={c.start})")
        self.auto[name] = {"measure": measure, "layer": layer, "k": c.auto_k,
                           "step": None if c.source else step, "source": c.source,
                           "heads_per_seed": None, "chosen_at_step": None}
        return np.zeros(self.H, bool)   # inactive until the heads are chosen

    def _load_source(self, name: str, c, sites: list[str]) -> None:
        """A frozen run's parameters (newest or `source_step` checkpoint), checked against this model."""
        if c.source in self.sources:
            src_model, _ = self.sources[c.source]
        else:
            run = Path(c.source).expanduser()
            if not (run / "config.yaml").is_file() or not (run / "checkpoints").is_dir():
                raise _err(name, "source", c.source, "not a run directory with config.yaml and checkpoints/")
            try:
                src_task, src_model, params = self.load_run(run, c.source_step)
            except RunLoadError as e:
                key = "source" if c.source_step is None else "source_step"
                raise _err(name, key, c[key], str(e)) from None
            if (src_task.model_vocab_size, src_task.seq_len) != (self.model.vocab_size, self.T):
                raise _err(name, "source", c.source, f"its task has vocabulary {src_task.model_vocab_size} and "
                                                     f"seq_len {src_task.seq_len}; this run has {self.model.vocab_size} and {self.T}")
            self.sources[c.source] = (src_model, jax.device_get(params))
        for site in sites:
            if site not in src_model.hook_names:
                raise _err(name, "site", site, f"the graft source {c.source} has no such site")
            ours, theirs = (self._site_shape(m, site) for m in (self.model, src_model))
            if ours != theirs:
                raise _err(name, "source", c.source, f"shape mismatch at {site}: the source model gives "
                                                     f"{theirs[1:]}, this model {ours[1:]} (per sequence)")

    def _site_shape(self, model, site) -> tuple:
        params = jax.eval_shape(model.init, jax.random.key(0))
        tokens = jax.ShapeDtypeStruct((1, self.T), jnp.int32)
        out = jax.eval_shape(lambda p, t: model.apply(p, t, cache_names=(site,))[1][site], params, tokens)
        return tuple(out.shape)

    def init_args(self, n_seeds: int) -> dict:
        """The traced clamp arrays with a leading seed axis, plus the frozen sources' parameters."""
        args = {k: {n: np.stack([v] * n_seeds) for n, v in a.items()} for k, a in self.base_args.items()}
        grafts = {}
        for spec in self.specs:
            if spec.kind.needs == "source" and spec.source not in grafts:
                params = self.sources[spec.source][1]
                n_src = jax.tree.leaves(params)[0].shape[0]
                if n_src not in (1, n_seeds) and n_src < n_seeds:
                    raise ConfigError(f"clamps.{spec.name}.source={spec.source!r} has {n_src} seeds; "
                                      f"this run has {n_seeds}: use a source with 1 or >= {n_seeds} seeds")
                idx = np.arange(n_seeds) % n_src if n_src == 1 else np.arange(n_seeds)
                grafts[spec.source] = jax.tree.map(lambda x: x[idx], params)
        args["_sources"] = grafts
        return args

    # ---- the clamped forward pass ----
    def active(self, mode: str, only: Optional[str] = None) -> list[ClampSpec]:
        """The clamps of `mode`; `only`: those of one measure group (a clamp's group defaults to its name).
        A measure group is applied on top of the eval clamps: the network as it is evaluated (e.g. with
        heads ablated for the whole run), plus the clamp whose loss is the progress measure."""
        picked = [s for s in self.specs if s.apply in MODES[mode] and (only is None or s.group == only)]
        return self.active("eval") + picked if mode == "measure" and only is not None else picked

    def measure_groups(self) -> list[str]:
        """The `apply: measure` groups, each logged as one clamped loss."""
        return list(dict.fromkeys(s.group for s in self.active("measure")))

    def mixes_sequences(self, mode: str, only: Optional[str] = None) -> bool:
        """Whether the clamped forward pass of `mode` computes a sequence's activations from other
        sequences of its batch (`ValueKind.mixes_sequences`: resample), so that the batch cannot be
        split into parts."""
        return any(s.kind.mixes_sequences for s in self.active(mode, only))

    def _mask(self, spec: ClampSpec, a: dict, B: int, batch_offset=0) -> jax.Array:
        parts = {"batch": jax.lax.dynamic_slice_in_dim(a["batch"], batch_offset, B), "head": a["heads"],
                 "query": a["queries"], "key": a["keys"]}
        axes = spec.axes
        mask = jnp.ones((1,) * len(axes), bool)
        for i, ax in enumerate(axes):
            if ax is not None:
                shape = [1] * len(axes)
                shape[i] = -1
                mask = mask & parts[ax].reshape(shape)
        return mask

    def forward(self, params, batch, args: dict, t, mode: str = "train", only: Optional[str] = None,
                extra: Optional[dict] = None, cache_names=(), batch_offset=0):
        """(logits, cache) of the model on `batch` with the clamps of `mode` at step t applied, after
        any `extra` interventions ({site: Intervention}, e.g. the trainer's own). `batch_offset`: the
        index of `batch`'s first item in the whole batch, when it is a microbatch (for batch masks)."""
        specs = self.active(mode, only)
        ivs = defaultdict(list)
        for site, iv in (extra or {}).items():
            ivs[site].append(iv)
        if not specs:
            return self.model.apply(params, batch, dict(ivs), cache_names)
        B = batch.tokens.shape[0]
        passes = {need: self._pass(params, self.probe if need == "probe" else batch,
                                   {s.site for s in specs if s.kind.needs == need})
                  for need in ("clean", "probe")}
        grafted = {}
        for src in {s.source for s in specs if s.kind.needs == "source"}:
            model = self.sources[src][0]
            grafted[src] = self._pass(args["_sources"][src], batch, {s.site for s in specs if s.source == src}, model)
        cache_names = list(cache_names)
        for spec in specs:
            kind, a = spec.kind, args[spec.key]
            mask = self._mask(spec, a, B, batch_offset)
            strength = schedule_strength(t, a)
            extra = grafted[spec.source] if kind.needs == "source" else passes.get(kind.needs, {})
            out = kind.evaluate(Context(spec.site, a, batch, strength, extra, spec.grad, spec.copy_from,
                                        self.task, self.T, self.model.n_outputs))
            if out.where is not None:
                mask = mask & out.where
            cache_names += out.reads
            ivs[spec.site].append(Intervention(mask, out.value, strength))
        return self.model.apply(params, batch, dict(ivs), tuple(dict.fromkeys(cache_names)))

    def _pass(self, params, batch, sites: set, model=None) -> dict:
        if not sites:
            return {}
        return (model or self.model).apply(params, batch, cache_names=tuple(sorted(sites)))[1]

    # ---- automatic heads ----
    def choose_heads(self, args: dict, name: str, scores: np.ndarray, step: Optional[int]) -> dict:
        """Set clamp `name`'s heads per seed to the top-k of `scores` (seeds, heads); returns new args."""
        info = self.auto[name]
        top = np.argsort(-scores, axis=-1, kind="stable")[:, :info["k"]]
        info["heads_per_seed"] = [sorted(int(h) for h in row) for row in top]
        info["chosen_at_step"] = step
        mask = np.zeros((scores.shape[0], self.H), bool)
        np.put_along_axis(mask, top, True, axis=-1)
        args = dict(args)
        for spec in self.specs:
            if spec.name == name:
                args[spec.key] = {**args[spec.key], "heads": jnp.asarray(mask)}
        return args

    def describe(self) -> dict:
        """What summary.json records about the clamps (sites, windows, chosen heads)."""
        out = {}
        for name, c in self.cfgs.items():
            sites = [s.site for s in self.specs if s.name == name]
            d = {"sites": sites, "value": c.value, "apply": c.apply, "window": [c.start, c.stop],
                 "schedule": c.schedule, "strength": c.strength, "heads": c.heads if c.heads == "auto" else
                 (list(c.heads) if c.heads is not None else None)}
            if name in self.auto:
                a = self.auto[name]
                d.update({k: a[k] for k in ("measure", "heads_per_seed", "chosen_at_step", "source")})
            out[name] = json.loads(json.dumps(d))
        return out
