"""Process-level JAX settings: XLA CPU threading (must be set before JAX's backend starts) and the
persistent compilation cache (so the jobs of a sweep, and reruns, skip most of the compiling)."""
from __future__ import annotations

import logging
import os
import sys

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
