"""Structured-config schemas: every config group has a dataclass, so Hydra rejects an
unknown key or a wrong type at startup, naming the key. `validate` adds the checks that
need several keys at once (e.g. d_model divisible by n_heads)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value the lab cannot run with; the message is one line naming the key."""


@dataclass
class TaskConfig:
    """Every task's config extends this; the tasks' own schemas live in their modules (lab/tasks/)."""
    name: str = MISSING
    seq_len: int = 64          # tokens per sequence, BOS included
    probe_size: int = 64       # fixed probe batch the measures are computed on
    probe_seed: int = 12345


@dataclass
class ModelConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: Optional[int] = None      # default d_model // n_heads
    attn_only: bool = True
    d_mlp: Optional[int] = None       # default 4 * d_model
    layer_norm: bool = True           # pre-LayerNorm in each block and before the unembedding
    pos_embed: str = "learned"        # learned | sinusoidal | rope | none
    rope_base: float = 10000.0
    init_std: float = 0.02
    attention: str = "softmax"        # softmax | linear (von Oswald et al.'s linear self-attention: no softmax)
    attn_scale: bool = True           # scores / sqrt(d_head); Reddy (2024)'s network has no scaling
    readout_hidden: Optional[int] = None  # a ReLU MLP of this width replaces the unembedding (Reddy's classifier)
    fused_attention: bool = True      # softmax attention with a hand-written backward when no hook reads the pattern


@dataclass
class OptimConfig:
    name: str = "adam"                # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0         # adamw only
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.0             # sgd only
    schedule: str = "constant"        # constant | warmup_cosine | warmup_rsqrt
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0         # warmup_cosine: final lr / peak lr
    grad_clip: Optional[float] = None # global-norm clipping; null disables


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    seed: int = 0                     # first seed; seeds run are seed .. seed + seeds - 1
    seeds: int = 1                    # independent seeds trained as one compiled program
    microbatch: Optional[int] = None  # sequences per gradient pass (must divide batch_size); null: automatic (see lab/train.py)
    seed_axis: str = "auto"           # vmap | map | auto (vmap on GPU/TPU; map, i.e. a loop inside the program, on CPU)
    log_every: int = 25               # steps per compiled chunk; measures are logged after each
    checkpoint_every: int = 1000      # 0 disables periodic checkpoints (the final one is always written)
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    on_nonfinite: str = "stop"        # stop: a NaN/inf loss or gradient fails the run | skip: drop that update, count it
    xla_cpu_threads: str = "single"   # single | multi: XLA's CPU threading (tiny models run faster single)
    compile_cache: Optional[str] = "~/.cache/induction-lab/jax"  # persistent compile cache; null disables


@dataclass
class PhaseConfig:
    smooth: int = 5                   # moving-average window (log points) for threshold and steepest change
    loss_threshold_frac: float = 0.5  # repeat-loss threshold = frac * ln(vocab_size), the chance loss
    loss_min_drop_frac: float = 0.3   # a loss phase change must drop >= frac * chance loss
    score_threshold: float = 0.4      # induction / previous-token score threshold
    score_min_rise: float = 0.2       # a score phase change must rise by >= this
    min_r2: float = 0.8               # sigmoid fit quality needed to call it a phase change
    max_width_frac: float = 0.35      # 10-90 % of the transition must span < this fraction of the run


