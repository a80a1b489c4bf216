"""Submit a sweep and return; follow it while it runs.

`lab-sweep submit <lab-train overrides>` starts `lab-train -m <overrides>` as a background process of its
own session (so closing the terminal or losing the SSH connection does not touch it), waits until
the jobs are queued, writes the sweep's manifest `submission.json` and returns. On SLURM
(`hydra/launcher=submitit_slurm`) "queued" means every job is in the scheduler's queue: from then on
the background process only waits for results, and killing it loses nothing. On the local
launchers (basic, joblib, submitit_local) the background process runs the jobs itself.

`lab-sweep status DIR` says, per job, queued / running / requeued / completed / failed / interrupted /
lost, from the run directories, the scheduler (`squeue`) and whether the background process lives.

The manifest (`submission.json` in the sweep directory):
  command      the lab-train command that runs the sweep     launcher   the Hydra launcher's name
  pid, host    the background process and where it runs      log        its output (`submit.log`)
  submitted    when (ISO 8601, UTC)                          jobs       [{num, dir, overrides, scheduler_id}]
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.analysis.sweep import last_error_line
from lab.app.safety import precheck
from lab.config.compose import CONFIG_DIR, check_override_keys
from lab.core import ConfigError

MANIFEST, LOG = "submission.json", "submit.log"
SLURM_LAUNCHERS = ("submitit_slurm",)
QUEUE_WAIT_S = 300        # how long `submit` waits for the jobs to be queued before returning anyway


# ----------------------------------------------------------------------------- the jobs of a sweep

def expand_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs `lab-train -m <overrides>` runs, in Hydra's order (job i runs in <sweep dir>/i): the
    product of the comma-separated sweeps, as Hydra's basic sweeper makes it. Hydra's own overrides
    (hydra.*, hydra/...) configure the sweep and are not part of any job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    task = [o for o in overrides if not _is_hydra_override(o)]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except (HydraException, OverrideParseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def _is_hydra_override(o: str) -> bool:
    key = o.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _override_value(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key and "=" in o]
    return found[-1] if found else None


def default_sweep_dir(root: Path = Path("multirun")) -> Path:
    """Hydra's default multirun/<date>/<time>, with a suffix when a sweep started in the same second."""
    now = dt.datetime.now()
    base = root / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    d, n = base, 1
    while d.exists():
        d, n = base.with_name(f"{base.name}-{n}"), n + 1
    return d


# ----------------------------------------------------------------------------- submit

def submit(overrides: list[str], python: str = sys.executable) -> tuple[Path, dict]:
    """Start the sweep in the background and return (sweep dir, manifest) once its jobs are queued.
    Raises ConfigError for bad input (nothing is started) and RuntimeError when the sweep process
    fails before queueing (its log's last lines in the message)."""
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    if not overrides:
        raise ConfigError("give the sweep's overrides, e.g. lab-sweep submit train.seed=0,1,2 hydra/launcher=joblib")
    check_override_keys([o for o in overrides if not o.startswith("-")])
    precheck(str(CONFIG_DIR), overrides)
    jobs = expand_jobs(overrides)
    given = _override_value(overrides, "hydra.sweep.dir")
    sweep = (Path(given) if given else default_sweep_dir()).absolute()
    if (sweep / "multirun.yaml").exists() or (sweep / MANIFEST).exists():
        raise ConfigError(f"{sweep} already holds a sweep; choose another hydra.sweep.dir")
    # absolute: a Ray worker resolves a relative sweep dir in its own working directory, not here
    overrides = [o for o in overrides if not o.startswith("hydra.sweep.dir=")] + [f"hydra.sweep.dir={sweep}"]
    sweep.mkdir(parents=True, exist_ok=True)
    launcher = _override_value(overrides, "hydra/launcher") or "basic"
    command = [python, "-m", "lab", "-m", *overrides]
    with open(sweep / LOG, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=os.getcwd())
    manifest = {"command": ["lab-train", "-m", *overrides], "launcher": launcher, "pid": proc.pid,
                "host": socket.gethostname(), "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "log": LOG, "jobs": [{"num": i, "dir": str(i), "overrides": o, "scheduler_id": None}
                                     for i, o in enumerate(jobs)]}
    _write_manifest(sweep, manifest)
    ids = _wait_until_queued(sweep, proc, launcher, len(jobs))
    for job, sid in zip(manifest["jobs"], ids or []):
        job["scheduler_id"] = sid
    manifest["queued"] = ids is not None
    _write_manifest(sweep, manifest)
    return sweep, manifest


