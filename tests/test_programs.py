"""lab-train's program cache (lab/train/programs.py): a second run of a config loads its compiled programs
instead of tracing and compiling them, and records exactly what a run without the cache records; what
the key covers and leaves out; files that must not or cannot be loaded."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import HANG_S, TINY, records
from lab.config.compose import load_config
from lab.train.programs import ProgramCache, fingerprint, signature

BASE = [o for o in TINY if not o.startswith("train.compile_cache")] + ["train.steps=20", "train.progress=false"]
# a clamp whose value is a pass on the probe: tracing the first chunk on its thread needs the probe batch
MEAN = "+clamps.m={site: blocks.0.attn.z, value: mean, heads: [0], start: 5, stop: 15}"


def lab_train(run_dir, cache, *overrides):
    cache_key = f"train.compile_cache={cache}" if cache else "train.compile_cache=null"
    p = subprocess.run([sys.executable, "-m", "lab", *BASE, cache_key, f"hydra.run.dir={run_dir}", *overrides],
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    return (run_dir / "train.log").read_text()


def programs_line(log: str) -> str:
    return next(line for line in log.splitlines() if "programs:" in line)


def test_second_run_loads_programs_and_records_the_same(tmp_path):
    cache = tmp_path / "cache"
    first = lab_train(tmp_path / "a", cache, MEAN)
    assert "none loaded" in programs_line(first) and "chunk10" in programs_line(first)
    second = lab_train(tmp_path / "b", cache, MEAN)
    line = programs_line(second)
    assert "4 loaded" in line and "compiled" not in line, line
    uncached = lab_train(tmp_path / "c", None, MEAN)
    assert "programs:" not in uncached
    assert records(tmp_path / "a") == records(tmp_path / "b") == records(tmp_path / "c")


def test_other_seed_reuses_programs_with_its_own_data(tmp_path):
    """train.seed reaches the programs as PRNG keys: another seed loads the same programs and records what
    an uncached run of that seed records, not what seed 0 recorded."""
    cache = tmp_path / "cache"
    lab_train(tmp_path / "s0", cache)
    log = lab_train(tmp_path / "s1", cache, "train.seed=1")
    assert "compiled" not in programs_line(log)
    lab_train(tmp_path / "u1", None, "train.seed=1")
    assert records(tmp_path / "s1") == records(tmp_path / "u1") != records(tmp_path / "s0")


def test_unreadable_or_shared_files_are_not_loaded(tmp_path):
    cache = tmp_path / "cache"
    lab_train(tmp_path / "a", cache)
    files = sorted((cache / "programs").glob("*.jaxexe"))
    assert len(files) == 4
    chunk = next(f for f in files if f.name.startswith("chunk"))
    chunk.write_bytes(b"truncated")
    init = next(f for f in files if f.name.startswith("init"))
    os.chmod(init, 0o666)   # writable by others: whoever can write it could run code here
    log = lab_train(tmp_path / "b", cache)
    loaded, *made = programs_line(log).split(";")   # the two others compiled again (or reloaded by JAX's cache)
    assert "2 loaded" in loaded and "chunk10" not in loaded and "init" not in loaded
    assert "chunk10" in made[0] and "init" in made[0]
    assert "is not private to this user" in log
    assert records(tmp_path / "a") == records(tmp_path / "b")


def test_key_covers_what_programs_are_made_of():
    base = fingerprint(load_config(BASE))
    for host_only in ("train.seed=3", "train.progress=true", "train.checkpoint_every=5", "train.resume=true"):
        assert fingerprint(load_config(BASE + [host_only])) == base, host_only
    for program in ("model.d_model=32", "optim.lr=0.01", "train.steps=30", "task.probe_seed=1", "train.seeds=2"):
        assert fingerprint(load_config(BASE + [program])) != base, program


def test_no_cache_without_compile_cache_or_with_a_source_run(tmp_path):
    assert ProgramCache.for_config(load_config(BASE + ["train.compile_cache=null"])) is None
    graft = f"+clamps.g={{site: blocks.0.resid_post, value: graft, source: '{tmp_path}'}}"
    assert ProgramCache.for_config(load_config(BASE + [f"train.compile_cache={tmp_path}", graft])) is None
    assert ProgramCache.for_config(load_config(BASE + [f"train.compile_cache={tmp_path}"])) is not None


def test_signature_of_shapes_matches_the_arrays_they_describe():
    x = jnp.ones((2, 3))
    step = jnp.int32(4)
    shapes = (jax.ShapeDtypeStruct((2, 3), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32))
    assert signature((x, step)) == signature(shapes)
    assert signature((x, step)) != signature((jnp.ones((2, 4)), step))
    assert signature((x, step)) != signature((x, jnp.float32(4)))
    mesh = Mesh(np.array(jax.devices()[:1]), ("seeds",))
    placed = jax.device_put(x, NamedSharding(mesh, P("seeds")))
    described = jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=NamedSharding(mesh, P("seeds")))
    assert signature((placed,)) == signature((described,)) != signature((x,))


@pytest.mark.parametrize("bad", [b"", b"not a pickle"])
def test_a_bad_file_is_removed_and_compiled_again(tmp_path, bad):
    cache = ProgramCache(tmp_path, "key")
    fn = cache.compiled("double", jax.jit(lambda a: 2 * a))
    args = (jnp.arange(3.0),)
    path = cache.path("double", signature(args))
    path.write_bytes(bad)
    os.chmod(path, 0o600)
    np.testing.assert_array_equal(fn(*args), [0.0, 2.0, 4.0])
    assert cache.compiled_now == ["double"] and cache.loaded == []


def test_programs_reloaded_by_jax_cache_are_not_saved(tmp_path):
    """An executable JAX's own cache reloaded serialises without part of its code (jax 0.10.2): such programs
    are run but not saved, and the run that meets them records what the others do. This also guards the
    name of the JAX event counted (programs.JAX_CACHE_HIT): renamed, the line below would not appear."""
    import shutil
    cache = tmp_path / "cache"
    lab_train(tmp_path / "a", cache)
    shutil.rmtree(cache / "programs")
    log = lab_train(tmp_path / "b", cache)
    line = programs_line(log)
    assert "from JAX's cache, not saved" in line and "chunk10" in line, line
    assert not list((cache / "programs").glob("chunk*.jaxexe"))
    assert records(tmp_path / "a") == records(tmp_path / "b")
