"""Statistical induction heads (Edelman et al. 2024, "The evolution of statistical induction heads:
in-context learning Markov chains").

A 2-layer attention-only transformer on in-context Markov chains (task=markov: a fresh k-state
chain per sequence) is compared during training with the two in-context predictors that bracket it:
the unigram one (state frequencies in the context) and the bigram one (transition counts; Bayes
optimal). KL(predictor || model) on the probe tracks which one the model is closest to. Claims:
training passes through the unigram solution, then moves abruptly to the bigram solution, and that
transition comes with the statistical induction head (layer 1 attends to tokens that followed earlier
occurrences of the current token).

Stages per seed: summary.json's change-point stages of loss_markov (chance -> unigram -> bigram);
the unigram stage is the step where KL to the unigram predictor is smallest before the model gets
closer to the bigram predictor; the transition to bigram is a change-point transition of KL to the
bigram predictor after that step (abrupt: steep enough to cross its whole range within 35 % of the
run). Its timing against the induction head compares onsets: where KL to the bigram predictor
starts to fall, and where the first layer-1 head that becomes a statistical induction head starts
to rise. A sigmoid fit of the whole fall is not used: the fall starts at once after a short unigram
stage, and the sigmoid then puts its midpoint before the run.

    python -m experiments.edelman_markov          # 5 seeds x 2000 steps
    python -m experiments.edelman_markov --full   # 8 seeds x 4000 steps
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import Experiment, all_measured, claim, measured_note, save_figure, script_main, trained
from lab.analysis.stages import detect_stages

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
    pc = run.cfg.measures.phase
    found = detect_stages(steps[i_uni:], kl_bi[i_uni:], direction="decrease", min_change=max(drop, 1e-9),
                          smooth_window=pc.smooth, penalty=pc.stage_penalty, max_width_frac=pc.max_width_frac)
    fit = max(found["transitions"], key=lambda t: abs(t["change"])) if found["transitions"] else None
    plateau = (kl_bi >= CLOSER * kl_uni)[: last + 1]
    return {"unigram_step": float(steps[i_uni]), "kl_unigram_at": float(kl_uni[i_uni]),
            "kl_unigram_drop": float(kl_uni[i_uni] / kl_uni[0]),
            "unigram_plateau_steps": float(plateau.sum() * (steps[1] - steps[0])) if len(steps) > 1 else 0.0,
            "kl_bigram_at": float(kl_bi[i_uni]), "ratio": float(kl_bi[i_uni] / max(kl_uni[i_uni], 1e-9)),
            "bigram_reason": found["reason"], "bigram_onset": fit["onset"] if fit else None,
            "bigram_mid": fit["midpoint"] if fit else None}


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
    seeds = exp.seeds(1, 5, 8)
    steps = exp.pick(30, 2000, 4000)
    run = exp.run("markov", [f"experiment={PRESET}", f"train.seeds={seeds}", f"train.steps={steps}"])
    st = [stages(run, s) for s in range(seeds)]
    loss, uni, bi = run.final("loss_markov"), run.final("loss_unigram"), run.final("loss_bigram")
    left = (loss - bi) / (uni - bi)
    ok = trained(loss, run.summary["chance_loss"], margin=0.0)
    untrained = "" if all(ok) else f"{len(ok) - sum(ok)} of {len(ok)} seeds did not train (final loss not below chance)"
    loss_stages = run.summary["phase"]["loss_markov"]["stages"]
    n_stages = [s["n_stages"] for s in loss_stages]
    onsets = [s["bigram_onset"] for s in st]
    ind_on = [run.first_formed_onset("induction", s, min_layer=1)[0] for s in range(seeds)]
    gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(onsets, ind_on)]
    tol = COINCIDE_FRAC * steps
    claims = [
        claim("loss_two_stages", "The loss falls in two stages: from chance to the unigram solution, then to the bigram one.",
              "seeds whose loss_markov has >= 2 change-point transitions (>= 3 stages)", [n >= 3 for n in n_stages],
              "every seed", all(n >= 3 for n in n_stages), not_measured=untrained,
              paper="uniform -> unigram -> bigram",
              note="stage levels per seed: " + "; ".join(" -> ".join(f"{v:.3f}" for v in s.get("levels", [])) for s in loss_stages)
                   + f" (chance {run.summary['chance_loss']:.3f}, unigram {float(np.mean(uni)):.3f}, "
                     f"bigram {float(np.mean(bi)):.3f})"),
        claim("unigram_stage_reached", "Training first converges towards the in-context unigram predictor.",
              "KL(unigram‖model) at the unigram stage / at initialisation", [s["kl_unigram_drop"] for s in st],
              f"<= {REACHED} in every seed", all(s["kl_unigram_drop"] <= REACHED for s in st),
              paper="a plateau at the unigram solution precedes the bigram one", not_measured=untrained),
        claim("unigram_stage_closer", "At that stage the model is much closer to the unigram than to the bigram predictor.",
              "KL(bigram‖model) / KL(unigram‖model) at the unigram stage", [s["ratio"] for s in st],
              f">= {CLOSER} in every seed", all(s["ratio"] >= CLOSER for s in st), not_measured=untrained),
        claim("bigram_transition", "The model then passes to the bigram solution in an abrupt transition.",
              "seeds with a change-point transition in KL(bigram‖model) after the unigram stage",
              [m is not None for m in onsets], "every seed", all(m is not None for m in onsets),
              paper="an abrupt drop from the unigram to the bigram loss after a long unigram plateau",
              not_measured=untrained,
              note="per seed: " + "; ".join(s["bigram_reason"] for s in st)
                   + ". Steps spent closer to unigram (KL ratio >= 2) before it: "
                   + ", ".join(f"{s['unigram_plateau_steps']:.0f}" for s in st)),
        claim("bigram_solution", "At the end of training the model predicts like the bigram (Bayes) predictor.",
              "(loss − bigram loss) / (unigram loss − bigram loss)", left, f"<= {BIGRAM_LEFT} in every seed",
              bool(np.all(left <= BIGRAM_LEFT)), paper="the loss reaches the bigram predictor's", not_measured=untrained),
        claim("induction_head_at_transition",
              "The bigram transition coincides with the formation of a statistical induction head in layer 1.",
              "|onset of the fall of KL(bigram‖model) − onset of the rise of the first layer-1 head that becomes a "
              "statistical induction head| (steps)", gaps,
              f"<= {tol:.0f} steps (10 % of the run) in every seed with both",
              all_measured(gaps, lambda g: g <= tol), not_measured=untrained,
              paper="the second-layer statistical induction head forms at the bigram transition",
              note="; ".join(filter(None, [measured_note(gaps), "KL-to-bigram onsets " + ", ".join(f"{c}" for c in onsets)
                                          + "; induction-head onsets " + ", ".join(f"{c}" for c in ind_on)]))),
    ]
    fig = _figure(run, st, exp.figure_path("markov_stages.png"))
    exp.finish(claims, [fig], extra={"stages": st,
                                     "final": {"loss": loss.tolist(), "unigram": uni.tolist(), "bigram": bi.tolist()}})


if __name__ == "__main__":
    script_main(lambda: main())
