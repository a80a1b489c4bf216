"""Process-level JAX settings: XLA CPU threading (must be set before JAX starts) and the persistent
compilation cache (so the jobs of a sweep, and reruns, skip most of the compiling)."""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def configure_xla_threads(train_cfg) -> None:
    """Tiny models run faster on one XLA CPU thread; then parallel jobs use the other cores."""
    flags = os.environ.get("XLA_FLAGS", "")
    if train_cfg.xla_cpu_threads != "single" or "xla_cpu_multi_thread_eigen" in flags:
        return
    if "jax" in sys.modules:
        log.debug("JAX already imported; XLA CPU threading can no longer be changed in this process")
        return
    os.environ["XLA_FLAGS"] = f"{SINGLE_THREAD_FLAGS} {flags}".strip()


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
