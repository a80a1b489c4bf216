"""Statistical induction heads (Edelman et al. 2024, "The evolution of statistical induction heads:
in-context learning Markov chains").

A 2-layer attention-only transformer on in-context Markov chains (task=markov: a fresh k-state
chain per sequence) is compared during training with the two in-context predictors that bracket it:
the unigram one (state frequencies in the context) and the bigram one (transition counts; Bayes
optimal). KL(predictor || model) on the probe tracks which one the model is closest to. Claims:
training passes through the unigram solution, then moves abruptly to the bigram solution, and that
transition comes with the statistical induction head (layer 1 attends to tokens that followed earlier
occurrences of the current token).

Stages per seed: the unigram stage is the step where KL to the unigram predictor is smallest before
the model gets closer to the bigram predictor; the transition is abrupt if a phase change is fitted
(lab.analysis.phase.detect) to KL to the bigram predictor after that step. Its timing against the induction
head uses threshold crossings: the step where KL to the bigram predictor falls below KL to the
unigram one, and the step where a layer-1 head's induction score exceeds the lab's score threshold.

    python -m experiments.edelman_markov          # 3 seeds x 2000 steps
    python -m experiments.edelman_markov --full   # 5 seeds x 4000 steps
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import Experiment, all_measured, claim, crossing_step, measured_note, save_figure, script_main

ORDER = 6                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "edelman"         # configs/experiment/edelman.yaml: task=markov on the 2-layer attention-only model
REACHED = 0.25        # unigram stage: KL to the unigram predictor <= 1/4 of its value at initialisation
CLOSER = 2.0          # ... and KL to bigram >= 2x KL to unigram there
BIGRAM_LEFT = 0.2     # bigram stage: final loss within 20 % of the unigram-bigram gap above the bigram loss
COINCIDE_FRAC = 0.10  # transition and induction-head midpoints within 10 % of the run


def stages(run, seed: int) -> dict:
    """The unigram stage (step of minimal KL to the unigram predictor before the bigram transition)
    and the bigram transition (a phase change in KL to the bigram predictor after it)."""
    steps = run.steps
    kl_uni, kl_bi = run.curve("kl_unigram")[:, seed], run.curve("kl_bigram")[:, seed]
    # Before the bigram transition: while the model is still closer to the unigram predictor.
    closer_uni = np.flatnonzero(kl_uni < kl_bi)
    last = closer_uni[-1] if closer_uni.size else 0
    i_uni = int(np.nanargmin(kl_uni[: last + 1]))
    drop = 0.5 * float(kl_bi[i_uni] - np.nanmin(kl_bi[i_uni:])) if i_uni < len(steps) - 1 else 0
    fit = run.fit(kl_bi[i_uni:], "decrease", min_amplitude=drop, steps=steps[i_uni:])
    plateau = (kl_bi >= CLOSER * kl_uni)[: last + 1]
    return {"unigram_step": float(steps[i_uni]), "kl_unigram_at": float(kl_uni[i_uni]),
            "kl_unigram_drop": float(kl_uni[i_uni] / kl_uni[0]),
            "unigram_plateau_steps": float(plateau.sum() * (steps[1] - steps[0])) if len(steps) > 1 else 0.0,
            "kl_bigram_at": float(kl_bi[i_uni]), "ratio": float(kl_bi[i_uni] / max(kl_uni[i_uni], 1e-9)),
            "bigram_fit": fit, "bigram_mid": fit["midpoint"] if fit["detected"] else None}


def _figure(run, st, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = run.steps
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(steps, run.curve("loss_markov"), color="tab:blue", alpha=0.7, lw=1.1)
    for key, colour, label in (("loss_unigram", "tab:orange", "unigram predictor"),
                               ("loss_bigram", "tab:green", "bigram predictor (Bayes)")):
        ax.axhline(float(np.nanmean(run.curve(key))), color=colour, ls="--", lw=1, label=label)
    ax.axhline(run.summary["chance_loss"], color="grey", ls=":", lw=1, label="uniform (chance)")
    ax.set_title("model loss after burn-in (per seed)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for s in range(run.curve("kl_unigram").shape[1]):
        ax.plot(steps, run.curve("kl_unigram")[:, s], color="tab:orange", alpha=0.7, lw=1.1,
                label="KL(unigram ‖ model)" if s == 0 else None)
        ax.plot(steps, run.curve("kl_bigram")[:, s], color="tab:green", alpha=0.7, lw=1.1,
                label="KL(bigram ‖ model)" if s == 0 else None)
        ax.axvline(st[s]["unigram_step"], color="tab:orange", ls=":", lw=0.9)
        if st[s]["bigram_mid"] is not None:
            ax.axvline(st[s]["bigram_mid"], color="tab:red", lw=0.9)
    ax.set_yscale("log")
    ax.set_title("distance to each predictor\n(dotted: unigram stage, red: bigram transition)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ind = run.curve("induction")[:, :, 1].max(axis=-1)
    prev = run.curve("prev_token_corrected")[:, :, 0].max(axis=-1)
    for s in range(ind.shape[1]):
        ax.plot(steps, ind[:, s], color="tab:green", alpha=0.8, lw=1.1, label="layer 1: statistical induction" if s == 0 else None)
        ax.plot(steps, prev[:, s], color="tab:purple", alpha=0.8, lw=1.1, ls="--",
                label="layer 0: previous token (corrected)" if s == 0 else None)
        if st[s]["bigram_mid"] is not None:
            ax.axvline(st[s]["bigram_mid"], color="tab:red", lw=0.9)
    ax.set_ylim(-0.1, 1.05)
    ax.set_title("strongest head per layer")
    ax.legend(fontsize=8)
    for a in axes:
        a.set_xlabel("training step")
    return save_figure(fig, path, "In-context Markov chains: uniform → unigram → bigram")


def main(argv=None):
    exp = Experiment("edelman_markov", "Statistical induction heads", "Edelman et al. 2024", argv)
    seeds = exp.seeds(1, 3, 5)
    steps = exp.pick(30, 2000, 4000)
    run = exp.run("markov", [f"experiment={PRESET}", f"train.seeds={seeds}", f"train.steps={steps}"])
    st = [stages(run, s) for s in range(seeds)]
    loss, uni, bi = run.final("loss_markov"), run.final("loss_unigram"), run.final("loss_bigram")
    left = (loss - bi) / (uni - bi)
    mids = [s["bigram_mid"] for s in st]
    # Threshold crossings, not sigmoid midpoints: the transition starts right at the short unigram stage,
    # where a sigmoid fit of the whole rise puts its midpoint before the window.
    crossover = [crossing_step(run.steps, run.curve("kl_bigram")[:, s] - run.curve("kl_unigram")[:, s], 0.0)
                 for s in range(seeds)]
    score_thr = run.summary["thresholds"]["induction"]
    ind_cross = [crossing_step(run.steps, run.curve("induction")[:, s, 1].max(-1), score_thr, "increase")
                 for s in range(seeds)]
    gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(crossover, ind_cross)]
    tol = COINCIDE_FRAC * steps
    claims = [
        claim("unigram_stage_reached", "Training first converges towards the in-context unigram predictor.",
              "KL(unigram‖model) at the unigram stage / at initialisation", [s["kl_unigram_drop"] for s in st],
              f"<= {REACHED} in every seed", all(s["kl_unigram_drop"] <= REACHED for s in st),
              paper="a plateau at the unigram solution precedes the bigram one"),
        claim("unigram_stage_closer", "At that stage the model is much closer to the unigram than to the bigram predictor.",
              "KL(bigram‖model) / KL(unigram‖model) at the unigram stage", [s["ratio"] for s in st],
              f">= {CLOSER} in every seed", all(s["ratio"] >= CLOSER for s in st)),
        claim("bigram_transition", "The model then passes to the bigram solution in an abrupt transition.",
              "fraction of seeds with a phase change in KL(bigram‖model) after the unigram stage",
              [m is not None for m in mids], "= 1 (every seed)", all(m is not None for m in mids),
              paper="an abrupt drop from the unigram to the bigram loss after a long unigram plateau",
              note="per seed: " + "; ".join(s["bigram_fit"]["reason"] for s in st)
                   + ". Steps spent closer to unigram (KL ratio >= 2) before it: "
                   + ", ".join(f"{s['unigram_plateau_steps']:.0f}" for s in st)),
        claim("bigram_solution", "At the end of training the model predicts like the bigram (Bayes) predictor.",
              "(loss − bigram loss) / (unigram loss − bigram loss)", left, f"<= {BIGRAM_LEFT} in every seed",
              bool(np.all(left <= BIGRAM_LEFT)), paper="the loss reaches the bigram predictor's"),
        claim("induction_head_at_transition",
              "The bigram transition coincides with the formation of a statistical induction head in layer 1.",
              f"|step where KL(bigram‖model) falls below KL(unigram‖model) − step where a layer-1 head's "
              f"induction score exceeds {score_thr}|", gaps,
              f"<= {tol:.0f} steps (10 % of the run) in every seed",
              all_measured(gaps, lambda g: g <= tol),
              paper="the second-layer statistical induction head forms at the bigram transition",
              note=(measured_note(gaps) + "; " if measured_note(gaps) else "") + "crossover steps " + ", ".join(f"{c}" for c in crossover)
                   + "; induction-score crossings " + ", ".join(f"{c}" for c in ind_cross)),
    ]
    fig = _figure(run, st, exp.figure_path("markov_stages.png"))
    exp.finish(claims, [fig], extra={"stages": [{k: v for k, v in s.items() if k != "bigram_fit"} for s in st],
                                     "final": {"loss": loss.tolist(), "unigram": uni.tolist(), "bigram": bi.tolist()}})


if __name__ == "__main__":
    script_main(lambda: main())
