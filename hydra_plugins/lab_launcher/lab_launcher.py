"""`hydra/launcher=lab`: every job of a sweep (`lab-train -m ...`) is its own OS process.

Each job runs as `python -m lab <its overrides> hydra.run.dir=<its job directory>`: a single run
(Hydra's RUN mode) writing into the directory Hydra's own launchers would give that job
(hydra.sweep.dir/hydra.sweep.subdir, job number included), with `LAB_JOB_NUM=<num>` in its
environment and its stdout and stderr in `<job dir>/launcher.log` (its pid in `<job dir>/launcher.pid`
while it runs). At most `n_jobs` run at once; when one ends the next starts. A job that fails,
crashes or is killed (even with SIGKILL) ends alone: the others run on and finish, which loky
(hydra/launcher=joblib) cannot do, since one dead worker breaks its whole pool.

When every job has ended the launcher prints a line per failed job and, if any failed, raises
`SweepFailed` (a one-line Hydra error: lab-train exits 1 without a traceback). Ctrl-C or SIGTERM
of the sweep sends SIGTERM to every running job (the lab checkpoints and writes its summary),
starts no more, waits for them and exits 130; each further signal is passed on as well, since a
lab run counts them (the second skips its plots, the third exits at once). The children run in
their own sessions, so a terminal's Ctrl-C reaches them only through the launcher, once per press;
on Linux they get SIGTERM too if the launcher itself dies.

Hydra instantiates launchers only from the `hydra_plugins` namespace package, hence this location.
No `from __future__ import annotations` here: Hydra's plugin scan executes the module before it is
in sys.modules, and dataclasses then cannot resolve string annotations.
"""

import copy
import ctypes
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

MODULE = "lab"                  # the child: python -m lab
LOG_FILE, PID_FILE = "launcher.log", "launcher.pid"
POLL_S = 0.2                    # how often the running jobs are checked
PREFIX = "[lab launcher]"
# hydra overrides of the sweep that are not the child's business (it is one run in a given directory)
NOT_FORWARDED = ("hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.sweep",
                 "hydra.run", "hydra.mode", "hydra.job.num", "hydra.job.id")
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
_ERROR_LINE = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:ERROR|CRITICAL)\] - ")   # Hydra's job log format


@dataclass
class ProcessLauncherConf:
    _target_: str = "hydra_plugins.lab_launcher.lab_launcher.ProcessLauncher"
    # jobs running at once; -1 (any value < 1): one per CPU core. Never more than the sweep's jobs.
    n_jobs: int = -1


ConfigStore.instance().store(group="hydra/launcher", name="lab", node=ProcessLauncherConf, provider="lab_launcher")


class SweepFailed(CompactHydraException):
    """Raised after every job of the batch has ended when one or more failed; its message is one line.
    `returns` holds the batch's JobReturns (the failed ones hold a JobFailed)."""

    def __init__(self, message: str, returns: Sequence[JobReturn] = ()) -> None:
        super().__init__(message)
        self.returns = list(returns)


class JobFailed(CompactHydraException):
    """One job's failure (the exception a FAILED JobReturn holds): its exit code and last error line."""


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def quote_value(value: str) -> str:
    """`value` as a single-quoted Hydra override value that parses back to exactly `value`
    (quotes escaped, and the backslashes before a quote or at the end doubled)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _forwarded(hydra_overrides: Sequence[str]) -> List[str]:
    out = []
    for o in hydra_overrides:
        key = _override_key(str(o))
        if not any(key == k or key.startswith(k + ".") for k in NOT_FORWARDED):
            out.append(str(o))
    return out


def _labels(job_overrides: Sequence[Sequence[str]]) -> List[str]:
    """Per job, the overrides that differ between the batch's jobs (all of them for a lone job)."""
    jobs = [list(filter_overrides(o)) for o in job_overrides]
    if len(jobs) == 1:
        return [" ".join(jobs[0])]

    def item(o: List[str], key: str) -> Optional[str]:
        return next((i for i in o if _override_key(i) == key), None)
    keys = dict.fromkeys(_override_key(i) for o in jobs for i in o)
    varying = {k for k in keys if len({item(o, k) for o in jobs}) > 1}
    return [" ".join(i for i in o if _override_key(i) in varying) for o in jobs]


def _task_config(sweep_config: DictConfig) -> DictConfig:
    """The job's config without its hydra node (what the task function would be given)."""
    cfg = copy.deepcopy(sweep_config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def last_error_line(log: Path, limit: int = 65536) -> str:
    """The last meaningful line of a job's output: its error message or the exception that ended it
    (progress-bar redraws split off, Hydra's HYDRA_FULL_ERROR hint skipped)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(re.split(r"[\r\n]+", text)):
        line = " ".join(line.split())
        if line and not line.startswith(HYDRA_HINT):
            return line if len(line) <= 400 else line[:399] + "…"
    return ""


def _prctl_pdeathsig():
    """On Linux, a preexec function that makes the child receive SIGTERM when the launcher dies
    (prepared here: after fork only the call itself runs)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG, SIGTERM, parent = 1, int(signal.SIGTERM), os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, SIGTERM)
        if os.getppid() != parent:   # the launcher died before prctl took effect
            os.kill(os.getpid(), SIGTERM)
    return preexec


