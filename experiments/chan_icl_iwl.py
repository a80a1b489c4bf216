"""In-context vs in-weights learning: the Zipf exponent and the transience of ICL (Chan et al. 2022,
"Data distributional properties drive emergent in-context learning in transformers"; Singh et al.
2023, "The transient nature of emergent in-context learning in transformers").

Chan's task (preset `experiment=chan`: task=chan, lab/tasks/chan.py): sequences of 8 item-label pairs
and a query; training classes are Zipf-distributed, P_k ∝ (k + 1)^-α, each with a fixed label; 90 %
of training sequences are bursty (two classes, four exemplars each, one of them the query's). Two
evaluation sets, as Chan et al. define them (their code, google-deepmind/emergent_in_context_learning,
`eval_fewshot_holdout` and `eval_no_support_*`):
  ICL  held-out classes, 2-way 4-shot, labels assigned at random per sequence, accuracy with the argmax
       over the context's two labels (`acc_icl_restricted`; chance 0.5);
  IWL  the query's class among the 16 most frequent training classes and absent from the context (nor
       its label), scored against its fixed label (`acc_iwl`; chance 1/32); `acc_iwl_rare`: the same on
       the 64 least frequent classes.

Two questions:
1. Zipf exponent (Chan et al., their Zipf-exponent sweep): with uniform classes (α = 0) the network learns in
   context and not in weights; as α grows the common classes are learned in weights and in-context
   learning falls; near α = 1 both coexist in the same model. Here α in {0, 1, 2} (--full: 0, 0.5, 1,
   1.5, 2), K = 4096 training classes, 5 seeds each.
2. Transience (Singh et al. 2023; noted in Chan et al.'s appendix): with long training, in-context
   accuracy rises, then fades as in-weights learning takes over, while the training loss keeps
   falling. Singh et al. saw it on 12-layer models after millions of steps; here fewer classes
   (K = 512, α = 0) let the small model memorise its classes within thousands of steps. (With
   K = 256 it learned them in weights before any ICL appeared; with K = 1024 ICL reached 0.99 and
   in-weights accuracy was still 0.07 after 6000 steps: exploratory 2-seed runs.)

Deviations from the papers, and why (also in configs/experiment/chan.yaml): a 2-layer transformer with
MLPs (4 heads, d_model 64), not a 12-layer one with a ResNet embedder; fixed Gaussian exemplars
(D = 16, noise 0.5, 10 per class), not Omniglot images; 4096 / 1024 training classes, not 1600 /
12 800 (512 for transience); bursts of 2 classes x 4 (Chan: 2 classes x 3 plus 2 random items); 32 labels shared by the
classes (k mod 32), not one label per class; Adam at a constant 1e-3 without clipping (Chan: 3e-4 with
4000 warmup steps, inverse-sqrt decay, clipping 0.25); thousands of steps, not 5e5 (Chan) or millions
(Singh): all to fit a 2-core CPU. Singh et al. found L2 regularisation makes ICL persist; no weight
decay is used here, as in their transient runs.

Claims (thresholds fixed before the runs): ICL "rose" in a seed when its smoothed accuracy reached
0.5 + 0.2; it "faded" by the drop from that peak to the last logged value (mean of the last three log
points); the drop's 95 % interval over seeds must lie above 0.1. Transience is ICL giving way to IWL,
so a seed counts only if IWL took over by the end (normalised IWL accuracy >= 0.5); where ICL never
rose or IWL never took over within the run, the claims are "not measured" (the run was too short
for the event), not refuted. Coexistence at α = 1: per seed the
smaller of the two normalised accuracies, (acc − chance) / (1 − chance), and its interval above 0.5.
The α trends compare the conditions' means (unit=CONDITION, listed, not averaged as seeds).

    python -m experiments.chan_icl_iwl            # 3 x 5 seeds x 6000 steps (α sweep) + 5 seeds x 8000 steps (transience)
    python -m experiments.chan_icl_iwl --full     # α in 0..2 by 0.5 at 20k steps, transience over 50k steps (GPU node)

Default-scale budget: about 900 CPU-seconds in all (user + sys: ~210 s per α run, ~260 s for the
transience run), so about 8-15 minutes on an idle 2-core CPU (the 5 seeds are sharded over 2 XLA CPU
devices). The sweep was first run at 3000 steps, where ICL at α = 1 was still rising (coexistence did
not hold, 0.38 [0.29, 0.46]); 6000 steps is the default since, with the thresholds unchanged.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import (CONDITION, Experiment, ci_beyond, claim, save_figure, script_main, trained)

ORDER = 8                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "chan"            # configs/experiment/chan.yaml: task=chan on a 2-layer transformer with MLPs
ICL_KEY, IWL_KEY, RARE_KEY = "acc_icl_restricted", "acc_iwl", "acc_iwl_rare"
ICL_CHANCE = 0.5           # 2-way evaluation (two classes in each ICL context)
ROSE = 0.2                 # ICL rose: smoothed accuracy >= chance + 0.2
FADE = 0.1                 # ICL faded: peak − final > 0.1 (95 % CI of the mean over seeds)
COEXIST = 0.5              # both normalised accuracies >= 0.5 (halfway from chance to perfect)
TREND = 0.2                # α = 0 vs largest α: normalised accuracy differs by >= 0.2 ...
SLACK = 0.05               # ... and never moves the wrong way by more than this between neighbouring α
SMOOTH = 3                 # log points in the moving average that finds the ICL peak
# Deviations from the papers, repeated in the verdict's notes (see the module docstring for why).
SWEEP_DEVIATION = ("lab: 2-layer transformer with MLPs, Gaussian exemplars (D = 16), K = 4096 classes with 32 shared "
                   "labels, Adam 1e-3, {steps} steps; Chan et al.: 12 layers, Omniglot (1600 classes, one label each), "
                   "Adam 3e-4 with warmup and decay, 5e5 steps")
TRANSIENCE_DEVIATION = ("lab: the same model and data with K = 512 classes (so the classes can be learned in weights "
                        "within {steps} steps), no weight decay; Singh et al.: 12 layers, Omniglot, millions of steps")
TRANSIENCE_CLASSES = 512   # few enough for the small model to learn every class in weights within the run
IWL_LEARNED = 0.5          # IWL took over: final normalised IWL accuracy >= 0.5
FULL_TRANSIENCE_STEPS = 50000


def normalised(acc, chance: float):
    """(acc − chance) / (1 − chance): 0 at chance, 1 perfect."""
    return (np.asarray(acc, float) - chance) / (1.0 - chance)


def transience(steps, icl, window: int = SMOOTH) -> dict:
    """Peak of the smoothed ICL curve, its step, the final value (mean of the last `window` log
    points) and the drop from peak to final. rose: whether the peak reached ICL_CHANCE + ROSE."""
    from lab.analysis.phase import smooth
    y = smooth(np.asarray(icl, float), window)
    i = int(np.argmax(y))
    final = float(np.mean(np.asarray(icl, float)[-window:]))
    return {"peak": float(y[i]), "peak_step": float(np.asarray(steps)[i]), "final": final,
            "drop": float(y[i] - final), "rose": bool(y[i] >= ICL_CHANCE + ROSE)}


def _band(ax, steps, curves, color, label, ls="-"):
    """Mean over seeds (line) and the seeds' range (band)."""
    ax.fill_between(steps, curves.min(1), curves.max(1), color=color, alpha=0.18, lw=0)
    ax.plot(steps, curves.mean(1), color=color, lw=1.6, ls=ls, label=label)