def _write_manifest(sweep: Path, manifest: dict) -> None:
    tmp = sweep / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(sweep / MANIFEST)


def _wait_until_queued(sweep: Path, proc: subprocess.Popen, launcher: str, n_jobs: int) -> list[str] | None:
    """SLURM: the scheduler ids of the jobs once all are queued. Local launchers: [] once Hydra has
    started launching (multirun.yaml written). None when the wait ran out (the sweep goes on)."""
    deadline = time.monotonic() + QUEUE_WAIT_S
    while time.monotonic() < deadline:
        if launcher in SLURM_LAUNCHERS:
            ids = slurm_ids(sweep, n_jobs)
            if ids is not None:
                return ids
        elif (sweep / "multirun.yaml").exists():
            return []
        code = proc.poll()
        if code is not None:
            if launcher not in SLURM_LAUNCHERS and (sweep / "multirun.yaml").exists():
                return []
            tail = _log_tail(sweep / LOG)
            raise RuntimeError(f"the sweep stopped before its jobs were queued (exit {code}); "
                               f"{sweep / LOG} ends with:\n{tail}")
        time.sleep(0.2)
    return None


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [l for l in text if l.startswith("error:") or "Error" in l]
    return "\n".join((errors or text)[-lines:])


def slurm_ids(sweep: Path, n_jobs: int) -> list[str] | None:
    """The SLURM ids of a submitit sweep's jobs in job order, once all of them were submitted: submitit
    writes <id>/<id>_submission.sh, then <id>_<i>/<id>_<i>_submitted.pkl per array task (or
    <id>/<id>_submitted.pkl for a single job) when sbatch has returned."""
    root = sweep / ".submitit"
    if not root.is_dir():
        return None
    for script in root.glob("*/*_submission.sh"):
        base = script.parent.name
        ids = [base] if n_jobs == 1 else [f"{base}_{i}" for i in range(n_jobs)]
        if all((root / j / f"{j}_submitted.pkl").exists() for j in ids):
            return ids
    return None


# ----------------------------------------------------------------------------- status

@dataclass
class JobStatus:
    num: int
    dir: Path
    overrides: list[str]
    state: str                  # queued | running | requeued | completed | failed | interrupted | lost | not started
    detail: str = ""            # the step reached, the failure's line, the scheduler's reason
    scheduler_id: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "requeued")


