"""Checks before Hydra starts: untrusted configs must not run arbitrary Python, and bad
overrides or an unwritable output directory fail in one line (`precheck`).

Hydra builds objects from `_target_` keys (launchers, sweepers, callbacks) and Python's logging
builds handlers from `class` and `()` keys; a shared config or sweep file could name any callable
there (`_target_: os.system`). `lab-train` therefore composes the whole config, Hydra's part
included, before Hydra instantiates anything, and refuses every such name outside an allowlist of
Hydra's own launchers and sweepers, logging's handlers and the lab's classes. Register your own
with `register_target("my_package.MyLauncher")` in code that runs before `lab-train`'s check.
The lab itself builds nothing from config by name (tasks, optimisers and clamp values are chosen
from fixed tables), and checkpoints are read by orbax as arrays, never unpickled.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from lab.config.compose import register_configs
from lab.core import ConfigError

ALLOWED_TARGETS = {
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",   # the optional `ray` extra
}
ALLOWED_LOGGING = re.compile(r"^logging\.(StreamHandler|FileHandler|NullHandler|Formatter|"
                             r"handlers\.[A-Za-z]+Handler)$")
KEYS = ("_target_", "class", "()")


def register_target(name: str) -> None:
    """Allow `_target_: name` in configs (a fully qualified class or function name)."""
    ALLOWED_TARGETS.add(name)


def _allowed(key: str, value) -> bool:
    if not isinstance(value, str):
        return False
    if key == "_target_":
        return value in ALLOWED_TARGETS or value.startswith("lab.")
    return bool(ALLOWED_LOGGING.match(value))


def check_targets(node, path: str = "") -> None:
    """Raise ConfigError at the first `_target_` / logging `class` / `()` outside the allowlist."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in KEYS and not _allowed(key, value):
                raise ConfigError(f"{where}={value!r} is not allowed: configs may only build Hydra's launchers "
                                  "and sweepers, logging handlers and the lab's own classes "
                                  "(register others with lab.app.safety.register_target)")
            check_targets(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{path}[{i}]")


def check_overrides_text(overrides: list[str]) -> None:
    """Targets inside command-line values (e.g. in a sweep's alternatives), before composing."""
    for override in overrides:
        for key, value in re.findall(r"(_target_|\bclass|\(\))['\"]?\s*[:=]\s*['\"]?([\w.]+)", override):
            if not _allowed(key, value):
                raise ConfigError(f"override {override!r} names {key}={value!r}, which is not allowed "
                                  "(see lab/app/safety.py)")


def _one_line(e: Exception) -> str:
    """Hydra's composition errors as one line: the message, its cause, and the options offered."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    msg = lines[0] if lines else type(e).__name__
    if e.__cause__ is not None and str(e.__cause__).strip():
        msg += ": " + str(e.__cause__).strip().splitlines()[0]
    if "Available options" in str(e):   # hide the schema_* entries the ConfigStore adds
        listed = lines[lines.index(next(l for l in lines if l.startswith("Available"))) + 1:]
        options = [l for l in listed[:next((i for i, l in enumerate(listed) if l.endswith(":")), len(listed))]
                   if not l.startswith("schema_")]
        msg += f"; available: {', '.join(options)}"
    return msg


def _check_writable(directory: str) -> None:
    """Try a scratch directory in the nearest existing ancestor (the run directory itself is made
    by Hydra a moment later, with its own timestamp)."""
    import shutil
    import tempfile
    path = Path(directory).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the output directory {directory} is a file; set hydra.run.dir "
                          "(or hydra.sweep.dir for -m) to a directory")
    ancestor = next(p for p in [path, *path.parents] if p.exists())
    try:
        shutil.rmtree(tempfile.mkdtemp(dir=ancestor, prefix=".lab-write-test-"))
    except OSError as e:
        raise ConfigError(f"cannot write the output directory {directory} ({e.strerror} in {ancestor}); "
                          "set hydra.run.dir (or hydra.sweep.dir for -m) to a writable place") from None


def precheck(config_dir: str, argv: list[str]) -> None:
    """Before Hydra builds or writes anything: compose the job and Hydra config as lab-train will,
    refuse targets outside the allowlist, turn composition errors (wrong types, unknown options)
    into one line, and check that the output directory can be written. Files in an extra
    --config-dir/-cd are checked for targets as written; sweep alternatives (a=1,2) as text."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flag_names = {"--config-dir": "dir", "-cd": "dir", "--config-name": "name", "-cn": "name"}
    with_value = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--experimental-rerun"}
    info_topics = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
    flags, overrides, inspect_only = {"dir": config_dir, "name": "config"}, [], False
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in flag_names:
            flags[flag_names[name]] = value if eq else next(it, "")
        elif name in with_value:
            inspect_only |= name in ("--cfg", "-c")
            if not eq:
                next(it, None)
        elif name in ("--info", "-i", "--help", "-h", "--hydra-help", "--resolve"):
            inspect_only |= name != "--resolve"
            if name in ("--info", "-i") and not eq:
                # an optional topic follows; peek without losing an override
                rest = list(it)
                if rest and rest[0] in info_topics:
                    rest = rest[1:]
                it = iter(rest)
        elif not arg.startswith("-"):
            overrides.append(arg)
    extra_dir = flags["dir"] != config_dir or flags["name"] != "config"
    if flags["dir"] != config_dir:   # an extra search path: check every file in it as written
        import yaml
        for f in sorted(Path(flags["dir"]).expanduser().rglob("*.yaml")):
            try:
                check_targets(yaml.safe_load(f.read_text()))
            except yaml.YAMLError:
                continue   # Hydra reports unreadable files itself
            except ConfigError as e:
                raise ConfigError(f"{f}: {e}") from None
    check_overrides_text(overrides)
    register_configs()
    multirun = any(a in ("-m", "--multirun") for a in argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        single = [o.input_line for o in parsed if not o.is_sweep_override()]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(Path(config_dir).absolute()), version_base="1.3"):
            cfg = compose(flags["name"], overrides=single, return_hydra_config=True)
    except Exception as e:
        if extra_dir:   # our composition may differ from Hydra's with another search path
            return
        raise ConfigError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    check_targets(cfg)
    if not inspect_only:   # --cfg, --info and --help write nothing
        _check_writable(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
