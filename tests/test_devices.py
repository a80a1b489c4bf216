"""Spreading seeds and microbatches over several devices changes nothing but the speed. The tests
run on one CPU device (conftest.py), so the several-device side runs in a subprocess with two."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

import lab
from conftest import HANG_S

SCRIPT = """
import json, sys, numpy as np, lab
KEYS = ("train_loss", "induction", "loss_by_pos")
out = {}
for name, extra in json.loads(sys.argv[1]).items():
    res = lab.run(lab.load_config(extra))
    mesh = res.trainer.mesh
    out[name] = {"mesh": None if mesh is None else dict(mesh.shape),
                 **{k: np.asarray(v).tolist() for k, v in res.metrics.items() if k in KEYS or "_clamped_" in k},
                 "W_E": [np.asarray(res.seed_params(i)["W_E"]).tolist() for i in range(len(res.trainer.seeds))]}
print("RESULT" + json.dumps(out))
"""


def test_two_devices_give_the_one_device_results(tiny_overrides):
    runs = {"seeds": tiny_overrides + ["train.seeds=2", "train.seed=3"],
            "microbatches": tiny_overrides + ["train.batch_size=8", "train.microbatch=4"],
            # the probe's forward passes are split over the devices: a clamp on probe item 5 (second
            # device's share) and a resampling clamp (which needs the whole probe) see the same probe
            "clamped measures": tiny_overrides + [
                "train.batch_size=8", "train.microbatch=4",
                "+clamps.z={site: blocks.0.resid_post, value: zero, apply: measure, batch: [5]}",
                "+clamps.r={site: blocks.0.resid_post, value: resample, apply: measure}"]}
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(runs)], env=env, capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.split("RESULT")[-1])
    assert two["seeds"]["mesh"] == {"seeds": 2, "batch": 1}
    assert two["microbatches"]["mesh"] == two["clamped measures"]["mesh"] == {"seeds": 1, "batch": 2}
    assert {"loss_repeat_clamped_z", "loss_repeat_clamped_r"} <= set(two["clamped measures"])
    assert len(jax.devices()) == 1
    for name, overrides in runs.items():
        one = lab.run(lab.load_config(overrides))
        assert one.trainer.mesh is None
        for key in set(two[name]) - {"mesh", "W_E"}:
            np.testing.assert_allclose(two[name][key], np.asarray(one.metrics[key]), rtol=2e-5, atol=1e-6, err_msg=key)
        for i in range(len(one.trainer.seeds)):
            np.testing.assert_allclose(two[name]["W_E"][i], one.seed_params(i)["W_E"], rtol=2e-5, atol=1e-6)
    seed_losses = np.asarray(two["seeds"]["train_loss"])
    assert not np.allclose(seed_losses[:, 0], seed_losses[:, 1])   # two different seeds, not one twice


def test_lab_train_makes_one_xla_device_per_core(tmp_path, tiny_overrides):
    """lab-train sets XLA's flags from train.xla_cpu_threads after composing the config, which imports
    JAX: the flags must still reach XLA (it reads them when its backend starts, not at import)."""
    from lab.train.runtime import usable_cores
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # conftest's single-device flags
    p = subprocess.run([sys.executable, "-m", "lab", *tiny_overrides, "train.steps=10", "train.seeds=2",
                        f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{usable_cores()} XLA cpu device(s)" in (tmp_path / "train.log").read_text()


DRAWS = """
import json, sys, jax, jax.numpy as jnp
from lab.train.runtime import fast_compiling_threefry
applied = fast_compiling_threefry() if sys.argv[1] == "fast" else None
def draws(key):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 7), 3)
    return {"bits": jax.random.bits(k1, (257,)), "normal": jax.random.normal(k2, (3, 5)),
            "randint": jax.random.randint(k3, (64,), 0, 65), "vmapped": jax.vmap(lambda k: jax.random.uniform(k, (4,)))(
                jax.random.split(key, 6))}
out = jax.jit(draws)(jax.random.PRNGKey(11))
print(json.dumps({"applied": applied, **{k: jnp.ravel(v).tolist() for k, v in out.items()}}))
"""


def test_fast_compiling_threefry_draws_the_same_bits():
    """lab.train.runtime.fast_compiling_threefry changes how XLA compiles threefry on CPU, never the
    numbers: jitted draws (split, fold_in, bits, normal, randint, vmapped) equal a process without it."""
    runs = {}
    for mode in ("fast", "default"):
        p = subprocess.run([sys.executable, "-c", DRAWS, mode], capture_output=True, text=True, timeout=HANG_S)
        assert p.returncode == 0, p.stderr[-2000:]
        runs[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    assert runs["fast"].pop("applied") is True        # the lowering was replaced
    assert runs["default"].pop("applied") is None
    assert runs["fast"] == runs["default"]
