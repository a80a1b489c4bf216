"""The lab against TransformerLens 3.9, whole processes (launch to exit), side by side on this machine
(`make bench-peers`, issue 28). Prints a table and the ratios; asserts nothing.

    .venv/bin/python benchmarks/peers.py [--steps 1500] [--rounds 3] [--seeds-compare 5] [--threads 2]
                                         [--peer-python .venv-peers/bin/python]

TransformerLens is a benchmark peer, never a dependency of the lab: it runs in its own environment
(`make setup-peers`: torch 2.13 CPU, transformer_lens 3.9.0) through benchmarks/peer_transformer_lens.py.
This script needs only the standard library and numpy.

The same model and training on both sides. The lab runs as
    python -m lab model.layer_norm=false model.n_heads=2 train.progress=false train.steps=N ...
and its defaults (configs/config.yaml: model/attn_only_2l, task/induction, optim/adam, train/default)
give the rest of TransformerLens's config: 2 layers, attention only, d_model 64, d_head = 64 / 2 = 32,
learned positions, scores scaled by 1/sqrt(d_head), no LayerNorm (that override; TransformerLens's
normalization_type=None), vocabulary 64 + BOS = 65; Adam at 1e-3, batches of 64 sequences x 64 tokens
of the token-induction task (BOS, then uniform random tokens with a segment of length n ~ U{4..24} at a
start s ~ U{1..T-2n} tiled to the end, drawn per sequence), next-token cross-entropy at every position.
What differs: the initialisations (the lab: N(0, 0.02); TransformerLens's own), TransformerLens's
attention and unembedding biases (the lab has none; 3.9 has no switch for them), and the lab's
measures, which stay on as by default (row "measures off": `measures.enabled=false`). The lab logs
every 25 steps; so does the peer (its mean loss, a .item() sync).

Timed from outside, per process: launch -> first 25-step chunk (the lab: the first record with
step > 0 in <run dir>/metrics.jsonl, polled every 10 ms by benchmarks/launch.py, as `make bench`
does; TransformerLens: its printed `first_chunk`, in seconds since the launch this script passed it),
training steps/s between that chunk and the last step, last step -> exit (the lab: summary, fits,
plots, final checkpoint; TransformerLens: interpreter shutdown), and the whole process. Each round runs
the lab (measures on), the lab (measures off) and TransformerLens one after another, because a VM's
speed drifts; medians over the rounds with min-max, and the ratios taken per round.

The lab's persistent compile cache is a fresh temporary directory, warmed by one untimed run of each
lab command before the rounds (a researcher's second run of a config); those cold runs' launch ->
first chunk is printed too. Then the seeds comparison: the lab with train.seeds=N in one process
(its cache warmed the same way) against TransformerLens run N times one after another (seeds
0..N-1), total wall times, once.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from launch import time_lab_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "peer_transformer_lens.py"
LOG_EVERY = 25   # the lab's train.log_every; the peer logs as often
LAB_ON, LAB_OFF, TL = "lab (measures on)", "lab (measures off)", "TransformerLens"
ISSUE_BAR = {"whole": 1.5, "seeds": 3.0}   # issue 28: TransformerLens / lab, whole process


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="training steps of every run (default 1500)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--peer-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                   help="the Python of the peers' environment (`make setup-peers`; default .venv-peers/bin/python)")
    p.add_argument("--seeds-compare", type=int, default=5, metavar="N",
                   help="the lab with train.seeds=N in one process against N TransformerLens runs (default 5; 0 skips)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for TransformerLens (default 2)")
    args = p.parse_args(argv)
    if args.steps <= LOG_EVERY:
        p.error(f"--steps must exceed {LOG_EVERY} (one logged chunk) to time the training after the first chunk")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


class Failed(Exception):
    pass


def lab_command(steps: int, run_dir: str, cache: str, extra=()) -> list[str]:
    return [sys.executable, "-m", "lab", "model.layer_norm=false", "model.n_heads=2", "train.progress=false",
            f"train.steps={steps}", f"hydra.run.dir={run_dir}", f"train.compile_cache={cache}", *extra]


def run_lab(name: str, steps: int, scratch: str, cache: str, extra=()) -> dict:
    """One whole lab process; its run directory is deleted afterwards."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=scratch)
    try:
        t = time_lab_process(lab_command(steps, run_dir, cache, extra), run_dir, steps, cwd=str(ROOT))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if not t.ok:
        raise Failed(f"{name}: {t.error()}")
    loss = (t.last_record or {}).get("train_loss")
    return {"first": t.first, "rate": (steps - LOG_EVERY) / (t.last - t.first), "after": t.total - t.last,
            "whole": t.total, "loss": float(np.mean(loss)) if loss is not None else float("nan")}


def run_peer(peer_python: str, steps: int, seed: int, threads: int) -> dict:
    """One whole TransformerLens process; its own marks give the first chunk and the last step."""
    t0_wall, t0 = time.time(), time.perf_counter()
    p = subprocess.run([peer_python, str(PEER_SCRIPT), "--t0", repr(t0_wall), "--steps", str(steps),
                        "--seed", str(seed), "--threads", str(threads)], capture_output=True, text=True)
    whole = time.perf_counter() - t0
    marks, loss = {}, float("nan")
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            marks[parts[0]] = float(parts[1])
        elif len(parts) == 3 and parts[0] == "loss":
            loss = float(parts[2])
    if p.returncode or "first_chunk" not in marks or "last_step" not in marks:
        raise Failed(f"{TL} (seed {seed}): exit code {p.returncode}: {p.stderr[-300:].strip()}")
    first, last = marks["first_chunk"], marks["last_step"]
    return {"first": first, "rate": (steps - LOG_EVERY) / (last - first), "after": whole - last, "whole": whole,
            "loss": loss, "imports": marks.get("imports_done", float("nan"))}


