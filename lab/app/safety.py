"""Checks before Hydra starts: untrusted configs must not run arbitrary Python, and bad
overrides or an unwritable output directory fail in one line (`precheck`).

Hydra builds objects from `_target_` keys (launchers, sweepers, callbacks) and Python's logging
builds handlers from `class` and `()` keys; a shared config or sweep file could name any callable
there (`_target_: os.system`). `lab-train` therefore composes the whole config, Hydra's part
included (hydra.callbacks, .launcher, .sweeper, .job_logging, .hydra_logging), before Hydra
instantiates anything, and refuses every such name outside an allowlist of Hydra's own launchers
and sweepers, logging's handlers and the lab's classes. Register your own with
`register_target("my_package.MyLauncher")` in code that runs before `lab-train`'s check.

The composition is Hydra's own, route for route: the command line is read by Hydra's argument
parser (so `--config-path=x`, `-cp x` and abbreviations such as `--config-p x` mean what they mean
to Hydra), the search path is built as `hydra.main` builds it (the lab's config dir, or the
`--config-path`/`-cp` dir in its place, resolved as Hydra resolves it: an absolute path as is, a
relative one inside the package of `lab.app.cli`; plus `--config-dir`/`-cd` and any
`hydra.searchpath`), with the `--config-name`/`-cn` primary config and the run mode Hydra picks.
A config that does not compose is reported in one line: Hydra would fail on it too.

Defence in depth, because a sweep's jobs compose other group options than the one config checked
above: every file config source the user names (the `-cp` and `-cd` dirs, `hydra.searchpath`
entries) is scanned file by file, as written, symlinked directories and files included (each
directory once, so a symlink cycle ends); a file Hydra could not read (not UTF-8, bad YAML) is
reported in one line naming it. `pkg://` sources are Python packages, trusted like any installed
code. Sweep alternatives (a=1,2) are checked as text. `--experimental-rerun` is refused: it
unpickles a file, which can run any Python.
The lab itself builds nothing from config by name (tasks, optimisers and clamp values are chosen
from fixed tables), and checkpoints are read by orbax as arrays, never unpickled.
"""
from __future__ import annotations

import contextlib
import io
import os
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
    "hydra_plugins.lab_launcher.lab_launcher.ProcessLauncher",     # the lab's own process-per-job launcher
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
    clamp = re.match(r"Could not override '(clamps\.([^.']+)\.[^']+)'", msg)
    if clamp and "is not in struct" in msg:   # a key of a clamp that no preset or +clamps.<name> defined
        key, name = clamp.groups()
        msg = (f"{key}: this config has no clamp named '{name}'; add it with '+clamps.{name}={{site: ..., value: "
               f"...}}', or choose the preset that defines it (clamp=perfect_prev_token defines clamps.prev_token)")
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


# The module of the task function lab-train hands to hydra.main (lab.app.cli._train_app): Hydra
# resolves a relative --config-path inside its package (HYDRA_MAIN_MODULE replaces it, as in Hydra).
MAIN_MODULE = "lab.app.cli"
# Search path entries the user names; the scan reads their files as written.
USER_PROVIDERS = ("main", "command-line", "hydra.searchpath in main", "hydra.searchpath in command-line")


class _Stop(Exception):
    """Hydra's parser would exit before composing anything (--version)."""


def _hydra_args(argv: list[str]):
    """The command line as hydra.main reads it (Hydra's own parser), or None for --version.
    A line Hydra's parser refuses is a ConfigError with argparse's message."""
    from hydra._internal.utils import get_args_parser

    def error(message):
        raise ConfigError(message)

    def stop(status=0, message=None):
        raise _Stop

    parser = get_args_parser()
    parser.error, parser.exit = error, stop
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # --version prints before it exits
            return parser.parse_args(argv)
    except _Stop:
        return None


def _search_path(config_path: str, config_dir: str | None):
    """Hydra's config search path for lab-train, as hydra.main builds it (hydra._internal.utils._run_hydra)."""
    from hydra._internal.utils import (_get_module_name_override, create_automatic_config_search_path,
                                       detect_task_name)
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.utils import validate_config_path

    module = _get_module_name_override() or MAIN_MODULE
    calling_file = str(Path(__file__).with_name("cli.py")) if module == "__main__" else None
    calling_module = None if module == "__main__" else module
    try:
        validate_config_path(config_path)
    except ValueError as e:
        raise ConfigError(_one_line(e)) from None
    search_path = create_automatic_config_search_path(calling_file, calling_module, config_path)
    main = next(e.path for e in search_path.get_path() if e.provider == "main")
    main_dir = _file_dir(main)
    if main_dir is not None and not os.path.isdir(main_dir):
        raise ConfigError(f"the config directory {main_dir} (--config-path) does not exist")
    if config_dir is not None:
        abs_config_dir = os.path.abspath(config_dir)
        if not os.path.isdir(abs_config_dir):
            raise ConfigError(f"Additional config directory '{abs_config_dir}' not found (--config-dir)")
        search_path.prepend(provider="command-line", path=f"file://{abs_config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    return search_path, detect_task_name(calling_file, calling_module)


def _file_dir(path: str) -> str | None:
    """The directory of a file:// (or scheme-less) search path entry; None for pkg:// and others."""
    scheme, sep, rest = path.partition("://")
    if not sep:
        return path
    return rest if scheme == "file" else None


def _read_config_file(path: str):
    """A config file read as Hydra reads it (UTF-8, OmegaConf's YAML loader); ConfigError in one line
    naming the file when it cannot be read."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            return OmegaConf.load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "Hydra reads configs as UTF-8") from None
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{path}: not valid YAML: {what}{where}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except Exception as e:   # other YAML or OmegaConf errors
        raise ConfigError(f"{path}: cannot read it as a config: {_one_line(e)}") from None


def scan_config_dir(directory: str) -> None:
    """Check every *.yaml below `directory` as written, following symlinked directories and files
    (each real directory once, so a symlink cycle ends)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen)
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.endswith(".yaml") and os.path.isfile(path):   # a broken link is no config to Hydra either
                try:
                    check_targets(_read_config_file(path))
                except ConfigError as e:
                    raise ConfigError(str(e) if str(e).startswith(path) else f"{path}: {e}") from None