class _Job:
    def __init__(self, num: int, overrides: List[str], label: str, job_dir: Path, cmd: List[str],
                 sweep_config: DictConfig) -> None:
        self.num, self.overrides, self.label, self.dir, self.cmd = num, overrides, label, job_dir, cmd
        self.sweep_config = sweep_config
        self.proc: Optional[subprocess.Popen] = None
        self.signalled = False       # SIGTERM sent by the launcher (Ctrl-C / SIGTERM of the sweep)
        self.failure: Optional[str] = None

    @property
    def name(self) -> str:
        return f"job {self.num}" + (f" ({self.label})" if self.label else "")


class ProcessLauncher(Launcher):
    def __init__(self, n_jobs: int = -1) -> None:
        super().__init__()
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self._signals: List[int] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    # ------------------------------------------------------------------------- preparing the jobs

    def _child_args(self) -> List[str]:
        """What every child gets besides its own overrides: the sweep's config name and extra config
        directory, and its hydra overrides except the launcher's, sweeper's and output directories'."""
        assert self.config is not None
        hc = self.config.hydra
        args = []
        if hc.job.config_name and hc.job.config_name != "config":
            args += ["--config-name", str(hc.job.config_name)]
        for source in hc.runtime.config_sources or []:
            if source.get("provider") == "command-line" and source.get("schema") == "file":
                args += ["--config-dir", str(source.path)]
        return args + _forwarded(OmegaConf.to_container(hc.overrides.hydra))

    def _prepare(self, num: int, overrides: List[str], label: str, child_args: List[str]) -> _Job:
        """The job's config and directory as Hydra's own launchers compute them (sweep dir / subdir
        resolved with hydra.job.num set), and its command line."""
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
            sweep_config.hydra.job.num = num
        original = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)
        try:
            output_dir = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
            subdir = OmegaConf.select(sweep_config, "hydra.sweep.subdir")
            if subdir is not None:
                output_dir = os.path.join(output_dir, str(subdir))
            output_dir = os.path.abspath(output_dir)
            with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
                sweep_config.hydra.runtime.output_dir = output_dir
        finally:
            HydraConfig.instance().cfg = original
        cmd = [sys.executable, "-m", MODULE, *overrides, *child_args, f"hydra.run.dir={quote_value(output_dir)}"]
        return _Job(num, list(overrides), label, Path(output_dir), cmd, sweep_config)

    # ------------------------------------------------------------------------- running them

    def _say(self, message: str) -> None:
        print(f"{PREFIX} {message}", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)    # acted on by the loop in launch (no work inside the handler)

    def _start(self, job: _Job, preexec) -> None:
        env = dict(os.environ, LAB_JOB_NUM=str(job.num))
        try:
            job.dir.mkdir(parents=True, exist_ok=True)
            with open(job.dir / LOG_FILE, "ab") as log:
                stamp = dt.datetime.now().isoformat(timespec="seconds")
                log.write(f"== {stamp} {PREFIX} job {job.num}: {subprocess.list2cmdline(job.cmd)}\n".encode())
                log.flush()
                job.proc = subprocess.Popen(job.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, preexec_fn=preexec)
        except OSError as e:
            job.failure = f"could not start ({e})"
            self._say(f"{job.name} failed: {job.failure}")
            return
        try:   # for whoever wants to signal one job (lab-sweep status, tests); removed when it ends
            (job.dir / PID_FILE).write_text(f"{job.proc.pid}\n")
        except OSError:
            pass
        self._say(f"{job.name} started (pid {job.proc.pid}); output in {job.dir / LOG_FILE}")

    def _ended(self, job: _Job) -> None:
        assert job.proc is not None
        rc = job.proc.returncode
        try:
            (job.dir / PID_FILE).unlink()
        except OSError:
            pass
        if rc == 0:
            self._say(f"{job.name} exited 0")
            return
        if rc < 0:
            reason = f"killed by {_signal_name(-rc)}"
            line = ""        # its last output says nothing about a signal from outside
        else:
            reason = f"exit {rc}"
            line = last_error_line(job.dir / LOG_FILE)
        job.failure = reason + (f": {line}" if line else "")
        verb = "stopped" if job.signalled else "failed"
        self._say(f"{job.name} {verb} ({reason})" + (f": {line}" if line else ""))
        if not job.signalled:
            self._record_failure(job)

    def _record_failure(self, job: _Job) -> None:
        """A job refused or killed before it recorded itself still shows up in lab-sweep as failed: its
        .hydra/ files (task overrides, config) when the child wrote none, and, without summary.json or
        an ERROR line in its Hydra log, an ERROR line there naming the exit code or signal."""
        hydra_dir = job.dir / ".hydra"
        try:
            if not (hydra_dir / "overrides.yaml").exists():
                hydra_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(_task_config(job.sweep_config), hydra_dir / "config.yaml")
                OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(job.sweep_config.hydra)}),
                               hydra_dir / "hydra.yaml")
                OmegaConf.save(OmegaConf.create(job.overrides), hydra_dir / "overrides.yaml")
            if (job.dir / "summary.json").exists():
                return
            log = job.dir / f"{job.sweep_config.hydra.job.name}.log"
            if log.is_file() and any(_ERROR_LINE.match(line) for line in log.read_text(errors="replace").splitlines()):
                return
            stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            with open(log, "a") as f:
                f.write(f"[{stamp}][lab.launcher][ERROR] - {job.failure}\n")
        except Exception as e:   # bookkeeping only: the job's own failure is what gets reported
            self._say(f"{job.name}: could not record its failure in {job.dir} ({type(e).__name__}: {e})")

    def _return(self, job: _Job) -> JobReturn:
        ret = JobReturn()
        ret.overrides = job.overrides
        ret.cfg = _task_config(job.sweep_config)
        ret.hydra_cfg = copy.deepcopy(job.sweep_config)
        ret.working_dir = str(job.dir) if job.sweep_config.hydra.job.chdir else os.getcwd()
        ret.task_name = str(job.sweep_config.hydra.job.name)
        if job.failure is None:
            ret.status = JobStatus.COMPLETED
            try:   # lab-train's task returns the run's summary
                ret.return_value = json.loads((job.dir / "summary.json").read_text())
            except (OSError, ValueError):
                ret.return_value = None
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = JobFailed(f"{job.name} failed: {job.failure}")
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        child_args = self._child_args()
        labels = _labels(job_overrides)
        jobs = [self._prepare(initial_job_idx + i, list(o), labels[i], child_args) for i, o in enumerate(job_overrides)]
        if not jobs:
            return []
        slots = self.n_jobs if self.n_jobs and self.n_jobs > 0 else cpu_cores()
        slots = max(1, min(slots, len(jobs)))
        self._say(f"{len(jobs)} job(s), {slots} at a time, each its own process; sweep directory {sweep_dir}")

        preexec = _prctl_pdeathsig()
        pending, running = deque(jobs), []
        self._signals = []
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        handled = 0
        try:
            while running or (pending and not self._signals):
                while pending and not self._signals and len(running) < slots:
                    job = pending.popleft()
                    self._start(job, preexec)
                    if job.proc is not None:
                        running.append(job)
                if len(self._signals) > handled:
                    handled = self._interrupt(running, handled)
                time.sleep(POLL_S)
                for job in [j for j in running if j.proc.poll() is not None]:
                    running.remove(job)
                    self._ended(job)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

        where = shlex.quote(str(sweep_dir))
        if self._signals:
            stopped = [j for j in jobs if j.signalled]
            self._say(f"interrupted ({_signal_name(self._signals[0])}): {len(stopped)} running job(s) stopped, "
                      f"{len(pending)} not started; lab-sweep {where} lists the commands that continue them")
            sys.exit(130)

        returns = [self._return(j) for j in jobs]
        failed = [j for j in jobs if j.failure is not None]
        if failed:
            self._say(f"{len(failed)} of {len(jobs)} jobs failed: "
                      + "; ".join(f"{j.name}: {j.failure}" for j in failed))
            logs = failed[0].dir / LOG_FILE if len(failed) == 1 else f"{sweep_dir}/<job>/{LOG_FILE}"
            nums = ", ".join(str(j.num) for j in failed)
            raise SweepFailed(f"{len(failed)} of {len(jobs)} jobs failed (job {nums}); output in {logs}; "
                              f"`lab-sweep {where}` lists the commands that rerun them", returns)
        return returns

    def _interrupt(self, running: List[_Job], handled: int) -> int:
        """Every Ctrl-C / SIGTERM of the sweep reaches every running job as one SIGTERM, so each job sees
        what a single run would: the lab stops after its chunk with a checkpoint and its summary, a
        second signal skips the plots, a third exits at once. After the first, no more jobs start."""
        for signum in self._signals[handled:]:
            if handled == 0:
                self._say(f"{_signal_name(signum)}: stopping {len(running)} running job(s) (SIGTERM: each checkpoints "
                          "and writes its summary); no more jobs start. Further signals are passed on too")
            else:
                self._say(f"{_signal_name(signum)} again: passed on to {len(running)} running job(s)")
            for job in running:
                job.signalled = True
                _send(job, signal.SIGTERM)
            handled += 1
        return handled


def _send(job: _Job, signum: int) -> None:
    try:
        assert job.proc is not None
        job.proc.send_signal(signum)
    except (OSError, AssertionError):
        pass
