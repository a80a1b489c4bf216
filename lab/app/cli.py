"""The entry point of `lab-train` (a Hydra app; `python -m lab` is the same). `lab-plot` is lab.app.plot's:
importing it here would load matplotlib and scipy before every run's first step.

The training path (lab.app.run) is imported inside the app, after the config is known and XLA's
CPU threading is set from `train.xla_cpu_threads`: the one deliberate function-local import of
the lab's own modules (ARCHITECTURE.md). It also keeps `lab-plot` and `--help` from loading it.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lab.app.safety import precheck
from lab.config.compose import CONFIG_DIR, check_override_keys, register_configs
from lab.core import AnalysisInterrupted, ConfigError, TrainingDiverged, failure_reason, request_stop
from lab.rundir import checkpoint_steps, load_summary, write_text_atomic
from lab.train.runtime import configure_xla_threads, place_on_gpus
log = logging.getLogger("lab")


def _hand_on_preemption(e: KeyboardInterrupt, run_dir: Path) -> None:
    """Under submitit on SLURM, SIGUSR2 means "time limit near" or "pre-empted": the trainer has stopped
    after its chunk and checkpointed; submitit's own handler (restored when training stopped) then
    requeues the job, which continues from that checkpoint in the same run directory, and exits."""
    usr2 = getattr(signal, "SIGUSR2", None)
    handler = signal.getsignal(usr2) if usr2 is not None and getattr(e, "signum", None) == usr2 else None
    if callable(handler) and handler is not request_stop:
        log.warning("pre-empted (SIGUSR2): checkpoint written in %s; requeueing the job", run_dir)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # SLURM's SIGTERM for the requeue: we are leaving anyway
        handler(usr2, None)


# The run directory lab-train made for this run (a unique timestamped one), removed again if the run is refused
_made_dirs: list[Path] = []


def _write_hydra_files(cfg, hc, run_dir: Path) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra would write them, but only once the
    run's checks have passed (hydra.output_subdir is null in configs/config.yaml)."""
    from omegaconf import OmegaConf
    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, d / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}), d / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), d / "overrides.yaml")


def _started(cfg, hc, run_dir: Path) -> None:
    """The run's checks passed: Hydra's files, and the run directory named now (console and train.log),
    so TensorBoard or `tail -f train.log` can follow the run from its first step."""
    _write_hydra_files(cfg, hc, run_dir)
    tb = f"; tensorboard --logdir {run_dir / 'tensorboard'}" if cfg.train.tensorboard else ""
    log.info("run directory: %s%s", run_dir, tb)


def _refused(run_dir: Path) -> None:
    """A refused single run leaves nothing: the directory lab-train made for it goes again."""
    for d in _made_dirs:
        if d == run_dir or run_dir in d.parents or d in run_dir.parents:
            shutil.rmtree(d, ignore_errors=True)


