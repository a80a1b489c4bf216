import os

# Tests run on CPU, single-threaded XLA (fast for tiny models, and two test processes don't fight).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import pytest  # noqa: E402

# One persistent compile cache for the whole test session: tiny runs that differ only in data
# (seed values, output dirs) compile once, also across the CLI subprocesses.
CACHE = os.environ.setdefault("LAB_TEST_COMPILE_CACHE", tempfile.mkdtemp(prefix="lab-test-cache-"))

# The one timeout of the suite's subprocess waits: a safety net for a hung process, never the thing a test
# measures (a loaded 2-core machine can take minutes for what an idle one does in seconds).
HANG_S = 1800

TINY = ["task.seq_len=24", "task.vocab_size=12", "task.min_repeat_len=3", "task.max_repeat_len=8",
        "task.probe_size=8", "model.d_model=16", "model.n_heads=2", "train=tiny", f"train.compile_cache={CACHE}",
        "train.tensorboard=false"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


def records(run_dir):
    """A run's metrics.jsonl records without their wall-clock "time" (resume tests compare the rest)."""
    import json
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("time")
    return out