@dataclass
class MeasuresConfig:
    enabled: bool = True
    icl_early: Optional[int] = None   # defaults scale Olsson's tokens 50 and 500 of 512 to seq_len
    icl_late: Optional[int] = None
    attention_snapshots: bool = True  # keep probe-0 attention per log step to plot before/after
    phase: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class ClampConfig:
    """One clamp ("artificial optogenetics"): fix an activation to a value for a window of steps.
    Applied as where(mask, s*value + (1-s)*x, x) with s from the strength schedule; see lab/clamps.py."""
    site: str = MISSING               # hook site, globs allowed: blocks.0.attn.pattern, blocks.*.attn.z, logits
    value: str = MISSING              # prev_token | induction | zero | mean | resample | preserve | graft | perfect_copy | scale
    heads: Any = None                 # null: every head; a list of head indices; "auto": chosen from the measures
    layers: Optional[List[int]] = None   # keep only these layers of a glob site
    batch: Optional[List[int]] = None    # batch items touched; null: all
    queries: Optional[List[int]] = None  # query positions (positions, for sites without a key axis); negatives count from the end
    keys: Optional[List[int]] = None     # key positions (pattern and scores sites only)
    start: int = 0                    # window [start, stop) in training steps
    stop: Optional[int] = None        # null: to the end of training
    strength: float = 1.0             # peak blend s between the value (1) and the model's own activation (0)
    schedule: str = "constant"        # constant | linear | cosine (ramp up over ramp_steps) | release (ramp down to stop)
    ramp_steps: int = 0
    pattern_strength: float = 1.0     # ideal patterns: weight on the target key; the rest stays on the query itself
    factor: float = 1.0               # scale: the activation is multiplied by this
    apply: str = "both"               # train | eval (measures only) | both | measure (logged as extra metrics only)
    grad: bool = False                # mean / resample / preserve: let gradients flow through the clean pass
    source: Optional[str] = None      # graft, or heads=auto: a run directory whose checkpoint supplies the values/heads
    source_step: Optional[int] = None # that run's checkpoint step; null: its newest
    copy_from: Optional[str] = None   # perfect_copy: the head, e.g. L1H0, whose attention builds the logits
    auto_k: int = 1                   # heads=auto: heads chosen per seed
    auto_step: Optional[int] = None   # heads=auto without source: choose from the measures logged at this step (default: start)
    auto_measure: Optional[str] = None  # heads=auto: rank by this per-head measure (default: by value kind)


@dataclass
class Config:
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = MISSING
    measures: MeasuresConfig = MISSING
    clamps: Dict[str, Any] = field(default_factory=dict)   # named ClampConfigs (checked by validate); presets in clamp/
    out_dir: str = "."


def group_schemas(task: Optional[str] = None) -> dict:
    """Each config group's schemas, by the name it is stored under in Hydra's ConfigStore; the task
    group holds every task module's `Config` (only `task`'s, if given and known)."""
    from lab.tasks import registry
    tasks = {f"schema_{name}": module.Config for name, module in registry().items()}
    if task is not None and f"schema_{task}" in tasks:
        tasks = {f"schema_{task}": tasks[f"schema_{task}"]}
    return {"task": tasks, "model": {"schema_model": ModelConfig}, "optim": {"schema_optim": OptimConfig},
            "train": {"schema_train": TrainConfig}, "measures": {"schema_measures": MeasuresConfig}}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # presets in clamp/ type their entries with `- /clamp_schema@clamps.<name>: schema_clamp`
    cs.store(group="clamp_schema", name="schema_clamp", node=ClampConfig)
    for group, schemas in group_schemas().items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)


def _first_unknown(schema, keys: list[str]):
    """(depth, dataclass) where the dotted `keys` leave `schema`, or None if the schema has them
    (or they go below a field that is not a config node, which Hydra will judge)."""
    from dataclasses import fields, is_dataclass

    node = schema
    for depth, key in enumerate(keys):
        field_ = {f.name: f for f in fields(node)}.get(key)
        if field_ is None:
            return depth, node
        if depth < len(keys) - 1:
            default = field_.default_factory() if callable(field_.default_factory) else None
            if not is_dataclass(default):
                return None
            node = type(default)
    return None


def check_override_keys(overrides: list[str]) -> None:
    """Reject `group.key=value` overrides whose key no schema has, suggesting the nearest key.
    Runs before Hydra so the message can say "did you mean"; `+key=` (append) is left to Hydra
    (and `+clamps.<name>={...}` to normalize_clamps)."""
    from dataclasses import fields

    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("task=")]
    schemas_by_group = group_schemas(chosen[-1] if chosen else "induction")
    for override in overrides:
        if "=" not in override or override[0] in "+~":
            continue
        path = override.split("=", 1)[0].split(".")
        if path[0] == "clamps" and len(path) > 2:
            names = [f.name for f in fields(ClampConfig)]
            if path[2] not in names:
                raise ConfigError(f"unknown config key '{'.'.join(path)}'"
                                  f"{_did_you_mean(path[2], names, '.'.join(path[:2]))}")
            continue
        if path[0] not in schemas_by_group or len(path) < 2:
            continue
        misses = [_first_unknown(schema, path[1:]) for schema in schemas_by_group[path[0]].values()]
        if None in misses:
            continue
        depth, node = misses[0]
        prefix, key = ".".join(path[:depth + 1]), path[depth + 1]
        names = [f.name for f in fields(node)]
        raise ConfigError(f"unknown config key '{'.'.join(path)}'{_did_you_mean(key, names, prefix)}")


