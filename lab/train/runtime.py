"""Process-level JAX settings: XLA CPU threading and GPU placement (both must be set before JAX's
backend starts) and the persistent compilation cache (so the jobs of a sweep, and reruns, skip most
of the compiling)."""
from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def usable_cores() -> int:
    """Cores this process may run on (a SLURM job's share, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS
        return os.cpu_count() or 1


def single_thread_flags() -> str:
    """XLA CPU flags for tiny models: single-threaded Eigen, and one XLA CPU device per core, over
    which the trainer spreads a run's seeds and microbatches (lab/train/trainer.py: `Trainer.device_mesh`)."""
    return f"{SINGLE_THREAD_FLAGS} --xla_force_host_platform_device_count={usable_cores()}"


def configure_xla_threads(train_cfg) -> None:
    """Tiny models run faster on one XLA CPU thread; then parallel jobs, or a run's seeds spread
    over one device per core, use the other cores."""
    flags = os.environ.get("XLA_FLAGS", "")
    if train_cfg.xla_cpu_threads != "single" or "xla_cpu_multi_thread_eigen" in flags:
        return
    if _backend_started():
        log.warning("JAX's backend has already started; XLA CPU threading can no longer be changed in this "
                    "process (set XLA_FLAGS before starting Python, see lab.train.runtime.single_thread_flags)")
        return
    ours = SINGLE_THREAD_FLAGS if "xla_force_host_platform_device_count" in flags else single_thread_flags()
    os.environ["XLA_FLAGS"] = f"{ours} {flags}".strip()


def _backend_started() -> bool:
    """Whether JAX's backend exists: XLA reads XLA_FLAGS when it creates it, not when jax is imported
    (the config and task modules import jax before the config is known)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge   # no public API tells; checked by tests/test_devices.py
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return True


# ----------------------------------------------------------------------------- GPU placement

def node_gpus() -> int:
    """NVIDIA GPUs on this node, counted without starting CUDA (the driver's /proc entries, one per GPU)."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


GPU_LOCK_DIR = Path(os.environ.get("LAB_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "induction-lab-gpus"))
_claims: list = []   # open lock files: a claim lasts as long as the process (the OS drops it when it dies)


def claim_gpus(n_gpus: int, want: int, start: int = 0, lock_dir: Path = GPU_LOCK_DIR) -> tuple[list[int], bool]:
    """Claim `want` of the node's `n_gpus` GPUs for this process with one advisory lock file per GPU,
    trying them from `start` on (a job's number, so that jobs spread evenly). Returns (the GPUs,
    shared): where fewer are free, the free ones are taken and the rest shared with other jobs."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    got = []
    for i in [(start + k) % n_gpus for k in range(n_gpus)]:
        if len(got) == want:
            break
        f = open(lock_dir / f"gpu-{i}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _claims.append(f)
        got.append(i)
    shared = len(got) < want
    for i in [(start + k) % n_gpus for k in range(n_gpus)]:
        if len(got) == want:
            break
        if i not in got:
            got.append(i)
    return sorted(got), shared


def release_gpus() -> None:
    while _claims:
        _claims.pop().close()


def place_on_gpus(train_cfg, job_num: int | None, env=os.environ, n_gpus: int | None = None,
                  lock_dir: Path = GPU_LOCK_DIR) -> list[int] | None:
    """Which GPUs this process uses, set through CUDA_VISIBLE_DEVICES before JAX starts. GPUs already
    chosen for it (CUDA_VISIBLE_DEVICES set by SLURM's allocation, or by the user) are kept. Otherwise,
    on a node with several GPUs, the jobs of a multirun (`job_num` given) claim `train.gpus_per_job`
    each (default 1) and a single run claims that many if set, else uses them all. Returns the GPUs
    chosen here, or None when nothing was changed."""
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    n = node_gpus() if n_gpus is None else n_gpus
    want = train_cfg.gpus_per_job or (1 if job_num is not None else None)
    if n < 2 or want is None or not 1 <= want < n:   # (want < 1 is refused by the config check)
        return None
    if _backend_started():
        log.warning("JAX's backend has already started; this process keeps seeing all %d GPUs", n)
        return None
    gpus, shared = claim_gpus(n, want, start=(job_num or 0) * want, lock_dir=lock_dir)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    if shared:   # jobs share a GPU: one job must not preallocate most of its memory
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        log.warning("fewer than %d of the %d GPUs are free of other lab jobs; sharing GPU(s) %s", want, n, env["CUDA_VISIBLE_DEVICES"])
    log.info("GPU(s) %s of %d for this job", env["CUDA_VISIBLE_DEVICES"], n)
    return gpus


def fast_compiling_threefry() -> bool:
    """On CPU, lower JAX's threefry (every random draw: parameter init, each step's batch, the probe) as
    the straight-line function other platforms get, instead of JAX's CPU default, a 5-round loop per
    draw site. The bits are the same (threefry is fixed arithmetic; tests/test_devices.py compares them
    with a process that does not call this); XLA compiles a straight line in about half the time of
    many small loops (the default run's cold start, launch to first chunk: 17-19 s -> 14-15 s on 2 cores,
    issue 28). Uses JAX internals (pinned in pyproject.toml): where they moved, nothing changes and
    False is returned."""
    global _threefry_done
    if _threefry_done is None:
        try:
            from jax._src.interpreters import mlir
            from jax._src.random import threefry2x32 as tf
            mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu", inline=False)
            _threefry_done = True
        except (ImportError, AttributeError) as e:
            log.debug("JAX's CPU threefry lowering kept (%s)", e)
            _threefry_done = False
    return _threefry_done


_threefry_done = None


_cache_dir = None


def configure_compile_cache(train_cfg) -> None:
    global _cache_dir
    if not train_cfg.compile_cache:
        return
    import jax
    path = os.path.expanduser(train_cfg.compile_cache)
    if path == _cache_dir:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:   # a read-only home must not stop training
        log.warning("persistent compile cache disabled: cannot create %s (%s)", path, e)
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    _cache_dir = path


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of n that is at most limit (1 if limit < 1)."""
    return max(d for d in range(1, max(limit, 1) + 1) if n % d == 0)


def cache_sized_microbatch(batch_size: int, task, model) -> int:
    """On CPU, the largest divisor of the batch whose attention arrays (sequences x heads x T^2
    floats) fit in 256 KiB (why: `lab.train.trainer.auto_microbatch`); elsewhere the whole batch."""
    import jax   # as configure_compile_cache: this module is read before XLA's flags are set
    if jax.default_backend() != "cpu":
        return batch_size
    return largest_divisor(batch_size, 2 ** 18 // (model.n_heads * task.seq_len ** 2 * 4))


def batch_axis_mode(setting: str = "auto") -> str:
    """How a program runs independent copies of one computation (seeds, LLC chains): "vmap" batches
    their matmuls (best on accelerators), "map" loops over them inside the program (best on CPU,
    where batched small matmuls run slower); "auto" picks by backend."""
    if setting != "auto":
        return setting
    import jax   # as configure_compile_cache: this module is read before XLA's flags are set
    return "map" if jax.default_backend() == "cpu" else "vmap"