def _figure_curves(sweep, trans, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(f"α = {a:g}, K = {r.cfg.task.n_classes}", r) for a, r in sweep.items()]
    if trans is not None:
        panels.append((f"long run: α = 0, K = {trans.cfg.task.n_classes} (transience)", trans))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.9), squeeze=False)
    for ax, (title, run) in zip(axes[0], panels):
        n_labels = run.cfg.task.n_labels
        _band(ax, run.steps, run.curve(ICL_KEY), "tab:blue", "ICL (held-out classes, 2-way)")
        _band(ax, run.steps, run.curve(IWL_KEY), "tab:red", "IWL (common classes)")
        _band(ax, run.steps, run.curve(RARE_KEY), "tab:orange", "IWL (rare classes)", ls="--")
        ax.axhline(ICL_CHANCE, color="tab:blue", lw=0.7, ls=":")
        ax.axhline(1 / n_labels, color="tab:red", lw=0.7, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=10)
    axes[0][0].set_ylabel("accuracy (mean; band: seeds' range)")
    axes[0][0].legend(fontsize=7, loc="center right")
    n = sweep[next(iter(sweep))].curve(ICL_KEY).shape[1]
    return save_figure(fig, path, f"In-context vs in-weights accuracy over training ({n} seeds; dotted: chance "
                                  f"0.5 for ICL, 1/32 for IWL)")


