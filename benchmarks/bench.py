"""Speed benchmark of the default experiment (prints figures; asserts nothing).

    python benchmarks/bench.py                 # XLA single-threaded (the lab's default on CPU)
    python benchmarks/bench.py --threads multi # XLA's multi-threaded CPU path
    python benchmarks/bench.py --compare-microbatch 2 4 8 16   # steps/s per train.microbatch
    python benchmarks/bench.py --compare model.fused_attention=true model.fused_attention=false

Reports, for the default config with measures on: compile time, steps/s and seed-steps/s for
seeds = 1 and 8, model-FLOP utilisation (FLOPs of one training step -- forward, backward and update,
without measures -- from XLA's compiled cost analysis, times seed-steps/s, over a float32 matmul peak
measured in this process with the same threading), peak memory, the wall time from start to the
detected phase change, the 1-layer control's verdict, and the cost of the post-run analysis
(summary.json: sigmoid fits, change-point stages, statistics). The seeds values and the matmul peak are
timed in alternating rounds (MFU per round, then the median), because a VM's speed drifts.
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
parser.add_argument("--chunks", type=int, default=8, help="timed chunks of train.log_every steps per seeds value, spread over the rounds "
                         "(--compare times chunks/2 in each of its 8 rounds)")
parser.add_argument("--no-phase", action="store_true", help="skip the full runs (time to phase change, 1-layer control, LLC cost)")
parser.add_argument("--compare", nargs="+", metavar="OVERRIDE",
                    help="only compare these settings (one override each, seeds=1), timed in alternating rounds "
                         "in one process so that a VM's drifting speed does not favour one of them")
parser.add_argument("--compare-microbatch", type=int, nargs="+", metavar="MB",
                    help="short for --compare train.microbatch=MB ...")
parser.add_argument("--no-llc", action="store_true", help="skip the LLC cost (default run with and without measures.llc.every=75)")
parser.add_argument("--devinterp", metavar="PYTHON", default="/tmp/divenv/bin/python",
                    help="a Python with torch and devinterp, for the LLC comparison (benchmarks/llc_devinterp.py; "
                         "default /tmp/divenv/bin/python, skipped with a note where it does not exist)")
parser.add_argument("--launch-only", action="store_true", help="only time whole lab-train processes (cold, warm)")
parser.add_argument("--no-launch", action="store_true", help="skip timing whole lab-train processes (launch to first chunk, "
                                                          "after training; cold and warm compile cache)")
parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
args = parser.parse_args()
if args.threads == "single":   # the XLA flags lab-train sets (one single-threaded device per core)
    from types import SimpleNamespace

    from lab.train.runtime import configure_xla_threads
    configure_xla_threads(SimpleNamespace(xla_cpu_threads="single"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import lab  # noqa: E402
from lab.train.trainer import Trainer  # noqa: E402


_square = jax.jit(lambda x: x @ x)   # one compile for every round's peak


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    _square(a).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        _square(a).block_until_ready()
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
            if self.cfg.measures.enabled:   # a program of their own after every chunk, as the trainer runs them
                out = self.trainer.measure_fn()(self.state["params"], self.trainer.clamp_args,
                                                first_step + self.cfg.train.log_every)
            self.chunks_run += 1
        jax.block_until_ready(out)

    def steps_per_s(self, n_chunks: int) -> float:
        t = time.perf_counter()
        self._run(n_chunks)
        return n_chunks * self.cfg.train.log_every / (time.perf_counter() - t)


def alternating_rounds(runs: dict, rounds: int, chunks_per_round: int, peak_too: bool = False) -> dict:
    """Each setting's steps/s in every round (and, with peak_too, the matmul peak timed in the same
    round): settings take turns, so a VM whose speed drifts between minutes favours none of them."""
    rates = {key: [] for key in runs}
    peaks = []
    for _ in range(rounds):
        if peak_too:
            peaks.append(matmul_peak())
        for key, timed in runs.items():
            rates[key].append(timed.steps_per_s(chunks_per_round))
    return {"rates": rates, "peaks": peaks}


def median(xs) -> float:
    return float(np.median(xs))


def compare(settings: list[str], rounds: int = 8) -> None:
    runs = {setting: TimedTrainer(list(args.overrides) + [setting]) for setting in settings}
    rates = alternating_rounds(runs, rounds, max(1, args.chunks // 2))["rates"]
    width = max(map(len, runs))
    for setting, timed in runs.items():
        print(f"{setting:{width}s}: {median(rates[setting]):6.1f} steps/s median, {max(rates[setting]):6.1f} best "
              f"over {rounds} rounds | devices (seeds x batch) {devices(timed.trainer)}")


def throughputs(seeds_list: list[int], rounds: int = 4) -> None:
    """Seed-steps/s and MFU per seeds value; each round times the matmul peak and then every seeds
    value, and MFU is taken per round (this round's rate over this round's peak)."""
    runs = {seeds: TimedTrainer(list(args.overrides) + [f"train.seeds={seeds}"]) for seeds in seeds_list}
    flops = {seeds: step_flops(timed.trainer) for seeds, timed in runs.items()}
    chunks_per_round = max(1, args.chunks // rounds)
    res = alternating_rounds(runs, rounds, chunks_per_round, peak_too=True)
    peaks = res["peaks"]
    print(f"float32 matmul peak (1024^2, this process, each round): {median(peaks) / 1e9:.1f} GFLOP/s median "
          f"({min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f})")
    base = seeds_list[0]
    for seeds, timed in runs.items():
        rate = np.array(res["rates"][seeds])
        mfu = flops[seeds] * rate * seeds / np.array(peaks)
        ratio = rate * seeds / np.array(res["rates"][base]) / base
        print(f"seeds={seeds:<3d} compile+first chunk {timed.compile_s:5.1f} s | {median(rate):7.1f} steps/s | "
              f"{median(rate) * seeds:8.1f} seed-steps/s ({median(ratio):.2f}x seeds={base}) | "
              f"train step {flops[seeds] / 1e9:.3f} GFLOP | MFU {median(mfu):6.1%} (best round {max(mfu):.1%}) | "
              f"microbatch {timed.trainer.microbatch} | devices (seeds x batch) {devices(timed.trainer)}")
    print(f"(medians over {rounds} alternating rounds of {chunks_per_round} chunks each)")


def analysis_seconds(res, repeats: int = 3) -> float:
    """Median wall time of recomputing a finished run's summary.json from its metrics."""
    from lab.analysis.summary import summarize
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        summarize(res.metrics, res.cfg, res.trainer.task, res.summary["seeds"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def llc_cost(every: int = 75) -> None:
    """Wall time of the default run without and with the online LLC (measures.llc.every), the
    seconds per estimate that adds, and the cost of the stage report."""
    from lab.analysis.development import stage_report
    walls, results = {}, {}
    for name, extra in (("without", []), ("with", [f"measures.llc.every={every}"]), ("without ", []),
                        ("with ", [f"measures.llc.every={every}"])):
        t0 = time.perf_counter()
        results[name.strip()] = lab.run(lab.load_config(list(args.overrides) + extra + ["train.progress=false"]))
        walls.setdefault(name.strip(), []).append(time.perf_counter() - t0)
    base, with_llc = min(walls["without"]), min(walls["with"])
    res = results["with"]
    n = int(np.isfinite(res.metrics["llc"][:, 0]).sum())
    s = res.trainer.llc
    print(f"online LLC every {every} steps ({n} estimates; {s.chains} chains x ({s.burn_in} + {s.draws}) SGLD steps "
          f"of {s.batch_size} sequences, paired baseline): run wall {base:.1f} s without, {with_llc:.1f} s with "
          f"(best of 2): ratio {with_llc / base:.2f} (target <= 2); {(with_llc - base) / n:.2f} s per estimate")
    llc = {"steps": res.metrics["step"][np.isfinite(res.metrics["llc"][:, 0])],
           "llc": res.metrics["llc"][np.isfinite(res.metrics["llc"][:, 0])], "source": "online", "nbeta": s.nbeta_value,
           "burn_in": s.burn_in}
    t0 = time.perf_counter()
    stage_report(res.summary, llc, None)
    print(f"  stage report (loss change points, LLC critical points, head onsets): {time.perf_counter() - t0:.3f} s")


def launch_timings() -> None:
    """Whole `lab-train` processes of the default run, timed from outside: launch to the first
    training chunk's record in metrics.jsonl (log_every steps, so it includes that chunk's training),
    the training in between, and the time from the last step's record to the process's exit (summary,
    fits, plots, final checkpoint, shutdown); first with an empty compile cache (cold), then again
    with the cache the first run filled (warm). metrics.jsonl is polled every 10 ms (benchmarks/launch.py)."""
    import tempfile

    from launch import time_lab_process
    cache = tempfile.mkdtemp(prefix="lab-bench-cache-")
    for label in ("cold", "warm"):
        run_dir = tempfile.mkdtemp(prefix=f"lab-bench-{label}-")
        cmd = [sys.executable, "-m", "lab", *args.overrides, f"train.compile_cache={cache}", "train.progress=false",
               f"hydra.run.dir={run_dir}"]
        timing = time_lab_process(cmd, run_dir)
        if not timing.ok:
            print(f"launch timing ({label} cache): the run failed: {timing.error()}")
            return
        first, last, total = timing.first, timing.last, timing.total
        print(f"whole lab-train process ({label} compile cache): launch -> first training step "
              f"{timing.to_first_step:.1f} s (issue 28's bar: 5 s cold, 2 s warm) | first chunk logged {first:.1f} s | "
              f"training to the last step {last - first:.1f} s | last step -> exit (summary, plots, checkpoint) "
              f"{total - last:.1f} s = {100 * (total - last) / max(last - first, 1e-9):.0f} % of the training "
              f"(issue 26's bar: 10 %) | total {total:.1f} s")
    print("  (first training step: the first chunk's record less that chunk's training at the run's rate)")


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"XLA threading: {args.threads}, cores: {os.cpu_count()}")
    settings = (args.compare or []) + [f"train.microbatch={mb}" for mb in args.compare_microbatch or []]
    if settings:
        return compare(settings)
    if args.launch_only:
        return launch_timings()
    throughputs(args.seeds)
    print(peak_memory())
    if args.no_phase:
        return
    if not args.no_launch:
        launch_timings()
    if not args.no_llc:
        llc_cost()
    if args.no_llc:
        pass
    elif os.path.exists(args.devinterp):
        import subprocess
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "llc_devinterp.py"),
                        "--peer-python", args.devinterp], check=False)
    else:
        print(f"LLC vs devinterp: skipped ({args.devinterp} does not exist; benchmarks/llc_devinterp.py says how "
              "to create that environment)")
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
        print(f"  post-run analysis (summary.json: sigmoid fits, change-point stages, statistics): "
              f"{analysis_seconds(res):.2f} s for {len(m['step'])} log steps")


if __name__ == "__main__":
    main()
