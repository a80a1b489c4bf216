"""`lab-ablate RUN_DIR`: the head-ablation analysis of a finished run (lab/analysis/ablation.py),
written as ablation.csv, ablation.json and ablation.png."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from jax.errors import JaxRuntimeError
from omegaconf import OmegaConf

from lab.analysis.ablation import KINDS, ablate, format_table, write_csv
from lab.core import RunLoadError
from lab.plots.ablation import plot
from lab.rundir import load_run_config, run_dir_problem
from lab.train.runtime import configure_xla_threads


def save(result: dict, out_dir) -> list[Path]:
    """Write ablation.csv, ablation.json and ablation.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=1))
    return [write_csv(result, out_dir / "ablation.csv"), out_dir / "ablation.json", plot(result, out_dir / "ablation.png")]


def _out_of_memory(e: BaseException) -> bool:
    """Whether `e` is XLA (or Python) running out of memory: XLA says RESOURCE_EXHAUSTED, or on CPU
    "INTERNAL: Error dispatching computation: Out of memory allocating N bytes"."""
    text = str(e)
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


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
        _fail(problem, 2)
    try:
        load_run_config(args.run_dir, strict=True)   # a cut or damaged config.yaml, named as such
    except RunLoadError as e:
        _fail(str(e), 2)
    out = args.out or args.run_dir / "ablation"
    created = not out.exists()
    if out.exists() and not out.is_dir():
        _fail(f"cannot write the ablation to {out}: it is a file, not a directory; choose another --out", 2)
    try:   # before the ablation, which takes a while: an unwritable output is refused at once
        out.mkdir(parents=True, exist_ok=True)
        (out / ".lab-ablate-write-test").touch()
        (out / ".lab-ablate-write-test").unlink()
    except OSError as e:
        _fail(f"cannot write the ablation to {out}: {e.strerror or e}; choose another --out", 2)
    try:   # as lab-train does: XLA's CPU threading from the run's config, before JAX's backend starts
        configure_xla_threads(OmegaConf.load(args.run_dir / "config.yaml").train)
    except Exception:   # an unreadable config is reported by ablate() below
        pass
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        result = ablate(args.run_dir, kind=args.kind, top_percent=args.top_percent, draws=args.draws,
                        eval_size=args.eval_size, seed=args.seed, eval_seed=args.eval_seed)
    except (RunLoadError, JaxRuntimeError, MemoryError) as e:
        if created and not any(out.iterdir()):
            out.rmdir()   # leave no empty output directory behind
        if isinstance(e, RunLoadError):
            _fail(str(e), 2)
        if not _out_of_memory(e):
            raise
        _fail(f"out of memory evaluating {args.eval_size} sequences; lower --eval-size", 1)
    try:
        paths = save(result, out)
    except OSError as e:   # e.g. the disk filled up while writing
        _fail(f"cannot write the ablation to {out}: {e.strerror or e}; free some space or choose another --out", 1)
    print(format_table(result))
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