def spread(xs, fmt: str, unit: str = "") -> str:
    """Median, and min-max where there are several values."""
    xs = np.asarray(xs, float)
    s = f"{np.median(xs):{fmt}}{unit}"
    return s if len(xs) == 1 else f"{s} ({xs.min():{fmt}}-{xs.max():{fmt}})"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.exists(args.peer_python):
        print(f"{args.peer_python} does not exist: create the peers' environment (TransformerLens 3.9 on CPU torch) "
              f"with `make setup-peers`, or pass --peer-python PYTHON", file=sys.stderr)
        return 2
    steps, rounds = args.steps, args.rounds
    load = os.getloadavg()[0]
    print(f"lab vs TransformerLens 3.9, whole processes (launch -> exit), {steps} steps; {rounds} round"
          f"{'s' if rounds > 1 else ''} of {LAB_ON}, {LAB_OFF}, {TL} in turn")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at the start"
          f"{' (not idle: the figures compare only on an idle machine)' if load > 0.5 else ''}; "
          f"{TL} on {args.threads} torch thread{'s' if args.threads > 1 else ''}")
    print("the lab's compile cache: a fresh directory, warmed by one untimed run of each lab command:")
    scratch = tempfile.mkdtemp(prefix="lab-peers-")
    cache = os.path.join(scratch, "compile-cache")
    configs = {LAB_ON: [], LAB_OFF: ["measures.enabled=false"]}
    results = {LAB_ON: [], LAB_OFF: [], TL: []}
    try:
        for name, extra in configs.items():
            cold = run_lab(name, steps, scratch, cache, extra)
            print(f"  {name}, cold: launch -> first chunk {cold['first']:.1f} s, whole process {cold['whole']:.1f} s")
        for r in range(rounds):
            for name, extra in configs.items():
                results[name].append(run_lab(name, steps, scratch, cache, extra))
            results[TL].append(run_peer(args.peer_python, steps, 0, args.threads))
            print(f"  round {r + 1}/{rounds}: whole process " + ", ".join(
                f"{name} {res[-1]['whole']:.1f} s" for name, res in results.items()))
        print_table(results, steps, rounds)
        if args.seeds_compare > 0:
            seeds_compare(args, scratch, cache)
    except Failed as e:
        print(f"a run failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def print_table(results: dict, steps: int, rounds: int) -> None:
    print()
    print(f"| {steps} steps | launch -> first chunk | training steps/s | last step -> exit | whole process "
          f"| loss, last chunk |")
    print("|---|---|---|---|---|---|")
    for name, res in results.items():
        col = {k: [x[k] for x in res] for k in res[0]}
        print(f"| {name} | {spread(col['first'], '.1f', ' s')} | {spread(col['rate'], '.1f')} "
              f"| {spread(col['after'], '.1f', ' s')} | {spread(col['whole'], '.1f', ' s')} "
              f"| {spread(col['loss'], '.3f')} |")
    imports = [x["imports"] for x in results[TL]]
    over = "one round" if rounds == 1 else f"medians over {rounds} rounds, min-max in brackets"
    print(f"({over}; {TL}'s launch -> first chunk includes {spread(imports, '.1f', ' s')} of interpreter start "
          "and imports)")

    def ratio(key: str, lab: str, tl_over_lab: bool = True) -> str:
        r = [(t[key] / x[key]) if tl_over_lab else (x[key] / t[key]) for t, x in zip(results[TL], results[lab])]
        return spread(r, '.2f', 'x')

    print()
    print(f"{'ratios' if rounds == 1 else 'ratios per round, then median'} (> 1: the lab is faster)".ljust(59)
          + "measures on      measures off")
    for label, key, tl_over_lab in (("whole process, TransformerLens / lab", "whole", True),
                                    ("launch -> first chunk, TransformerLens / lab", "first", True),
                                    ("training steps/s, lab / TransformerLens", "rate", False),
                                    ("last step -> exit, TransformerLens / lab", "after", True)):
        line = f"  {label:57s} {ratio(key, LAB_ON, tl_over_lab):16s} {ratio(key, LAB_OFF, tl_over_lab)}"
        if key == "whole":
            line += f"   (issue 28's bar: {ISSUE_BAR['whole']}x with measures on)"
        print(line)


def seeds_compare(args, scratch: str, cache: str) -> None:
    n, steps = args.seeds_compare, args.steps
    name = f"lab train.seeds={n}"
    extra = [f"train.seeds={n}"]
    print()
    print(f"seeds: {n} seeds x {steps} steps, whole wall time")
    cold = run_lab(name, steps, scratch, cache, extra)
    print(f"  (warm-up, untimed: {name}, its programs not yet in the compile cache: launch -> first chunk "
          f"{cold['first']:.1f} s, whole process {cold['whole']:.1f} s)")
    lab = run_lab(name, steps, scratch, cache, extra)
    t0 = time.perf_counter()
    peers = [run_peer(args.peer_python, steps, seed, args.threads) for seed in range(n)]
    tl_total = time.perf_counter() - t0
    rows = ((f"lab, one process (train.seeds={n})", f"{lab['whole']:.1f} s"),
            (f"{TL}, {n} processes one after another (seeds 0..{n - 1})",
             f"{tl_total:.1f} s (per run {spread([p['whole'] for p in peers], '.1f', ' s')})"),
            (f"ratio {TL} / lab", f"{tl_total / lab['whole']:.2f}x (issue 28's bar: {ISSUE_BAR['seeds']}x)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:{width}s}  {value}")


if __name__ == "__main__":
    sys.exit(main())
