"""`lab-llc RUN_DIR [RUN_DIR ...] [key=value ...]`: the local learning coefficient at a finished
run's checkpoints (every checkpoint x seed x chain in one program; lab/train/llc_chains.py), written
to llc.npz with the chains' traces; then the stage report in summary.json and the development,
llc_chains and essential_dynamics figures are redrawn. A multirun directory stands for every run
below it. The settings default to the run's own `measures.llc`; `key=value` overrides them."""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from lab.analysis.development import stage_report
from lab.core import ConfigError, RunLoadError
from lab.measures.llc import Settings, check_settings, warnings_for
from lab.plots.run import plot_run
from lab.rundir import (checkpoint_steps, load_llc, load_outputs, load_run_config, load_summary, run_dir_problem,
                        run_dirs_under, save_llc)
from lab.train.callbacks import llc_arrays
from lab.train.llc_chains import estimate_checkpoints
from lab.train.runtime import configure_xla_threads

FIGURES = ("development", "llc_chains", "essential_dynamics")
KEYS = tuple(f.name for f in fields(Settings))


def parse_overrides(items: list[str]) -> dict:
    """`key=value` pairs for the estimator's settings; a wrong key gets one line naming the closest."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.removeprefix("measures.llc.")
        if not sep:
            raise ConfigError(f"{item!r} is not key=value; e.g. chains=8 (keys: {', '.join(KEYS)})")
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise ConfigError(f"unknown LLC setting {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" (keys: {', '.join(KEYS)})")
        out[key] = yaml.safe_load(value)
    return out


def settings_for(run_dir: Path, overrides: dict) -> Settings:
    saved = (load_run_config(run_dir).get("measures") or {}).get("llc") or {}
    try:
        s = replace(Settings(), **{k: v for k, v in saved.items() if k in KEYS}, **overrides)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    problem = check_settings(s)
    if problem:
        raise ConfigError(f"LLC settings: {problem}")
    return s


def estimate_run(run_dir: Path, overrides: dict, steps=None, replace_online: bool = False, plots: bool = True) -> dict:
    """The offline LLC of one run; returns {step: mean llc over seeds} for the report line."""
    problem = run_dir_problem(run_dir)
    if problem:
        raise RunLoadError(problem)
    old = load_llc(run_dir)
    if old is not None and old.get("source") == "online" and not replace_online:
        raise ConfigError(f"{run_dir / 'llc.npz'} holds the run's online estimates; pass --replace to overwrite them")
    s = settings_for(run_dir, overrides)
    available = checkpoint_steps(run_dir)
    if steps is None and len(available) < 5:
        logging.warning("%s has %d checkpoint(s) (%s): too few to follow the LLC over training; train with "
                        "train.checkpoint_every=75 train.keep_checkpoints=21 (or a log-plus-linear grid: "
                        "train.checkpoint_log_points=20 train.checkpoint_linear_points=20), or estimate online with "
                        "measures.llc.every=75", run_dir, len(available), available)
    steps, est = estimate_checkpoints(run_dir, s, steps)
    for k, t in enumerate(steps):
        for i in range(est["llc"].shape[1]):
            d = {"llc": est["llc"][k, i], "not_settled": est["not_settled"][k, i]}
            for w in warnings_for(d, int((~est["finite"][k, i]).sum()), s.chains):
                logging.warning("%s: LLC at step %d, seed index %d: %s", run_dir, t, i, w)
    save_llc(run_dir, llc_arrays(steps, est, s, "offline"))
    summary = load_summary(run_dir)
    if summary:
        summary["stages"] = stage_report(summary, load_llc(run_dir), load_outputs(run_dir))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if plots:
        plot_run(run_dir, figures=list(FIGURES))
    return {t: float(est["llc"][k].mean()) for k, t in enumerate(steps)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-llc", description=__doc__.split("\n\n")[0].replace("`", ""),
        epilog=f"settings (key=value): {', '.join(KEYS)}")
    parser.add_argument("paths", nargs="+", help="run or multirun directories, then key=value settings")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="checkpoint steps (default: all)")
    parser.add_argument("--replace", action="store_true", help="overwrite a run's online estimates in llc.npz")
    parser.add_argument("--no-plots", action="store_true", help="do not redraw the figures")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        overrides = parse_overrides([p for p in args.paths if "=" in p])
        runs = [r for p in args.paths if "=" not in p for r in run_dirs_under(Path(p))]
        if not runs:
            raise ConfigError(f"no run directory (one with metrics.jsonl) at or below {', '.join(args.paths)}")
        try:   # as lab-train does: XLA's CPU threading from the run's config, before JAX's backend starts
            configure_xla_threads(OmegaConf.load(runs[0] / "config.yaml").train)
        except Exception:   # an unreadable config is reported when the run is loaded
            pass
        failed = 0
        for run_dir in runs:
            try:
                curve = estimate_run(run_dir, overrides, args.steps, args.replace, not args.no_plots)
            except (RunLoadError, ConfigError) as e:
                print(f"error: {run_dir}: {e}", file=sys.stderr)
                failed += 1
                continue
            shown = ", ".join(f"{t}: {v:.2f}" for t, v in curve.items())
            print(f"{run_dir}: LLC (mean over seeds) at step {shown}; llc.npz written")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
