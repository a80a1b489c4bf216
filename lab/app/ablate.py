"""`lab-ablate RUN_DIR`: the head-ablation analysis of a finished run (lab/analysis/ablation.py),
written as ablation.csv, ablation.json and ablation.png."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lab.analysis.ablation import KINDS, ablate, format_table, write_csv
from lab.core import RunLoadError
from lab.plots.ablation import plot
from lab.rundir import run_dir_problem
from lab.train.runtime import configure_xla_threads


def save(result: dict, out_dir) -> list[Path]:
    """Write ablation.csv, ablation.json and ablation.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=1))
    return [write_csv(result, out_dir / "ablation.csv"), out_dir / "ablation.json", plot(result, out_dir / "ablation.png")]


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _percent(text: str) -> float:
    v = float(text)
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 100]")
    return v


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-ablate",
        description="Ablate the attention heads of a finished run: each head alone, the top-k% induction "
                    "heads per layer, and as many random heads; write ablation.csv/.json/.png.")
    parser.add_argument("run_dir", type=Path, help="a run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--kind", choices=KINDS, default="mean",
                        help="mean: replace a head's z by its mean over the eval batch (default); zero: by 0")
    parser.add_argument("--top-percent", type=_percent, default=2.0,
                        help="ablate the top K%% heads of each layer by induction score, at least one (default 2)")
    parser.add_argument("--draws", type=_positive_int, default=20, help="random head sets to draw (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random head draws (default 0)")
    parser.add_argument("--eval-size", type=_positive_int, default=256, help="sequences in the eval batch (default 256)")
    parser.add_argument("--eval-seed", type=int, default=0, help="PRNG seed of the eval batch (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/ablation)")
    args = parser.parse_args(argv)

    problem = run_dir_problem(args.run_dir)   # before JAX starts: a quick, clean refusal
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:   # as lab-train does: XLA's CPU threading from the run's config, before JAX's backend starts
        configure_xla_threads(OmegaConf.load(args.run_dir / "config.yaml").train)
    except Exception:   # an unreadable config is reported by ablate() below
        pass
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        result = ablate(args.run_dir, kind=args.kind, top_percent=args.top_percent, draws=args.draws,
                        eval_size=args.eval_size, seed=args.seed, eval_seed=args.eval_seed)
    except RunLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    paths = save(result, args.out or args.run_dir / "ablation")
    print(format_table(result))
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
