"""The config above the tasks: Hydra's ConfigStore (every group's schema, each task module's own),
composing a config as `lab-train` would, the checks of override keys before Hydra starts, and the
cross-key checks Hydra's schema cannot express (`validate`, e.g. d_model divisible by n_heads)."""
from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lab.config.schema import ClampConfig, Config, MeasuresConfig, ModelConfig, OptimConfig, TrainConfig
from lab.core import ConfigError, choice, positive
from lab.measures import llc
from lab.tasks import registry

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


def group_schemas(task: Optional[str] = None) -> dict:
    """Each config group's schemas, by the name it is stored under in Hydra's ConfigStore; the task
    group holds every task module's `Config` (only `task`'s, if given and known)."""
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
    Runs before Hydra so the message can say "did you mean". `+key=` and `++key=` are checked alike (a
    `+` does not make a typo a new key); a `+` on a key the schema has is told to drop it. Free-form
    names stay free: `+clamps.<name>={...}` (checked by normalize_clamps) and new top-level keys that
    resemble none of the config's (`+note=baseline`, a tag); `+experiment=` and other groups the
    defaults list already chooses from are told to drop the `+`."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("task=")]
    presets = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    task = chosen[-1] if chosen else (presets and _preset_task(presets[-1])) or "induction"
    schemas_by_group = group_schemas(task)
    groups = _default_groups()
    top_keys = sorted({*schemas_by_group, *groups, "clamps", "hydra"})
    for override in overrides:
        if "=" not in override or override[0] == "~":
            continue
        plus = len(override) - len(override.lstrip("+"))
        path = override[plus:].split("=", 1)[0].split(".")
        top = path[0].split("/")[0]
        # a new top-level key is free-form (a tag for the sweep table: `+note=baseline`) unless it is a typo
        close = difflib.get_close_matches(top, top_keys, n=1, cutoff=0.8) if plus and top not in top_keys else []
        if close:
            raise ConfigError(f"unknown config key '{top}'; did you mean '{close[0]}'? (a new top-level key with "
                              "'+' is kept as a free-form tag only when it resembles no key of the config)")
        if not plus and top not in top_keys:   # Hydra would say "Could not override ...: Key ... not in 'Config'"
            close = difflib.get_close_matches(top, top_keys, n=1)
            raise ConfigError(f"unknown config key '{top}'" + (f"; did you mean '{close[0]}'?" if close else
                              f"; the config's keys and groups: {', '.join(k for k in top_keys if k != 'hydra')}"))
        if plus == 1 and len(path) == 1 and (path[0] in groups or path[0] in _HYDRA_DEFAULT_GROUPS):   # Hydra: "Multiple values for ..."
            raise ConfigError(f"'{override}' chooses from the {path[0]} group, which the config already has; "
                              f"set it without the '+': {override[1:]}")
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
            if plus == 1:   # Hydra: "Could not append to config. An item is already at ..."
                key, value = override[1:].split("=", 1)
                raise ConfigError(f"'{override}' adds {key}, which the config already has; set it without "
                                  f"the '+': {key}={value}")
            continue
        depth, node = misses[0]
        prefix, key = ".".join(path[:depth + 1]), path[depth + 1]
        names = [f.name for f in fields(node)]
        raise ConfigError(f"unknown config key '{'.'.join(path)}'{_did_you_mean(key, names, prefix)}")


# Hydra's own groups that always have a choice, so `+hydra/launcher=...` clashes with it
_HYDRA_DEFAULT_GROUPS = {f"hydra/{g}" for g in ("launcher", "sweeper", "job_logging", "hydra_logging", "help",
                                                "hydra_help", "output", "env")}


def _default_groups() -> set[str]:
    """The config groups configs/config.yaml's defaults list already chooses from (task, model, ...)."""
    groups = set()
    for entry in OmegaConf.load(CONFIG_DIR / "config.yaml").get("defaults") or []:
        if OmegaConf.is_dict(entry):
            groups.update(str(k).split()[-1].lstrip("/") for k in entry)
    return groups


def _preset_task(experiment: str) -> Optional[str]:
    """The task an experiment preset chooses (`- override /task: <name>` in its defaults list), or
    None when the preset does not exist (Hydra then says so) or keeps the default task."""
    path = CONFIG_DIR / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return None
    for entry in OmegaConf.load(path).get("defaults") or []:
        if OmegaConf.is_dict(entry):
            for key, value in entry.items():
                if key.split()[-1].lstrip("/") == "task":
                    return value
    return None


def _did_you_mean(key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean '{prefix}.{close[0]}'?" if close else f"; keys of {prefix}: {', '.join(names)}"


def normalize_clamps(cfg) -> None:
    """Type every entry of cfg.clamps as a ClampConfig (filling defaults), so a clamp added as
    `+clamps.name={...}` is checked like a preset: an unknown key or a wrong type fails here."""
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
                raise ConfigError(f"clamps.{name}.{key} is required (see `{key}` in lab/config/schema.py ClampConfig)")
        try:
            typed[name] = OmegaConf.merge(OmegaConf.structured(ClampConfig), c)
        except OmegaConfBaseException as e:
            raise ConfigError(f"clamps.{name}: {str(e).splitlines()[0]}") from None
    if clamps:
        with open_dict(cfg):
            cfg.clamps = typed


def _check_readout_layers(m) -> None:
    """model.readout_layers: a positive count, and only meaningful with a readout MLP."""
    layers = m.get("readout_layers", 1)
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"model.readout_layers={layers!r} must be a positive integer (ReLU layers of the "
                          "readout MLP; 1 is the lab's original readout, Reddy's classifier has 3)")
    choice("model.readout_init", m.get("readout_init", "normal"), ("normal", "he"))
    if layers != 1 and m.readout_hidden is None:
        raise ConfigError(f"model.readout_layers={layers} has no effect without a readout MLP: set "
                          "model.readout_hidden (its width, e.g. 128) or leave readout_layers at 1")


