"""What every experiment shares: its command line, cached lab runs, claims and `verdict.json`.

An experiment script builds an `Experiment`, trains runs with `exp.run(label, overrides)` (each a
normal lab run directory under `<out>/runs/<label>`, resumed if it was killed, reused if it already
finished with the same config), measures its claims with `claim(...)`, draws its figures and calls
`exp.finish(claims, figures)`, which writes `<out>/verdict.json` and prints the claims.

Modes: `--smoke` (a few steps of tiny runs: checks the script end to end, in seconds; its verdicts
mean nothing and are marked so), the default (the finding at reduced scale, sized for an idle 2-core
CPU: 5-15 min for most, about 30 min for Reddy's grid and 40-70 min for Olsson's and Singh's; each
script's docstring says its own), `--full` (the paper's scale where it differs: a GPU node).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = ROOT / "experiments" / "out"
MODES = ("smoke", "default", "full")
# Smoke runs: tiny and quiet. Experiments add their own model/steps overrides on top.
SMOKE_TRAIN = ["train.steps=30", "train.log_every=10", "train.batch_size=8", "train.checkpoint_every=0",
               "train.tensorboard=false", "measures.attention_snapshots=false"]

WALL_FILE = "experiment_wall_seconds.txt"   # written into each run dir: its training wall time
CPU_FILE = "experiment_cpu_seconds.txt"     # and its CPU time (user + system, every thread): unlike the wall
#                                             time it does not grow when other work shares the CPU
log = logging.getLogger("experiments")


def _floats(values) -> np.ndarray:
    """Values (per seed or condition; None = not measured, booleans count 0/1) as floats, None -> NaN."""
    return np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], float)


# What a claim is: a test (it could fail; counted) or a control (true by construction or by the
# architecture: shown, never counted as a result).
TEST, CONTROL = "test", "control"
SEED, CONDITION = "seed", "condition"


def claim(id: str, claim: str, quantity: str, values, threshold: str, held: Optional[bool],
          paper: str = "", note: str = "", kind: str = TEST, unit: str = SEED,
          not_measured: str = "") -> dict:
    """One checked claim. `values` are one measurement per seed (unit=SEED) or per condition
    (unit=CONDITION, where each value is already a statistic over that condition's seeds and the
    values are not a sample: no spread or interval is computed across them). Per seed, the value is
    the mean with its sample std (ddof 1) and bootstrap 95 % interval; yes/no values (booleans per
    seed) carry k of n with an exact binomial interval. `held` is None when nothing could be measured;
    `not_measured` says why (e.g. the training it needs did not train), and forces held to None.
    kind=CONTROL marks a claim that cannot fail (shown, not counted)."""
    from lab.analysis import stats
    if kind not in (TEST, CONTROL) or unit not in (SEED, CONDITION):
        raise ValueError(f"kind must be {TEST!r} or {CONTROL!r} and unit {SEED!r} or {CONDITION!r}")
    a = _floats(values)
    v = a[np.isfinite(a)]
    out = {"id": id, "claim": claim, "quantity": quantity, "kind": kind, "unit": unit,
           "value": float(v.mean()) if v.size else None, "spread": None, "ci95": None, "k": None,
           "n": int(v.size), "values": [float(x) if math.isfinite(x) else None for x in a],
           "threshold": threshold, "held": None if held is None or not_measured else bool(held),
           "not_measured": not_measured, "paper": paper, "note": note}
    raw = [x for x in np.ravel(np.asarray(values, dtype=object)) if x is not None]
    yes_no = bool(raw) and all(isinstance(x, (bool, np.bool_)) for x in raw)   # not numbers that happen to be 0/1
    if unit == SEED and v.size:
        if yes_no:
            out["k"] = int(v.sum())
            out["ci95"] = stats.binomial_ci(out["k"], int(v.size))
        else:
            out["spread"] = stats.sample_std(v)
            out["ci95"] = stats.bootstrap_ci(v)
    return out


def outcome(c: dict) -> str:
    """held | did not hold | not measured | control."""
    if c.get("kind") == CONTROL:
        return "control"
    return held_text(c["held"])


def all_measured(values, ok) -> Optional[bool]:
    """Whether `ok` holds for every measured (non-None) value; None when nothing was measured."""
    measured = [v for v in values if v is not None]
    return all(ok(v) for v in measured) if measured else None


def ci_beyond(values, threshold: float, side: str, strict: bool = True) -> Optional[bool]:
    """An "on average" rule judged on the bootstrap 95 % interval of the mean over seeds: held when
    the whole interval lies above (side="above") or below ("below") the threshold (or reaches it,
    with strict=False: for "at most" / "at least" thresholds); None with fewer than two measured
    seeds (no interval)."""
    from lab.analysis import stats
    ci = stats.bootstrap_ci([v for v in values if v is not None])
    if ci is None:
        return None
    if side == "above":
        return ci[0] > threshold if strict else ci[0] >= threshold
    return ci[1] < threshold if strict else ci[1] <= threshold


def measured_note(values) -> str:
    measured = sum(v is not None for v in values)
    return "" if measured == len(values) else f"measured in {measured} of {len(values)} seeds (the others had nothing to time)"


def trained(final_losses, chance: float, margin: float = 0.05) -> list[bool]:
    """Per seed: whether the run trained at all, i.e. its final loss is below chance by more than
    `margin` x chance. A claim about a training that did not train is not measured, not refuted."""
    return [v is not None and math.isfinite(v) and v < chance * (1 - margin) for v in np.ravel(final_losses)]


def crossing_step(steps, curve, threshold: float, direction: str = "decrease") -> Optional[float]:
    """First logged step where `curve` is below (decrease) or above (increase) `threshold`."""
    curve = np.asarray(curve, float)
    hit = curve < threshold if direction == "decrease" else curve > threshold
    idx = np.flatnonzero(hit & np.isfinite(curve))
    return float(np.asarray(steps)[idx[0]]) if idx.size else None


@dataclass
class Run:
    """A finished lab run: config, summary, metrics (arrays with a leading log-step axis, then seed),
    and its directory; params are loaded from its checkpoint on first use."""
    label: str
    cfg: object
    summary: dict
    metrics: dict
    run_dir: Path

    @property
    def steps(self) -> np.ndarray:
        return self.metrics["step"]

    def curve(self, key: str) -> np.ndarray:
        """(log steps, seeds, ...) values of a logged metric."""
        if key not in self.metrics:
            raise KeyError(f"run {self.label} logged no {key!r}; it has {sorted(self.metrics)}")
        return self.metrics[key]

    def final(self, key: str) -> np.ndarray:
        """Per-seed value of a metric at the last log step."""
        return self.curve(key)[-1]

    def midpoints(self, key: Optional[str] = None, group_head: Optional[tuple] = None) -> list:
        """Per-seed fitted phase-change midpoints (None where not detected) of the main metric,
        of `key`, or of a head group's head, e.g. group_head=("induction", "L1H0")."""
        phase = self.summary.get("phase", {})
        entry = phase[group_head[0]][group_head[1]] if group_head else phase[key or self.summary["main_metric"]]
        return [r["midpoint"] if r["detected"] else None for r in entry["per_seed"]]

    def transitions(self, key: Optional[str] = None, group_head: Optional[tuple] = None) -> list:
        """Per seed, the transition summary.json times (lab.analysis.summary.transition: the largest
        change-point transition, else the sigmoid fit; None if neither) of the main metric, of `key`,
        or of a head group's head; each has onset, midpoint, end, width and which detector found it."""
        from lab.analysis.summary import transition
        phase = self.summary.get("phase", {})
        entry = phase[group_head[0]][group_head[1]] if group_head else phase[key or self.summary["main_metric"]]
        return [transition(entry, s) for s in range(len(entry["per_seed"]))]

    def onsets(self, key: Optional[str] = None, group_head: Optional[tuple] = None) -> list:
        """Per-seed onsets (see transitions); None where the curve has no transition."""
        return [t["onset"] if t else None for t in self.transitions(key, group_head)]

    def first_formed_onset(self, group: str, seed: int, min_layer: int = 0):
        """(onset, head) of the earliest head of `group` in layers >= min_layer that formed in this
        seed (its score rose, by either detector, and crossed the score threshold); (None, None) if none."""
        best = None
        for head, entry in self.summary["phase"].get(group, {}).items():
            if int(head[1:head.index("H")]) < min_layer or entry["per_seed"][seed]["threshold_step"] is None:
                continue
            t = self.transitions(group_head=(group, head))[seed]
            if t and (best is None or t["onset"] < best[0]):
                best = (t["onset"], head)
        return best or (None, None)

    def fit(self, values, direction: str, min_amplitude: float, steps=None) -> dict:
        """lab.analysis.phase.detect on one curve (default x: the run's log steps) with this run's phase
        settings (smoothing, R², width): the per-curve phase-change fit summary.json uses."""
        from lab.analysis import phase
        pc = self.cfg.measures.phase
        return phase.detect(self.steps if steps is None else steps, values, direction=direction,
                            min_amplitude=min_amplitude, min_r2=pc.min_r2, max_width_frac=pc.max_width_frac,
                            smooth_window=pc.smooth)