def _scan_user_sources(entries, config_dir: str, done: set[str]) -> None:
    """Scan the file sources among (provider, path) search path entries that the user named, once
    each, leaving out the lab's own config dir."""
    lab = os.path.realpath(config_dir)
    for provider, path in entries:
        directory = _file_dir(path)
        if provider not in USER_PROVIDERS or directory is None or not os.path.isdir(directory):
            continue
        real = os.path.realpath(directory)
        if real != lab and real not in done:
            done.add(real)
            scan_config_dir(directory)


def _single_run(hydra, config_name: str, overrides: list[str]):
    """The config of a single run in one composition, or None where `Hydra.get_mode` must decide (a config
    that sets hydra.mode, or that does not compose for a single run): that takes a second composition,
    0.07 s of every lab-train start on a 2-core CPU. hydra.mode is left unset, as in `get_mode`'s config."""
    from hydra.types import RunMode
    try:
        cfg = hydra.compose_config(config_name=config_name, overrides=overrides, run_mode=RunMode.RUN,
                                   with_log_configuration=False)
    except Exception:
        return None
    return cfg if cfg.hydra.mode in (None, RunMode.RUN) else None


def precheck(config_dir: str, argv: list[str]):
    """Before Hydra builds or writes anything: compose the job and Hydra config exactly as lab-train's
    hydra.main will (`config_dir` is its config_path; see the module docstring for the routes),
    refuse targets outside the allowlist, turn composition errors (wrong types, unknown options,
    missing configs) into one line, and check that the output directory can be written. Files in
    the config dirs the user names are checked as written; sweep alternatives (a=1,2) as text.
    `argv` without -m but with sweep alternatives (lab-sweep submit's check) is read as a sweep.
    Returns the composed config (Hydra's part included), or None for --help, --cfg, --info."""
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    args = _hydra_args(argv)
    if args is None:
        return
    if args.experimental_rerun is not None:
        raise ConfigError("--experimental-rerun is not supported: it unpickles the file it is given, which can "
                          "run any Python; rerun with the run's overrides (its .hydra/overrides.yaml) instead")
    overrides = list(args.overrides)
    check_overrides_text(overrides)
    config_path = args.config_path if args.config_path is not None else str(config_dir)
    config_name = args.config_name if args.config_name is not None else "config"
    search_path, task_name = _search_path(config_path, args.config_dir)
    scanned: set[str] = set()
    _scan_user_sources([(e.provider, e.path) for e in search_path.get_path()], config_dir, scanned)
    inspect_only = bool(args.help or args.hydra_help or args.cfg is not None or args.info is not None
                        or args.shell_completion)   # these print and write nothing
    register_configs()
    GlobalHydra.instance().clear()
    try:
        sweeps = any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
        hydra = Hydra.create_main_hydra2(task_name=task_name, config_search_path=search_path)
        multirun = args.multirun or sweeps
        cfg = None if inspect_only or multirun else _single_run(hydra, config_name, overrides)
        if cfg is not None:
            mode = RunMode.RUN
        elif inspect_only:   # --cfg, --info, --help compose for a single run
            mode = RunMode.MULTIRUN if sweeps else RunMode.RUN
        else:   # as hydra._internal.utils._run_app picks the mode (hydra.mode in a config counts)
            mode = hydra.get_mode(config_name=config_name, overrides=overrides)
            if mode is None or (multirun and mode == RunMode.RUN):
                mode = RunMode.MULTIRUN if multirun else RunMode.RUN
                overrides.append(f"hydra.mode={mode.name}")
        if cfg is None:
            cfg = hydra.compose_config(config_name=config_name, overrides=overrides, run_mode=mode,
                                       with_log_configuration=False)
        sources = [(s.provider, f"{s.schema}://{s.path}") for s in cfg.hydra.runtime.config_sources]
        out_dir = None if inspect_only else str(cfg.hydra.sweep.dir if mode == RunMode.MULTIRUN else cfg.hydra.run.dir)
    except Exception as e:
        raise ConfigError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    check_targets(cfg)
    _scan_user_sources(sources, config_dir, scanned)   # hydra.searchpath entries, known once composed
    if out_dir is not None:
        _check_writable(out_dir)
    return None if inspect_only else cfg