def read_manifest(sweep: Path) -> dict | None:
    try:
        return json.loads((sweep / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _jobs_of(sweep: Path, manifest: dict | None) -> list[dict]:
    if manifest and isinstance(manifest.get("jobs"), list):
        return manifest["jobs"]
    try:
        cfg = yaml.safe_load((sweep / "multirun.yaml").read_text())
        task = [str(o) for o in cfg["hydra"]["overrides"]["task"]]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        task = None
    if task is not None:
        return [{"num": i, "dir": str(i), "overrides": o, "scheduler_id": None} for i, o in enumerate(expand_jobs(task))]
    dirs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [{"num": int(p.name), "dir": p.name, "overrides": [], "scheduler_id": None} for p in dirs]


def process_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def squeue_states(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{scheduler id: (STATE, reason)} for those of `ids` SLURM still knows (pending, running, requeued);
    None when squeue cannot be run here."""
    arrays = sorted({i.split("_")[0] for i in ids})
    if not arrays:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def _last_step(run_dir: Path) -> int | None:
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _steps_of(run_dir: Path) -> int | None:
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        try:
            return int(yaml.safe_load(path.read_text())["train"]["steps"])
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            continue
    return None


def job_statuses(sweep: Path, scheduler: dict[str, tuple[str, str]] | None = None,
                 sweeper_alive: bool | None = None) -> list[JobStatus]:
    """Every job of the sweep and where it stands. `scheduler` (squeue's states) and `sweeper_alive`
    (the background process lives) are looked up when not given."""
    sweep = Path(sweep)
    manifest = read_manifest(sweep)
    jobs = _jobs_of(sweep, manifest)
    ids = [j.get("scheduler_id") for j in jobs if j.get("scheduler_id")]
    if scheduler is None and ids:
        scheduler = squeue_states(ids)
    if sweeper_alive is None:
        sweeper_alive = bool(manifest) and manifest.get("host") == socket.gethostname() and process_alive(manifest.get("pid"))
    out = []
    for j in jobs:
        run_dir = sweep / str(j["dir"])
        sid = j.get("scheduler_id")
        summary = _summary_status(run_dir)
        step, steps = _last_step(run_dir), _steps_of(run_dir)
        progress = f"step {step}/{steps}" if step is not None and steps else ""
        queue = scheduler.get(sid) if scheduler and sid else None
        if queue is not None:
            state, reason = queue
            if state == "PENDING":
                kind = "requeued" if summary and summary.startswith("interrupted") else "queued"
                detail = ", ".join(x for x in (progress, f"waiting: {reason}" if reason not in ("None", "") else "") if x)
                out.append(JobStatus(j["num"], run_dir, j["overrides"], kind, detail, sid))
                continue
            if state in ("RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"):
                kind = "requeued" if state.startswith("REQUEUE") else "running"
                out.append(JobStatus(j["num"], run_dir, j["overrides"], kind, progress, sid))
                continue
        if summary == "completed":
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "completed", progress, sid))
        elif summary and summary.startswith("failed"):
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "failed", summary[len("failed"):].lstrip(": "), sid))
        elif not summary and (error := last_error_line(run_dir)):
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "failed", error, sid))   # refused before training
        elif summary and summary.startswith("interrupted"):
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "interrupted", summary, sid))
        elif not sid and sweeper_alive and summary in (None, "running"):
            state = "running" if (run_dir / ".hydra").is_dir() else "queued"
            out.append(JobStatus(j["num"], run_dir, j["overrides"], state, progress, sid))
        elif scheduler is None and sid:   # squeue unavailable: say what the files say
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "unknown", progress or "squeue unavailable", sid))
        elif run_dir.is_dir() and (run_dir / ".hydra").is_dir():
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "lost",
                                 (progress + "; " if progress else "") + "its process ended without a summary (killed?)", sid))
        else:
            out.append(JobStatus(j["num"], run_dir, j["overrides"], "not started",
                                 "the sweep process ended before this job started", sid))
    return out


def _summary_status(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / "summary.json").read_text()).get("status") or "completed")
    except (OSError, ValueError, AttributeError):
        return None


def status_table(statuses: list[JobStatus], swept_only: bool = True) -> str:
    """A plain-text table: job, scheduler id, state, detail, the job's varying overrides."""
    varying = _varying_keys([s.overrides for s in statuses]) if swept_only else None
    rows = [("job", "scheduler id", "state", "detail", "overrides")]
    for s in statuses:
        shown = [o for o in s.overrides if varying is None or o.split("=", 1)[0] in varying]
        rows.append((str(s.num), s.scheduler_id or "—", s.state, s.detail or "", " ".join(map(shlex.quote, shown))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows).rstrip()


def _varying_keys(overrides: list[list[str]]) -> set[str]:
    values: dict[str, set] = {}
    for o in overrides:
        for kv in o:
            k, _, v = kv.partition("=")
            values.setdefault(k, set()).add(v)
    return {k for k, v in values.items() if len(v) > 1 or len(overrides) == 1}