def _did_you_mean(key: str, names: list[str], prefix: str) -> str:
    import difflib
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean '{prefix}.{close[0]}'?" if close else f"; keys of {prefix}: {', '.join(names)}"


def normalize_clamps(cfg) -> None:
    """Type every entry of cfg.clamps as a ClampConfig (filling defaults), so a clamp added as
    `+clamps.name={...}` is checked like a preset: an unknown key or a wrong type fails here."""
    from dataclasses import fields
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    clamps = cfg.get("clamps") or {}
    names = [f.name for f in fields(ClampConfig)]
    typed = {}
    for name, c in clamps.items():
        if not OmegaConf.is_dict(c):
            raise ConfigError(f"clamps.{name}={c!r} must be a mapping, e.g. +clamps.{name}="
                              "'{site: blocks.0.attn.pattern, value: prev_token, heads: [0]}'")
        for key in c:
            if key not in names:
                raise ConfigError(f"unknown config key 'clamps.{name}.{key}'{_did_you_mean(key, names, f'clamps.{name}')}")
        for key in ("site", "value"):
            if c.get(key) is None or OmegaConf.is_missing(c, key):
                raise ConfigError(f"clamps.{name}.{key} is required (see `{key}` in lab/config.py ClampConfig)")
        try:
            typed[name] = OmegaConf.merge(OmegaConf.structured(ClampConfig), c)
        except OmegaConfBaseException as e:
            raise ConfigError(f"clamps.{name}: {str(e).splitlines()[0]}") from None
    if clamps:
        with open_dict(cfg):
            cfg.clamps = typed


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be positive")


def validate(cfg) -> None:
    """Cross-key checks Hydra's schema cannot express; raises ConfigError with one line."""
    normalize_clamps(cfg)
    m, t, o, tr = cfg.model, cfg.task, cfg.optim, cfg.train
    for key in ("n_layers", "n_heads", "d_model"):
        _positive(f"model.{key}", m[key])
    if m.d_head is None and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                          "change one, or set model.d_head explicitly")
    if m.d_head is not None:
        _positive("model.d_head", m.d_head)
    _choice("model.pos_embed", m.pos_embed, ("learned", "sinusoidal", "rope", "none"))
    _choice("model.attention", m.attention, ("softmax", "linear"))
    if m.readout_hidden is not None:
        _positive("model.readout_hidden", m.readout_hidden)
    if m.pos_embed == "rope" and (m.d_head or m.d_model // m.n_heads) % 2:
        raise ConfigError("model.pos_embed=rope needs an even head dimension (d_head)")
    _choice("optim.name", o.name, ("adam", "adamw", "sgd"))
    _choice("optim.schedule", o.schedule, ("constant", "warmup_cosine", "warmup_rsqrt"))
    _positive("optim.lr", o.lr)
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    if o.grad_clip is not None:
        _positive("optim.grad_clip", o.grad_clip)
    for key in ("steps", "batch_size", "seeds", "log_every"):
        _positive(f"train.{key}", tr[key])
    if tr.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={tr.checkpoint_every} must be >= 0 (0 disables)")
    _positive("train.keep_checkpoints", tr.keep_checkpoints)
    _choice("train.xla_cpu_threads", tr.xla_cpu_threads, ("single", "multi"))
    _choice("train.seed_axis", tr.seed_axis, ("auto", "vmap", "map"))
    if tr.microbatch is not None:
        _positive("train.microbatch", tr.microbatch)
        if tr.batch_size % tr.microbatch:
            raise ConfigError(f"train.microbatch={tr.microbatch} does not divide train.batch_size={tr.batch_size}; "
                              f"use a divisor, or null to choose automatically")
    _choice("train.on_nonfinite", tr.on_nonfinite, ("stop", "skip"))
    _positive("task.seq_len", t.seq_len)
    _positive("task.probe_size", t.probe_size)
    from lab.tasks import registry
    module = registry().get(t.name)
    if module is None:
        raise ConfigError(f"task.name={t.name!r} is not a known task; known: {', '.join(registry())}")
    if hasattr(module, "validate"):
        module.validate(cfg)
    ms = cfg.measures
    for key in ("icl_early", "icl_late"):
        v = ms[key]
        if v is not None and not 0 <= v < t.seq_len - 1:
            raise ConfigError(f"measures.{key}={v} must be a position in [0, {t.seq_len - 2}]")
