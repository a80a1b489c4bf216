"""A multirun on Ray (`hydra/launcher=ray`, the optional extra: pip install -e '.[ray]'). The test
starts a one-node Ray cluster of its own (`ray start --head --block` in a subprocess, in its own
session, temp dir and free ports, bound to 127.0.0.1), runs a 2-job sweep connected to it, and
stops the head by PID. Skipped where ray or hydra-ray-launcher is not installed.

Two things every Ray sweep needs, which the test therefore passes:
- `++hydra.launcher.ray.init.object_store_memory=null`: hydra-ray-launcher 1.2.2 always adds
  object_store_memory=75 MB to ray.init's arguments, and Ray refuses that when connecting to an
  existing cluster ("When connecting to an existing cluster, object_store_memory must not be provided").
- an absolute hydra.sweep.dir: the jobs resolve it in the Ray worker's working directory (the
  head's), multirun.yaml in the driver's.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HANG_S, TINY

pytestmark = pytest.mark.ray


# The lab with the `ray` extra: its own environment (`make setup-ray`: the plugin needs cloudpickle<3),
# or this one where the extra is installed here, or LAB_RAY_PYTHON.
ROOT = Path(__file__).resolve().parent.parent
RAY_PYTHON = os.environ.get("LAB_RAY_PYTHON") or next(
    (str(p) for p in [ROOT / ".venv-ray" / "bin" / "python"] if p.exists()), sys.executable)


def _missing() -> str | None:
    code = ("import importlib.util as u, sys; "
            "sys.exit(0 if u.find_spec('ray') and u.find_spec('hydra_plugins.hydra_ray_launcher') else 3)")
    if subprocess.run([RAY_PYTHON, "-c", code], capture_output=True).returncode:
        return f"ray[default] or hydra-ray-launcher is not installed for {RAY_PYTHON}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM to `ray start --block` (its PID) stops the processes it started; whatever is left of its
    session (workers, agents) goes by its process group, whose id is that PID; then any process
    still naming this head's temp dir, by its PID. Never `ray stop`: that stops every Ray on the machine."""
    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def ray_head():
    """The address (127.0.0.1:PORT) of a Ray head started for this module, stopped after it."""
    if (package := _missing()) is not None:
        pytest.skip(f"{package} (make setup-ray, or pip install -e '.[ray]')")
    # a short temp dir: Ray's unix sockets live under it, and their paths must fit in 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="lab-ray-")
    port, client, dashboard, agent = (_free_port() for _ in range(4))
    log = Path(temp_dir) / "ray-start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [RAY_PYTHON, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", f"--ray-client-server-port={client}",
             f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
             "--include-dashboard=false", "--disable-usage-stats", "--num-cpus=2",
             "--object-store-memory=78643200", f"--temp-dir={temp_dir}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})   # workers inherit JAX_PLATFORMS etc.
    try:
        deadline = time.monotonic() + HANG_S
        while not (Path(temp_dir) / "ray_current_cluster").exists():   # written once the head is up
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_multirun_on_ray(ray_head, tmp_path):
    from lab.analysis.sweep import collect
    sweep = tmp_path / "sweep"
    cmd = [RAY_PYTHON, "-m", "lab", "-m", *TINY, "optim=sgd", "optim.lr=0.1,0.05", "train.seeds=2",
           "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_head}",
           "++hydra.launcher.ray.init.object_store_memory=null", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "(_run_job pid=" in p.stdout + p.stderr                     # the jobs ran in Ray workers
    assert "RayLauncher" in (sweep / "multirun.yaml").read_text()
    rows = collect(sweep)
    assert len(rows) == 4                                              # 2 jobs x 2 seeds
    assert all(r["status"] == "completed" for r in rows), rows
    assert sorted(r["seed"] for r in rows) == [0, 0, 1, 1]
    assert sorted(float(r["optim.lr"]) for r in rows) == [0.05, 0.05, 0.1, 0.1]
    assert [json.loads((sweep / job / "summary.json").read_text())["status"] for job in ("0", "1")] == \
        ["completed", "completed"]