def _figure_sweep(sweep, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lab.analysis import stats
    alphas = list(sweep)
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    for key, color, name in ((ICL_KEY, "tab:blue", "ICL: held-out classes (chance 0.5)"),
                             (IWL_KEY, "tab:red", "IWL: common classes (chance 1/32)"),
                             (RARE_KEY, "tab:orange", "IWL: rare classes")):
        finals = [sweep[a].final(key) for a in alphas]
        means = np.array([f.mean() for f in finals])
        cis = [stats.bootstrap_ci(f) or (f.mean(), f.mean()) for f in finals]
        err = np.array([[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]])
        ax.errorbar(alphas, means, yerr=np.clip(err, 0, None), color=color, marker="o", capsize=3, label=name)
        for a, f in zip(alphas, finals):
            ax.scatter(np.full(f.shape, a), f, color=color, s=10, alpha=0.45)
    ax.axhline(ICL_CHANCE, color="tab:blue", lw=0.7, ls=":")
    ax.axhline(1 / 32, color="tab:red", lw=0.7, ls=":")
    ax.set_xlabel("Zipf exponent α of the training classes")
    ax.set_ylabel("final accuracy (mean, 95 % CI; dots: seeds)")
    ax.set_xticks(alphas)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return save_figure(fig, path, "Zipf exponent: in-context vs in-weights (beside Chan et al. 2022's Zipf sweep)")


def _figure_transience(run, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_labels = run.cfg.task.n_labels
    panels = ((ICL_KEY, "ICL, held-out classes: argmax over the\ncontext's 2 labels (Chan's; claims)", ICL_CHANCE),
              ("acc_icl", "ICL, held-out classes: argmax over\nall 32 labels (shown, not claimed)", 1 / n_labels),
              (IWL_KEY, "IWL, common classes absent\nfrom the context", 1 / n_labels),
              ("loss_query", "query loss on the training\ndistribution (probe)", math.log(n_labels)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.9))
    for ax, (key, title, chance) in zip(axes, panels):
        curves = run.curve(key)
        for s in range(curves.shape[1]):
            ax.plot(run.steps, curves[:, s], color=f"C{s}", lw=0.9, alpha=0.75, label=f"seed {s}")
        ax.plot(run.steps, curves.mean(1), color="black", lw=1.8, label="mean")
        ax.axhline(chance, color="grey", lw=0.7, ls=":")
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("training step")
        if key != "loss_query":
            ax.set_ylim(-0.02, 1.02)
    for s, r in enumerate(rows):
        axes[0].scatter([r["peak_step"]], [r["peak"]], color=f"C{s}", marker="v", s=30, zorder=3)
    axes[0].set_ylabel("accuracy (dotted: chance; ▼ smoothed ICL peak)")
    axes[0].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, f"Transience: does ICL give way to IWL with long training? (α = 0, "
                                  f"K = {run.cfg.task.n_classes}; beside Singh et al. 2023 Fig. 1)")


def _trained_note(run) -> tuple[list[bool], str]:
    ok = trained(run.final("loss_query"), math.log(run.cfg.task.n_labels))
    return ok, "" if all(ok) else f"{len(ok) - sum(ok)} of {len(ok)} seeds did not train (query loss not below chance)"


def _sweep_claims(sweep) -> list[dict]:
    claims = []
    alphas = list(sweep)
    deviation = SWEEP_DEVIATION.format(steps=int(sweep[alphas[0]].steps[-1]))
    n_labels = sweep[alphas[0]].cfg.task.n_labels
    icl = {a: normalised(sweep[a].final(ICL_KEY), ICL_CHANCE) for a in alphas}
    iwl = {a: normalised(sweep[a].final(IWL_KEY), 1 / n_labels) for a in alphas}
    paper = ("Chan et al. 2022, Zipf-exponent sweep (bursty training, Zipf-distributed classes): as the Zipf exponent "
             "rises, in-weights learning of the common classes rises and in-context learning on held-out classes "
             "falls; around α = 1 the model does both")
    if 1.0 in sweep:
        run = sweep[1.0]
        ok, untrained = _trained_note(run)
        both = [float(min(a, b)) if t else None for a, b, t in zip(icl[1.0], iwl[1.0], ok)]
        claims.append(claim(
            "coexist_alpha1", "At Zipf exponent α = 1 the same model learns both in context (held-out classes) and "
            "in weights (common classes), each well above chance.",
            "per seed, the smaller of ICL and IWL normalised accuracy, (acc − chance) / (1 − chance), at the end",
            both, f"95 % CI of the mean above {COEXIST} (both at least halfway from chance to perfect)",
            ci_beyond(both, COEXIST, "above"), paper=paper, not_measured=untrained if not any(ok) else "",
            note=f"ICL (2-way) per seed {', '.join(f'{v:.2f}' for v in run.final(ICL_KEY))}; IWL common "
                 f"{', '.join(f'{v:.2f}' for v in run.final(IWL_KEY))}; IWL rare "
                 f"{', '.join(f'{v:.2f}' for v in run.final(RARE_KEY))}" + (f"; {untrained}" if untrained else "")
                 + "; " + deviation))
    lo, hi = alphas[0], alphas[-1]
    means_icl = [float(icl[a].mean()) for a in alphas]
    means_iwl = [float(iwl[a].mean()) for a in alphas]
    measurable = len(alphas) >= 2 and all(any(_trained_note(sweep[a])[0]) for a in alphas)
    why = "" if measurable else "a condition of the sweep did not train (query loss not below chance)"
    claims.append(claim(
        "icl_falls_with_alpha", f"In-context learning falls as the Zipf exponent rises from α = {lo:g} to {hi:g}.",
        f"final ICL normalised accuracy (mean over seeds) at α = {', '.join(f'{a:g}' for a in alphas)}", means_icl,
        f"α = {lo:g} minus α = {hi:g} >= {TREND}, and never rising by more than {SLACK} from one α to the next",
        means_icl[0] - means_icl[-1] >= TREND and all(b <= a + SLACK for a, b in zip(means_icl, means_icl[1:])),
        unit=CONDITION, paper=paper, not_measured=why, note=deviation))
    claims.append(claim(
        "iwl_rises_with_alpha", f"In-weights learning of the common classes rises with the Zipf exponent from "
        f"α = {lo:g} to {hi:g}.",
        f"final IWL (common classes) normalised accuracy (mean over seeds) at α = {', '.join(f'{a:g}' for a in alphas)}",
        means_iwl, f"α = {hi:g} minus α = {lo:g} >= {TREND}, and never falling by more than {SLACK} from one α to the next",
        means_iwl[-1] - means_iwl[0] >= TREND and all(b >= a - SLACK for a, b in zip(means_iwl, means_iwl[1:])),
        unit=CONDITION, paper=paper, not_measured=why, note=deviation))
    return claims


def _transience_claims(run, rows, full_steps: int) -> list[dict]:
    """Transience claims over the seeds that trained, whose ICL rose and whose IWL took over by the end;
    not measured (with the reason) where no seed qualifies: the run was too short for the event."""
    ok, untrained = _trained_note(run)
    iwl, loss, open_icl = run.curve(IWL_KEY), run.curve("loss_query"), run.curve("acc_icl")
    iwl_final = normalised(iwl[-SMOOTH:].mean(0), 1 / run.cfg.task.n_labels)
    rose = [r["rose"] and t for r, t in zip(rows, ok)]
    took_over = [bool(v >= IWL_LEARNED) for v in iwl_final]
    use = [a and b for a, b in zip(rose, took_over)]
    if not any(ok):
        why = untrained
    elif not any(rose):
        why = (f"in-context accuracy never rose to {ICL_CHANCE + ROSE:g} in any seed that trained: no ICL to fade "
               f"at this scale; `--full` trains {full_steps} steps")
    elif not any(use):
        why = (f"in-weights learning never took over within the run (final normalised IWL accuracy "
               f"{', '.join(f'{v:.2f}' for v in iwl_final)}, none >= {IWL_LEARNED}): too short to show ICL giving way "
               f"to IWL; `--full` trains {full_steps} steps")
    else:
        why = ""
    paper = ("Singh et al. 2023 Fig. 1 (also Chan et al. 2022 appendix): ICL emerges, then disappears and gives way to "
             "IWL with long training, all while the training loss decreases; they found it at 12 layers over millions of "
             "steps and that L2 regularisation makes ICL persist (no weight decay here)")
    idx = [int(np.flatnonzero(run.steps == r["peak_step"])[0]) for r in rows]
    per_seed = "; ".join(
        f"seed {s}: ICL peak {r['peak']:.2f} at step {r['peak_step']:.0f} -> {r['final']:.2f} (over all labels "
        f"{open_icl[i, s]:.2f} -> {open_icl[-SMOOTH:, s].mean():.2f}), IWL {iwl[i, s]:.2f} -> {iwl[-SMOOTH:, s].mean():.2f}" + ("" if u else " (not counted: " + ("ICL never rose" if not ro else
                                                                           "IWL never took over") + ")")
        for s, (r, i, ro, u) in enumerate(zip(rows, idx, rose, use)))
    drops = [r["drop"] if u else None for r, u in zip(rows, use)]
    fall = [float(loss[-SMOOTH:, s].mean() - loss[i, s]) if u else None for s, (i, u) in enumerate(zip(idx, use))]
    counted = (f"seeds whose ICL rose (smoothed accuracy >= {ICL_CHANCE + ROSE:g}) and whose IWL took over (final "
               f"normalised IWL >= {IWL_LEARNED})")
    return [claim("icl_transient", "In-context accuracy peaks and then fades as in-weights learning takes over.",
                  f"per seed ({counted}): smoothed peak − final ICL accuracy (held-out classes, 2-way)", drops,
                  f"95 % CI of the mean above {FADE}", ci_beyond(drops, FADE, "above"), paper=paper,
                  not_measured=why, note=per_seed + (f"; {untrained}" if untrained and any(ok) else "") + "; "
                  + TRANSIENCE_DEVIATION.format(steps=int(run.steps[-1]))),
            claim("loss_falls_while_icl_fades", "The training query loss keeps falling after the ICL peak.",
                  f"per seed ({counted}): final query loss − query loss at the ICL peak (nats)", fall,
                  "95 % CI of the mean below 0", ci_beyond(fall, 0.0, "below"), paper=paper, not_measured=why,
                  note=TRANSIENCE_DEVIATION.format(steps=int(run.steps[-1])))]


def conditions(exp) -> tuple[dict, tuple]:
    """{α: (label, overrides)} of the sweep and (label, overrides) of the transience run, for the mode."""
    seeds = exp.seeds(1, 5, 5)
    alphas = exp.pick((0.0, 1.0), (0.0, 1.0, 2.0), (0.0, 0.5, 1.0, 1.5, 2.0))
    common = [f"experiment={PRESET}", f"train.seeds={seeds}", f"task.probe_size={exp.pick(32, 256, 512)}"]
    sweep = {a: (f"alpha{a:g}", common + [f"task.zipf_alpha={a}", f"train.steps={exp.pick(30, 6000, 20000)}",
                                          f"train.log_every={exp.pick(10, 100, 500)}"]) for a in alphas}
    trans = (f"transient_K{TRANSIENCE_CLASSES}", common + [
        "task.zipf_alpha=0", f"task.n_classes={TRANSIENCE_CLASSES}",
        f"train.steps={exp.pick(30, 8000, FULL_TRANSIENCE_STEPS)}", f"train.log_every={exp.pick(10, 200, 500)}"])
    return sweep, trans


def main(argv=None):
    exp = Experiment("chan_icl_iwl", "In-context vs in-weights learning: Zipf exponent and transience",
                     "Chan et al. 2022; Singh et al. 2023", argv)
    sweep_conditions, trans_condition = conditions(exp)
    sweep = {a: exp.run(label, overrides) for a, (label, overrides) in sweep_conditions.items()}
    # smoke: the α = 0 run stands in for the long one (one compile fewer; smoke verdicts mean nothing)
    trans = sweep[0.0] if exp.smoke else exp.run(*trans_condition)
    rows = [transience(trans.steps, trans.curve(ICL_KEY)[:, s]) for s in range(trans.curve(ICL_KEY).shape[1])]
    claims = _sweep_claims(sweep) + _transience_claims(trans, rows, FULL_TRANSIENCE_STEPS)
    figs = [_figure_sweep(sweep, exp.figure_path("zipf_sweep.png")),
            _figure_curves(sweep, trans, exp.figure_path("curves.png")),
            _figure_transience(trans, rows, exp.figure_path("transience.png"))]
    finals = {run.label: {k: run.final(k).tolist() for k in (ICL_KEY, IWL_KEY, RARE_KEY, "loss_query")}
              for run in [*sweep.values(), trans]}
    exp.finish(claims, figs, extra={"final": finals, "transience": rows})


if __name__ == "__main__":
    script_main(lambda: main())
