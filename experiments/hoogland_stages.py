"""Stages of development read from the local learning coefficient and essential dynamics (Hoogland
et al. 2024, "Loss landscape degeneracy drives stagewise development in transformers").

Two models, each on 5 seeds with the LLC estimated online (lab/measures/llc.py) and the probe's
outputs kept at every log step (essential dynamics): the default token-induction model
(configs/experiment/hoogland_lm.yaml) and a 2-layer transformer on in-context linear regression
(configs/experiment/hoogland_regression.yaml). Each run's stage report (summary.json["stages"],
lab/analysis/development.py) aligns the detectors per seed. Claims in Hoogland et al.'s style:
- token induction: the LLC's steepest change lies in the loss transition's window (its onset-end
  by change points, widened by the report's tolerance) in every seed that has a transition; the LLC
  after the transition exceeds the LLC before it; the essential-dynamics trajectory moves fastest
  within that window;
- regression: the LLC rises from initialisation; and it falls in a later stage (Hoogland et al.'s
  stages in which the LLC decreases): the smoothed LLC's maximum exceeds its final value by more
  than two standard errors of one estimate.

    python -m experiments.hoogland_stages           # 5 seeds per model (about 10 min on 2 CPU cores)
    python -m experiments.hoogland_stages --full    # 10 seeds, as Hoogland et al.

Deviations (also in the presets): the lab's data and scale (repeated random tokens rather than
natural text; 1500-2000 steps), and the LLC at 21 online points with the lab's cheap default
estimator (4 chains x 45 SGLD steps) rather than ~300 offline checkpoints with 8 x 1000 steps.
The LLC's absolute values depend on the estimator's settings (README, "Stages of development");
the claims read only its shape over training.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import Experiment, all_measured, ci_beyond, claim, measured_note, save_figure, script_main

ORDER = 7                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "hoogland_regression"   # configs/experiment/: in-context linear regression
PRESET_LM = "hoogland_lm"        # configs/experiment/: the default token-induction model
PAPER = "Hoogland et al. 2024"


def _stages(run) -> dict:
    return run.summary.get("stages") or {}


def _per_seed(run, key) -> list:
    return [p.get(key) for p in _stages(run).get("per_seed", [])]


def _misses(run, flag: str, step_key: str) -> str:
    """The seeds whose boundary missed the loss window: their window and the boundary's step."""
    out = []
    for p in _stages(run).get("per_seed", []):
        t = p.get("main_transition")
        if p.get(flag) is False and t:
            end = " (the run's last step)" if p.get("llc_steepest_at_end") and step_key == "llc_steepest" else ""
            out.append(f"seed {p['seed']}: transition {t['onset']:.0f}-{t['end']:.0f}, {step_key} at "
                       f"{p.get(step_key)}{end}")
    return "; ".join(out)


def _llc_jump(run) -> list:
    """Per seed: LLC after the main loss transition minus before it (the report's llc_levels of
    that transition); None without a transition or without estimates on both sides."""
    out = []
    for p in _stages(run).get("per_seed", []):
        main = p.get("main_transition")
        levels = [lv for lv in p.get("llc_levels") or [] if main and lv["onset"] == main["onset"]]
        ok = levels and levels[0]["before"] is not None and levels[0]["after"] is not None
        out.append(levels[0]["after"] - levels[0]["before"] if ok else None)
    return out


def _llc(run):
    from lab.rundir import load_llc
    return load_llc(run.run_dir)


def _fall_after_peak(run) -> tuple[list, list]:
    """Per seed: (smoothed LLC's maximum minus its final value, two standard errors of one
    estimate: 2 x median chain std / sqrt(chains)). The maximum must not be the last point."""
    from lab.analysis.development import smoothed_curve
    est = _llc(run)
    falls, margins = [], []
    if est is None:
        return [None] * len(run.summary["seeds"]), [None] * len(run.summary["seeds"])
    chains = est["chains"].shape[-1]
    for s in range(est["llc"].shape[1]):
        grid, ys = smoothed_curve(est["steps"], est["llc"][:, s])
        if len(ys) < 5:
            falls.append(None), margins.append(None)
            continue
        i = int(np.nanargmax(ys))
        falls.append(float(ys[i] - ys[-1]) if i < len(ys) - 1 else 0.0)
        margins.append(float(2 * np.nanmedian(est["llc_std"][:, s]) / np.sqrt(chains)))
    return falls, margins