def _train_app(cfg) -> dict | None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)   # "no TPU" notices on every start
    # From here on a stop signal is counted, not raised (lab.core.request_stop): the trainer stops at the
    # first point where its step, state and records agree, or before its first chunk if the signal came
    # during start-up or compilation. SIGTERM (SLURM's requeue, cancel and pre-emption, `kill`) is Ctrl-C.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, request_stop)
    configure_xla_threads(cfg.train)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    # a job of hydra/launcher=lab runs as a single run in its own process; LAB_JOB_NUM says which job
    job_num = hc.job.num if multirun else (int(os.environ["LAB_JOB_NUM"]) if "LAB_JOB_NUM" in os.environ else None)
    place_on_gpus(cfg.train, job_num)
    from lab.app.run import run   # after the XLA flags: see the module docstring

    run_dir = Path(hc.runtime.output_dir)
    try:
        result = run(cfg, run_dir, before_training=lambda d: _started(cfg, hc, d), reuse_programs=True)
    except (ConfigError, TrainingDiverged) as e:
        kind = "config error" if isinstance(e, ConfigError) else "training failed"
        msg = f"{kind}: {e}"
        if multirun:   # one bad job must not stop the sweep; the job's files record the failure for lab-sweep
            if isinstance(e, ConfigError) and not (run_dir / "summary.json").exists():
                _write_hydra_files(cfg, hc, run_dir)
                write_text_atomic(run_dir / "summary.json", json.dumps({"status": f"failed: {e}"}, indent=1))
            log.error("%s [%s]", msg, run_dir)
            return {"status": f"failed: {e}"}
        if isinstance(e, ConfigError):
            _refused(run_dir)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except AnalysisInterrupted:
        print(f"\ninterrupted after training: the run is complete in {run_dir} (checkpoint, metrics, summary.json; "
              f"{load_summary(run_dir).get('verdict', '')}). Draw the plots with:\n  lab-plot {run_dir}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt as e:
        _hand_on_preemption(e, run_dir)
        overrides = " ".join(hc.overrides.task)
        if checkpoint_steps(run_dir):
            print(f"\ninterrupted; the checkpoint and metrics so far are in {run_dir}. Continue with:\n"
                  f"  lab-train {overrides} train.resume=true hydra.run.dir={run_dir}", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint; start it again with:\n"
                  f"  lab-train {overrides} hydra.run.dir={run_dir}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            return _crashed(run_dir, e, multirun)
        steps = checkpoint_steps(run_dir)
        where = f"the last checkpoint, at step {steps[-1]}, is intact" if steps else "no checkpoint was written"
        print(f"error: no space left on {e.filename or run_dir}; {where}; free space and run the same command "
              "again to continue", file=sys.stderr)
        sys.exit(1)
    except Exception as e:   # a bug or an out-of-memory crash: one line here, the traceback in train.log
        return _crashed(run_dir, e, multirun)
    print(f"{result.summary.get('verdict', result.summary['status'])}\nrun directory: {run_dir}")
    return result.summary


def _crashed(run_dir: Path, e: BaseException, multirun: bool) -> dict:
    """A run that crashed (a bug, out of memory): its traceback goes to train.log and one line to the
    terminal. A single run exits 1 here (Hydra would print its own traceback for an exception); a multirun
    job returns, so that the sweep's other jobs go on, and train_main exits 1 at the end."""
    try:
        with open(run_dir / "train.log", "a") as f:
            f.write("".join(traceback.format_exception(e)))
    except OSError:
        pass
    line = f"training failed: {failure_reason(e)}; the traceback is in {run_dir / 'train.log'}"
    if multirun:
        log.error("%s", line)
        return {"status": f"failed: {failure_reason(e)}"}
    print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


def _claim_output_dir(cfg, multirun: bool) -> list[str]:
    """Hydra's default run (or sweep) directory is named by the second: two runs started in the same
    second would share it. If the directory is timestamped (${now:...}), make it now, atomically, with a
    suffix -2, -3, ... when taken, and hand it to Hydra as an override."""
    from omegaconf import OmegaConf
    node = "sweep" if multirun else "run"
    try:
        raw = OmegaConf.to_container(cfg.hydra[node], resolve=False)["dir"]
        resolved = Path(str(cfg.hydra[node].dir))
    except Exception:   # an interpolation only Hydra's job can resolve: leave it to Hydra
        return []
    if "${now:" not in str(raw):
        return []
    parent = resolved.absolute().parent
    existing = next(p for p in [parent, *parent.parents] if p.exists())
    resolved.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = resolved if i == 1 else resolved.with_name(f"{resolved.name}-{i}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        made = path.absolute()
        # the topmost directory this call made (outputs/<date>/<time>, or outputs/<date>): it goes if refused
        _made_dirs.append(made if existing == made.parent else next(p for p in made.parents if p.parent == existing))
        return [f"hydra.{node}.dir={path}"]
    return []


def _failed_jobs(sweep_dir: Path) -> list[str]:
    """The jobs of a finished multirun whose summary.json does not say completed."""
    failed = []
    for summary in sorted(sweep_dir.glob("*/summary.json")):
        status = str(load_summary(summary.parent).get("status", "unreadable"))
        if status != "completed":
            failed.append(f"{summary.parent.name}: {status}")
    return failed


def _help_without_schemas(text: str) -> str:
    """--help's group list without the ConfigStore's schema entries (schema_*, the clamp_schema group):
    they are the lab's typing, not options a user chooses."""
    lines = []
    for line in text.splitlines(keepends=True):
        group, sep, options = line.partition(": ")
        if sep and "schema_" in options and " " not in group:
            kept = [o for o in options.strip().split(", ") if not o.startswith("schema_")]
            if not kept:
                continue
            line = f"{group}: {', '.join(kept)}\n"
        lines.append(line)
    return "".join(lines)


def train_main() -> None:
    argv = sys.argv[1:]
    try:
        check_override_keys([a for a in argv if not a.startswith("-")])
        cfg = precheck(str(CONFIG_DIR), argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if cfg is not None:
        sys.argv += _claim_output_dir(cfg, multirun)
    register_configs()
    app = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_train_app)
    if "--help" in argv or "-h" in argv:   # Hydra's help, less the schemas the ConfigStore registers
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                app()
        finally:   # Hydra exits after printing the help
            print(_help_without_schemas(out.getvalue()), end="")
        return
    app()
    if multirun and cfg is not None:
        sweep_dir = Path(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.sweep.dir=")),
                              str(cfg.hydra.sweep.dir)))
        failed = _failed_jobs(sweep_dir)
        if failed:
            print(f"error: {len(failed)} job(s) of the sweep did not complete ({'; '.join(failed[:3])}); "
                  f"lab-sweep {sweep_dir} lists them with the commands that rerun them", file=sys.stderr)
            sys.exit(1)
