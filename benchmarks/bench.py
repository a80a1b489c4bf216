"""Speed benchmark of the default experiment (prints figures; asserts nothing).

    python benchmarks/bench.py                 # XLA single-threaded (the lab's default on CPU)
    python benchmarks/bench.py --threads multi # XLA's multi-threaded CPU path
    python benchmarks/bench.py --compare-microbatch 2 4 8 16   # steps/s per train.microbatch
    python benchmarks/bench.py --compare model.fused_attention=true model.fused_attention=false

Reports, for the default config with measures on: compile time, steps/s and seed-steps/s for
seeds = 1 and 8, model-FLOP utilisation (FLOPs of one training step -- forward, backward and update,
without measures -- from XLA's compiled cost analysis, times seed-steps/s, over a float32 matmul peak
measured in this process with the same threading), peak memory, the wall time from start to the
detected phase change, and the 1-layer control's verdict.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--threads", choices=["single", "multi"], default="single")
parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
parser.add_argument("--chunks", type=int, default=8, help="timed chunks of train.log_every steps per setting")
parser.add_argument("--no-phase", action="store_true", help="skip the full runs (time to phase change, 1-layer control)")
parser.add_argument("--compare", nargs="+", metavar="OVERRIDE",
                    help="only compare these settings (one override each, seeds=1), timed in alternating rounds "
                         "in one process so that a VM's drifting speed does not favour one of them")
parser.add_argument("--compare-microbatch", type=int, nargs="+", metavar="MB",
                    help="short for --compare train.microbatch=MB ...")
parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
args = parser.parse_args()
if args.threads == "single":   # the XLA flags lab-train sets (one single-threaded device per core)
    from types import SimpleNamespace

    from lab.runtime import configure_xla_threads
    configure_xla_threads(SimpleNamespace(xla_cpu_threads="single"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import lab  # noqa: E402
from lab.train import Trainer  # noqa: E402


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def step_flops(trainer: Trainer) -> float:
    """The step's FLOPs with the whole batch in one pass: XLA's cost analysis counts a loop body once,
    and microbatching changes how a step runs, not how much arithmetic it needs."""
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), jax.eval_shape(trainer.init_state))
    args1 = jax.tree.map(lambda x: x[0], trainer.clamp_args)
    microbatch, trainer.microbatch = trainer.microbatch, trainer.cfg.train.batch_size
    try:
        compiled = jax.jit(lambda s: trainer.train_step(s, args1, {}, 0)).lower(state).compile()
    finally:
        trainer.microbatch = microbatch
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def devices(trainer: Trainer) -> str:
    mesh = trainer.mesh
    return "1 x 1" if mesh is None else f"{mesh.shape['seeds']} x {mesh.shape['batch']}"


def peak_memory() -> str:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if stats and "peak_bytes_in_use" in stats:
        return f"device peak {stats['peak_bytes_in_use'] / 2**20:.0f} MiB, host RSS peak {host:.0f} MiB"
    return f"host RSS peak {host:.0f} MiB"


class TimedTrainer:
    """A trainer's chunk function for one config, compiled by its first call; `steps_per_s` times
    further chunks, each starting at the step where the last one ended."""

    def __init__(self, overrides: list[str]):
        self.cfg = lab.load_config(overrides + ["train.progress=false"])
        self.trainer = Trainer(self.cfg)
        self.state = self.trainer.init_state()
        self.fn = self.trainer.chunk_fn(self.cfg.train.log_every)
        self.chunks_run = 0
        t = time.perf_counter()
        self._run(1)
        self.compile_s = time.perf_counter() - t

    def _run(self, n_chunks: int) -> None:
        for _ in range(n_chunks):
            first_step = jnp.int32(self.chunks_run * self.cfg.train.log_every)
            self.state, out = self.fn(self.state, self.trainer.clamp_args, ({}, first_step))   # (interventions, step)
            self.chunks_run += 1
        jax.block_until_ready(out)

    def steps_per_s(self, n_chunks: int) -> float:
        t = time.perf_counter()
        self._run(n_chunks)
        return n_chunks * self.cfg.train.log_every / (time.perf_counter() - t)


def throughput(overrides: list[str], seeds: int) -> dict:
    timed = TimedTrainer(overrides + [f"train.seeds={seeds}"])
    rate = timed.steps_per_s(args.chunks)
    return {"compile_s": timed.compile_s, "steps_per_s": rate, "seed_steps_per_s": rate * seeds,
            "flops": step_flops(timed.trainer), "trainer": timed.trainer}


def compare(settings: list[str], rounds: int = 8) -> None:
    runs = {setting: TimedTrainer(list(args.overrides) + [setting]) for setting in settings}
    rates = {setting: [] for setting in settings}
    for _ in range(rounds):
        for setting, timed in runs.items():
            rates[setting].append(timed.steps_per_s(max(1, args.chunks // 2)))
    width = max(map(len, runs))
    for setting, timed in runs.items():
        r = sorted(rates[setting])
        print(f"{setting:{width}s}: {r[len(r) // 2]:6.1f} steps/s median, {r[-1]:6.1f} best "
              f"over {rounds} rounds | devices (seeds x batch) {devices(timed.trainer)}")


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"XLA threading: {args.threads}, cores: {os.cpu_count()}")
    settings = (args.compare or []) + [f"train.microbatch={mb}" for mb in args.compare_microbatch or []]
    if settings:
        return compare(settings)
    peak = matmul_peak()
    print(f"float32 matmul peak (1024^2, this process): {peak / 1e9:.1f} GFLOP/s")
    base = None
    for seeds in args.seeds:
        r = throughput(list(args.overrides), seeds)
        base = base or r
        mfu = r["flops"] * r["seed_steps_per_s"] / peak
        print(f"seeds={seeds:<3d} compile+first chunk {r['compile_s']:5.1f} s | {r['steps_per_s']:7.1f} steps/s | "
              f"{r['seed_steps_per_s']:8.1f} seed-steps/s ({r['seed_steps_per_s'] / base['seed_steps_per_s']:.2f}x seeds=1) | "
              f"train step {r['flops'] / 1e9:.3f} GFLOP | MFU {mfu:6.1%} | microbatch {r['trainer'].microbatch} | "
              f"devices (seeds x batch) {devices(r['trainer'])}")
    print(peak_memory())
    if args.no_phase:
        return
    for name, extra in (("default (2-layer)", []), ("1-layer control", ["model=attn_only_1l"])):
        t0 = time.perf_counter()
        res = lab.run(lab.load_config(list(args.overrides) + extra + ["train.progress=false"]))
        wall = time.perf_counter() - t0
        loss = res.summary["phase"]["loss_repeat"]["per_seed"][0]
        m = res.metrics
        line = f"{name}: {res.summary['verdict']}; total wall {wall:.1f} s"
        if loss["detected"]:
            # wall time (since the trainer started, compile included) at the first log step past the midpoint
            i = int(np.searchsorted(m["step"], loss["midpoint"]))
            line += f"; phase-change midpoint step {loss['midpoint']:.0f} reached after {m['time'][i]:.1f} s"
        fin = res.summary["final"]
        line += f"; final max induction score {max(fin['induction_per_head'].values()):.2f}"
        print(line)


if __name__ == "__main__":
    main()