def _figure(runs: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lab.analysis.development import essential_dynamics
    from lab.rundir import load_outputs
    fig, axes = plt.subplots(len(runs), 2, figsize=(12.5, 4.2 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1]})
    for row, (name, run) in enumerate(runs.items()):
        ax, ax_ed = axes[row]
        est = _llc(run)
        colours = plt.cm.viridis(np.linspace(0, 0.85, len(run.summary["seeds"])))
        main = run.summary["main_metric"]
        loss_ax = ax.twinx()
        x = np.maximum(run.steps, 1)
        for s, c in enumerate(colours):
            loss_ax.plot(x, run.curve(main)[:, s], color="0.6", lw=0.8, alpha=0.7)
            if est is not None:
                xs = np.maximum(est["steps"], 1)
                ax.plot(xs, est["llc"][:, s], color=c, lw=1.4, marker=".", ms=3)
                ax.fill_between(xs, est["llc"][:, s] - est["llc_std"][:, s], est["llc"][:, s] + est["llc_std"][:, s],
                                color=c, alpha=0.15, lw=0)
            p = (_stages(run).get("per_seed") or [{}] * (s + 1))[s]
            t = p.get("main_transition")
            if t:
                ax.axvspan(max(t["onset"], 1), max(t["end"], 1), color=c, alpha=0.08)
            if p.get("llc_steepest") is not None:
                ax.axvline(max(p["llc_steepest"], 1), color=c, ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training step (log)")
        ax.set_ylabel("LLC (mean over chains, band ± chain std)")
        loss_ax.set_ylabel(f"{run.summary['main_metric_label']} (grey)")
        ax.set_title(f"{name}: LLC per seed; shaded: loss transition, dotted: LLC's steepest change", fontsize=10)
        out = load_outputs(run.run_dir)
        if out is not None and len(out["steps"]) >= 5:
            ed = essential_dynamics(out["steps"], out["outputs"])
            for s, c in enumerate(colours):
                pcs = np.asarray(ed["per_seed"][s]["pcs"], float)
                ax_ed.plot(pcs[:, 0], pcs[:, 1], color=c, lw=1.2)
                ax_ed.plot(pcs[0, 0], pcs[0, 1], "o", color=c, ms=4)
                fast = ed["per_seed"][s].get("fastest")
                if fast is not None:
                    i = int(np.argmin(np.abs(out["steps"] - fast)))
                    ax_ed.plot(pcs[i, 0], pcs[i, 1], "D", mfc="none", mec=c, ms=7)
            ev = ed["explained_variance_ratio"]
            ax_ed.set_xlabel(f"PC1 ({100 * ev[0]:.0f} %)")
            ax_ed.set_ylabel(f"PC2 ({100 * ev[1]:.0f} %)" if len(ev) > 1 else "PC2")
            ax_ed.set_title(f"essential dynamics ({out.get('kind', 'outputs')}); ○ start, ◇ fastest", fontsize=9)
    return save_figure(fig, path, "The local learning coefficient and essential dynamics over training (per seed)")


def main(argv=None):
    exp = Experiment("hoogland_stages", "Stages from the LLC and essential dynamics", PAPER, argv)
    seeds = exp.seeds(1, 5, 10)
    smoke = ["train.steps=100", "measures.llc.every=10", "measures.llc.draws=4", "measures.llc.burn_in=1",
             "measures.llc.chains=2", "measures.llc.batch_size=4"] if exp.smoke else []
    lm = exp.run("induction", [f"experiment={PRESET_LM}", f"train.seeds={seeds}", *smoke])
    reg = exp.run("regression", [f"experiment={PRESET}", f"train.seeds={seeds}", *smoke])
    claims = []

    # token induction
    in_window = _per_seed(lm, "llc_steepest_in_loss_window")
    claims.append(claim(
        "llc_steepest_in_loss_window", "Token induction: the LLC's steepest change lies within the loss transition's "
        "window in every seed that has a transition.", "LLC steepest change in the loss window", in_window, "all seeds",
        all_measured(in_window, bool), paper=f"{PAPER}: stage boundaries found by the LLC coincide with the "
        "milestones of the loss and the heads",
        note="; ".join(filter(None, [measured_note(in_window), _misses(lm, "llc_steepest_in_loss_window", "llc_steepest")]))))
    jump = _llc_jump(lm)
    claims.append(claim(
        "llc_rises_across_transition", "Token induction: the LLC after the loss transition exceeds the LLC before it.",
        "LLC after minus before the transition (paired, per seed)", jump, "> 0 (95 % CI)", ci_beyond(jump, 0.0, "above"),
        paper=f"{PAPER}: the LLC grows as the induction circuit forms", note=measured_note(jump)))
    ed_window = _per_seed(lm, "ed_fastest_in_loss_window")
    claims.append(claim(
        "ed_fastest_in_loss_window", "Token induction: the essential-dynamics trajectory moves fastest within the "
        "loss transition's window in every seed that has a transition.", "ED fastest step in the loss window",
        ed_window, "all seeds", all_measured(ed_window, bool),
        paper=f"{PAPER}: turning points of the trajectory mark the milestones",
        note="; ".join(filter(None, [measured_note(ed_window), _misses(lm, "ed_fastest_in_loss_window", "ed_fastest")]))))

    # in-context linear regression
    est = _llc(reg)
    rise = [float(est["llc"][-1, s] - est["llc"][0, s]) for s in range(est["llc"].shape[1])] if est is not None else []
    claims.append(claim(
        "regression_llc_rises", "Regression: the LLC at the end of training exceeds the LLC at initialisation.",
        "final minus initial LLC (per seed)", rise, "> 0 (95 % CI)", ci_beyond(rise, 0.0, "above"),
        paper=f"{PAPER}: the LLC grows over training overall"))
    falls, margins = _fall_after_peak(reg)
    fell = [None if f is None else bool(f > m) for f, m in zip(falls, margins)]
    claims.append(claim(
        "regression_llc_falls_in_a_stage", "Regression: the LLC falls in a later stage: its smoothed maximum exceeds "
        "its final value by more than two standard errors of one estimate, in every seed.",
        "LLC fell after its maximum", fell, "all seeds", all_measured(fell, bool),
        paper=f"{PAPER}: in some stages of in-context linear regression the LLC decreases",
        note=f"falls {[round(f, 2) if f is not None else None for f in falls]} against 2 SE "
             f"{[round(m, 2) if m is not None else None for m in margins]}; at this scale (2000 steps) the LLC "
             "levels off within the estimates' noise after its rise; Hoogland et al.'s decreases came far later "
             "in much longer training, which this run does not reach"))
    figure = _figure({"token induction": lm, "in-context linear regression": reg}, exp.figure_path("hoogland_stages.png"))
    return exp.finish(claims, [figure])


if __name__ == "__main__":
    script_main(main)