def validate(cfg) -> None:
    """Cross-key checks Hydra's schema cannot express; raises ConfigError with one line."""
    normalize_clamps(cfg)
    m, t, o, tr = cfg.model, cfg.task, cfg.optim, cfg.train
    for key in ("n_layers", "n_heads", "d_model"):
        positive(f"model.{key}", m[key])
    if m.d_head is None and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                          "change one, or set model.d_head explicitly")
    if m.d_head is not None:
        positive("model.d_head", m.d_head)
    choice("model.pos_embed", m.pos_embed, ("learned", "sinusoidal", "rope", "relative", "none"))
    choice("model.attention", m.attention, ("softmax", "linear"))
    choice("model.attn_mask", m.get("attn_mask", "causal"), ("causal", "context"))
    if m.get("attn_mask", "causal") == "context" and m.attention != "linear":
        raise ConfigError("model.attn_mask=context (every position reads the context tokens, von Oswald et al.) "
                          "is for model.attention=linear; set model.attention=linear or model.attn_mask=causal")
    if m.readout_hidden is not None:
        positive("model.readout_hidden", m.readout_hidden)
    _check_readout_layers(m)
    if m.pos_embed == "rope" and (m.d_head or m.d_model // m.n_heads) % 2:
        raise ConfigError("model.pos_embed=rope needs an even head dimension (d_head)")
    choice("optim.name", o.name, ("adam", "adamw", "sgd"))
    choice("optim.schedule", o.schedule, ("constant", "warmup_cosine", "warmup_rsqrt"))
    positive("optim.lr", o.lr)
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    if o.grad_clip is not None:
        positive("optim.grad_clip", o.grad_clip)
    if not 0 <= o.weight_decay < 1:
        raise ConfigError(f"optim.weight_decay={o.weight_decay} must be in [0, 1)")
    if o.weight_decay and o.name == "adam":
        raise ConfigError(f"optim.weight_decay={o.weight_decay} does nothing with optim=adam: use optim=adamw "
                          "(decoupled weight decay) or set optim.weight_decay=0")
    for key in ("steps", "batch_size", "seeds", "log_every"):
        positive(f"train.{key}", tr[key])
    if tr.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={tr.checkpoint_every} must be >= 0 (0 disables)")
    positive("train.keep_checkpoints", tr.keep_checkpoints)
    for key in ("checkpoint_log_points", "checkpoint_linear_points", "checkpoints_around_transition"):
        if tr[key] < 0:
            raise ConfigError(f"train.{key}={tr[key]} must be >= 0 (0 turns it off)")
    choice("train.xla_cpu_threads", tr.xla_cpu_threads, ("single", "multi"))
    if tr.gpus_per_job is not None:
        positive("train.gpus_per_job", tr.gpus_per_job)
    choice("train.seed_axis", tr.seed_axis, ("auto", "vmap", "map"))
    if tr.microbatch is not None:
        positive("train.microbatch", tr.microbatch)
        if tr.batch_size % tr.microbatch:
            raise ConfigError(f"train.microbatch={tr.microbatch} does not divide train.batch_size={tr.batch_size}; "
                              f"use a divisor, or null to choose automatically")
    choice("train.on_nonfinite", tr.on_nonfinite, ("stop", "skip"))
    lc = cfg.measures.llc
    if lc.every < 0 or cfg.measures.outputs < 0:
        raise ConfigError("measures.llc.every and measures.outputs must be >= 0 (0 turns them off)")
    problem = llc.check_settings(llc.Settings.from_config(lc))
    if problem:
        raise ConfigError(f"measures.llc: {problem}")
    if lc.every and cfg.get("clamps") and lc.batch_size > tr.batch_size:
        raise ConfigError(f"measures.llc.batch_size={lc.batch_size} exceeds train.batch_size={tr.batch_size}: the "
                          f"online LLC uses the run's clamps, whose masks are sized for its training batch; "
                          f"set measures.llc.batch_size<={tr.batch_size}")
    positive("task.seq_len", t.seq_len)
    positive("task.probe_size", t.probe_size)
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


def load_config(overrides: Sequence[str] = (), config_name: str = "config"):
    """Compose the Hydra config as `lab-train` would, e.g. load_config(["model.n_layers=1"])."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    register_configs()
    if GlobalHydra.instance().is_initialized():   # inside lab-train's own app (e.g. checking a resume)
        return compose(config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


# Keys older versions of the lab wrote into a run's config.yaml that no longer exist, and that changed
# nothing a run did: ignored when an old run is read or continued. (out_dir: nothing ever read it;
# hydra.run.dir chooses the run directory.)
RETIRED_KEYS = ("out_dir",)


def saved_config(path):
    """A run's saved (resolved) config, laid over the current default config, so that a run written
    before a key existed gets that key's default. If the saved config does not fit the current
    schema, it is used as saved."""
    saved = OmegaConf.load(path)
    for key in RETIRED_KEYS:
        saved.pop(key, None)
    try:   # the defaults of the saved run's own task (another task's schema would not take its keys)
        task = OmegaConf.select(saved, "task.name")
        return OmegaConf.merge(load_config([f"task={task}"] if task else []), saved)
    except Exception:
        return OmegaConf.merge({"clamps": {}}, saved)
