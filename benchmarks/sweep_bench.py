"""Sweep benchmark (prints figures and writes sweep_bench.png; asserts nothing).

    python benchmarks/sweep_bench.py [--steps 300] [--out benchmarks/out]

1. An 8-job sweep (train.seed=0..7) run by Hydra's basic launcher (one job after another) and by
   the joblib launcher (jobs in parallel processes, each with single-threaded XLA).
2. Per-seed throughput of train.seeds=16 in one job (one compiled program) against 16 separate jobs.
Each job is a new process, as in a real sweep; all share one fresh persistent compile cache, so
jobs after the first skip most of the compile (that is part of what is measured).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job")
args = parser.parse_args()

tmp = Path(tempfile.mkdtemp(prefix="lab-sweep-bench-"))
common = [f"train.steps={args.steps}", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
          "measures.attention_snapshots=false", f"train.compile_cache={tmp / 'cache'}", *args.overrides]


def lab_train(*overrides: str) -> float:
    t = time.perf_counter()
    flags = [o for o in overrides if o.startswith("-")]   # Hydra wants -m before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    p = subprocess.run([sys.executable, "-m", "lab", *flags, *common, *rest], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"lab-train failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


seeds8 = "train.seed=" + ",".join(map(str, range(8)))
lab_train("-m", "train.seed=100", f"hydra.sweep.dir={tmp / 'warm'}")          # fill the compile cache once
results = {
    "8 jobs, basic launcher": lab_train("-m", seeds8, f"hydra.sweep.dir={tmp / 'basic'}"),
    "8 jobs, joblib launcher": lab_train("-m", seeds8, "hydra/launcher=joblib", f"hydra.sweep.dir={tmp / 'joblib'}"),
}
seed_steps = 16 * args.steps
one_job = lab_train("train.seeds=16", f"hydra.run.dir={tmp / 'seeds16'}")
sixteen = lab_train("-m", "train.seed=" + ",".join(map(str, range(16))), f"hydra.sweep.dir={tmp / 'jobs16'}")
throughput = {"train.seeds=16, one job": seed_steps / one_job, "16 separate jobs (basic launcher)": seed_steps / sixteen}

print(f"sweep benchmark, {args.steps} steps per seed, default model (wall times include process start and compile)")
for k, v in results.items():
    print(f"  {k:34s} {v:7.1f} s")
print(f"  joblib speed-up                    {results['8 jobs, basic launcher'] / results['8 jobs, joblib launcher']:7.2f}x")
for k, v in throughput.items():
    print(f"  {k:34s} {v:7.1f} seed-steps/s")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

args.out.mkdir(parents=True, exist_ok=True)
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
a.barh(list(results), list(results.values()), color=["tab:grey", "tab:blue"])
a.set_xlabel("wall time of the sweep (s)")
a.set_title(f"8-job sweep, {args.steps} steps each")
b.barh(list(throughput), list(throughput.values()), color=["tab:green", "tab:grey"])
b.set_xlabel("seed-steps per second")
b.set_title("16 seeds: one program vs 16 jobs")
for ax, vals, fmt in ((a, results.values(), "{:.0f} s"), (b, throughput.values(), "{:.1f}")):
    for i, v in enumerate(vals):
        ax.text(v, i, " " + fmt.format(v), va="center")
    ax.margins(x=0.25)
path = args.out / "sweep_bench.png"
fig.savefig(path, dpi=130)
print(f"figure: {path}")