class Experiment:
    """Command line, run cache and verdict of one experiment script."""

    def __init__(self, name: str, title: str, paper: str, argv: Optional[Sequence[str]] = None,
                 description: str = ""):
        parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description or title)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--smoke", action="store_true", help="tiny runs, seconds; checks the script, not the claim")
        mode.add_argument("--full", action="store_true", help="the paper's scale (slow on a CPU)")
        parser.add_argument("--out", type=Path, default=None, help=f"output directory (default experiments/out/{name})")
        parser.add_argument("--seeds", type=int, default=None, help="seeds per condition (default: the mode's)")
        parser.add_argument("--retrain", action="store_true", help="train again even where a finished run is cached")
        args = parser.parse_args(argv)
        self.name, self.title, self.paper = name, title, paper
        self.mode = "smoke" if args.smoke else "full" if args.full else "default"
        self.out = Path(args.out) if args.out else OUT_ROOT / name
        self.seeds_override = args.seeds
        self.retrain = args.retrain
        self.started = time.time()
        self.runs: dict[str, list[str]] = {}
        self.train_seconds = 0.0    # wall time of this experiment's runs, cached ones included
        self.new_seconds = 0.0
        self.cpu_started = time.process_time()
        self.train_cpu = 0.0        # CPU time of the runs, cached ones included (where recorded)
        self.new_cpu = 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        for noisy in ("absl", "jax", "orbax", "lab"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.say(f"{title} ({paper}) — {self.mode} mode, writing to {self.out}")

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    def pick(self, smoke, default, full=None):
        """The value for the current mode (full defaults to default)."""
        return {"smoke": smoke, "default": default, "full": default if full is None else full}[self.mode]

    def seeds(self, smoke: int, default: int, full: Optional[int] = None) -> int:
        return self.seeds_override or self.pick(smoke, default, full)

    def say(self, text: str) -> None:
        print(f"[{self.name} {time.time() - self.started:6.0f}s] {text}", flush=True)

    # ---- runs ----
    def run(self, label: str, overrides: Sequence[str]) -> Run:
        """Train (or reuse) one lab run. In smoke mode SMOKE_TRAIN is applied after `overrides`,
        so smoke runs stay tiny whatever the experiment asks for."""
        from omegaconf import OmegaConf

        import lab
        from lab.config.compose import validate
        from lab.rundir import load_metrics

        overrides = list(overrides) + (SMOKE_TRAIN if self.smoke else [])
        self.runs[label] = overrides
        cfg = lab.load_config(overrides + [f"train.progress={str(sys.stderr.isatty() and not self.smoke).lower()}"])
        validate(cfg)    # fills in clamp defaults as lab.run does, so the saved config.yaml compares equal
        run_dir = self.out / "runs" / label
        wanted = OmegaConf.to_yaml(cfg, resolve=True)
        summary_path = run_dir / "summary.json"
        if summary_path.exists() and not self.retrain:
            summary = json.loads(summary_path.read_text())
            if (self._unfinished_same(run_dir, wanted) and summary.get("status") == "completed"
                    and not self._source_newer(cfg, summary_path)):
                self.say(f"{label}: reusing the finished run in {run_dir}")
                self.train_seconds += self._recorded_seconds(run_dir, WALL_FILE)
                self.train_cpu += self._recorded_seconds(run_dir, CPU_FILE)
                metrics = load_metrics(run_dir)
                return Run(label, cfg, self._resummarize(cfg, summary, metrics, summary_path), metrics, run_dir)
        if run_dir.exists() and (self.retrain or not self._unfinished_same(run_dir, wanted)):
            shutil.rmtree(run_dir)   # an outdated run of this experiment: its config changed
        self.say(f"{label}: training ({' '.join(overrides)})")
        t0, cpu0 = time.time(), time.process_time()
        result = lab.run(cfg, run_dir, plots=not self.smoke)
        if result.summary.get("status") != "completed":
            raise RuntimeError(f"run {label} ended with status {result.summary.get('status')}; see {run_dir}")
        seconds = time.time() - t0
        cpu = time.process_time() - cpu0
        (run_dir / WALL_FILE).write_text(f"{seconds:.1f}\n")
        (run_dir / CPU_FILE).write_text(f"{cpu:.1f}\n")
        self.train_seconds += seconds
        self.new_seconds += seconds
        self.train_cpu += cpu
        self.new_cpu += cpu
        self.say(f"{label}: done in {seconds:.0f}s — {result.summary.get('verdict', '')}")
        return Run(label, cfg, result.summary, load_metrics(run_dir), run_dir)

    @staticmethod
    def _resummarize(cfg, summary: dict, metrics: dict, path: Path) -> dict:
        """A reused run's summary recomputed from its metrics with the current analysis (detectors
        and statistics change more often than trainings need to), written back to summary.json."""
        from lab.analysis.summary import summarize
        from lab.app.after import stages_of_run
        from lab.train.state import build
        fresh = summarize(metrics, cfg, build(cfg)[0], summary["seeds"], summary.get("status", "completed"))
        for key in ("clamps", "skipped_updates"):   # written by lab.run beside the summary proper
            if key in summary:
                fresh[key] = summary[key]
        fresh["stages"] = stages_of_run(fresh, path.parent)
        stat = path.stat()
        path.write_text(json.dumps(fresh, indent=1, default=float))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # a graft source stays as old as its run
        return fresh

    @staticmethod
    def _source_newer(cfg, summary_path: Path) -> bool:
        """Whether a run this one grafts from (a clamp's `source`) finished after it: then it is stale."""
        for c in (cfg.get("clamps") or {}).values():
            src = Path(c.source) / "summary.json" if c.get("source") else None
            if src is not None and src.exists() and src.stat().st_mtime > summary_path.stat().st_mtime:
                return True
        return False

    @staticmethod
    def _recorded_seconds(run_dir: Path, name: str) -> float:
        """A run's recorded wall or CPU seconds (WALL_FILE, CPU_FILE); 0 where none was recorded."""
        try:
            return float((run_dir / name).read_text())
        except (OSError, ValueError):
            return 0.0

    @staticmethod
    def _unfinished_same(run_dir: Path, wanted: str) -> bool:
        """Whether the run directory holds this config (the progress bar aside); lab.run resumes an
        unfinished one from its checkpoint."""
        cfg = run_dir / "config.yaml"
        def key(text):
            return [ln for ln in text.splitlines() if not ln.strip().startswith("progress:")]
        return cfg.exists() and key(cfg.read_text()) == key(wanted)

    # ---- outputs ----
    def figure_path(self, name: str) -> Path:
        return self.out / name

    def finish(self, claims: list[dict], figures: Sequence[Path] = (), extra: Optional[dict] = None) -> dict:
        """Write verdict.json and print the claims."""
        verdict = {"experiment": self.name, "title": self.title, "paper": self.paper, "mode": self.mode,
                   "command": f"python -m experiments.{self.name}" + {"smoke": " --smoke", "default": "",
                                                                       "full": " --full"}[self.mode],
                   # training time of every run (cached ones as recorded when they ran) plus this analysis
                   "seconds": round(self.train_seconds + time.time() - self.started - self.new_seconds, 1),
                   # the same in CPU time (user + system): what the experiment costs whatever else ran
                   "cpu_seconds": round(self.train_cpu + time.process_time() - self.cpu_started - self.new_cpu, 1),
                   "claims": claims, "figures": [str(Path(f).relative_to(self.out)) for f in figures],
                   "runs": self.runs, **(extra or {})}
        path = self.out / "verdict.json"
        path.write_text(json.dumps(verdict, indent=1))
        self.say(f"verdict ({self.mode} mode{'; smoke verdicts mean nothing' if self.smoke else ''}) -> {path}")
        for c in claims:
            why = f" — {c['not_measured']}" if c.get("not_measured") else ""
            print(f"  [{outcome(c)}] {c['claim']}\n        {c['quantity']} = {value_text(c)}"
                  f" (threshold {c['threshold']}){why}")
        return verdict


def held_text(held: Optional[bool]) -> str:
    return {True: "held", False: "did not hold", None: "not measured"}[held]


def value_text(c: dict, digits: int = 3) -> str:
    """Per seed: 'mean ± sample std [95 % CI] (n seeds)', or 'k of n seeds [binomial 95 % CI]' for
    yes/no values; per condition: the conditions' values are listed, not averaged as if seeds."""
    if c["value"] is None:
        return "n/a"
    ci = c.get("ci95")
    interval = f" [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else ""
    if c.get("unit") == CONDITION:
        return (f"{c['value']:.{digits}g}" if c["n"] == 1 else f"{c['n']} conditions (values listed)")
    if c.get("k") is not None:
        return f"{c['k']} of {c['n']} seeds{interval}"
    v = f"{c['value']:.{digits}g}"
    if c.get("spread") is not None:
        v += f" ± {c['spread']:.2g}"
    return v + interval + f" (n={c['n']})"


def save_figure(fig, path: Path, title: Optional[str] = None) -> Path:
    """Save and close a figure; with a title, set it (suptitle) and lay the figure out first."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title)
        fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def script_main(main):
    """Run an experiment's main() with a one-line error for bad input instead of a traceback."""
    from lab.core import ConfigError
    try:
        main()
    except (ConfigError, KeyboardInterrupt) as e:
        sys.exit(f"error: {e}" if isinstance(e, ConfigError) else "interrupted; rerun the same command to "
                                                                    "continue from the runs' checkpoints")
