"""Statistical induction heads (Edelman et al. 2024, "The evolution of statistical induction heads:
in-context learning Markov chains").

Their model and optimiser (preset `edelman`; their code: github.com/EzraEdelman/Evolution-of-Statistical-
Induction-Heads, training_pipeline.py, mingpt/model_rpe.py, mingpt/trainer.py, datasets.py): a 2-layer
attention-only transformer, 1 head per layer, d_model 16, pre-LayerNorm, learned relative positions
(Shaw et al.: a key-side vector per offset i - j added to the scores, `model.pos_embed=relative`), no
absolute positions; AdamW lr 5e-4, betas (0.9, 0.95), weight decay 0.1, constant lr; batch 64; k = 3
states, 101-token sequences (100 predictions), Dirichlet(1) rows; 2000 steps.

Two conditions, both measured on the same probe of Dirichlet chains (task.probe_transitions):
  - markov: trained on Dirichlet chains (task.transitions=dirichlet);
  - doubly_stochastic: their control, trained on chains whose transition matrix is uniform on the
    Birkhoff polytope (their rejection sampler), so the stationary distribution is uniform and the
    in-context unigram predictor is worth nothing: no unigram solution to stop at.
The model is compared during training with the two in-context predictors that bracket it: the unigram
one (state frequencies in the context) and the bigram one (transition counts; Bayes optimal for
Dirichlet chains). KL(predictor || model) on the probe tracks which one the model is closest to.

Claims (Dirichlet run): training passes through the unigram solution and stays there for a stretch
(a plateau: steps at which KL to the bigram predictor is >= 2x KL to the unigram one), then moves
abruptly to the bigram solution as the statistical induction head forms (layer 1 attends to the tokens
that followed earlier occurrences of the current token). Control, paired by seed (same initialisation):
less time at the unigram solution, and the bigram transition (the first step where the probe loss is
below halfway from the unigram predictor's loss to the bigram one's) earlier.

Stages per seed: summary.json's change-point stages of loss_markov (chance -> unigram -> bigram);
the unigram stage is the step where KL to the unigram predictor is smallest before the model gets
closer to the bigram predictor; the transition to bigram is a change-point transition of KL to the
bigram predictor after that step. Its timing against the induction head compares onsets: where KL to
the bigram predictor starts to fall, and where the first layer-1 head that becomes a statistical
induction head starts to rise.

Deviations from their code: no dropout (theirs 0.1 on embeddings, attention, residual and relative
vectors; the lab's model has none); weight decay on every parameter (theirs: linear maps only); W_O
initialised with std 0.02 (theirs 0.01); the loss plotted is the mean over positions >= 16 of the probe
(theirs: the last token's); 5 seeds by default (their mixture figure: 10).

    python -m experiments.edelman_markov          # 5 seeds x 2000 steps per condition, their scale
    python -m experiments.edelman_markov --full   # 10 seeds x 4000 steps per condition (GPU node)
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import (CONDITION, CONTROL, Experiment, all_measured, ci_beyond, claim, crossing_step,
                                measured_note, save_figure, script_main, trained)
from lab.analysis.stages import detect_stages

ORDER = 6                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "edelman"         # configs/experiment/edelman.yaml: task=markov on the 2-layer attention-only model
REACHED = 0.25        # unigram stage: KL to the unigram predictor <= 1/4 of its value at initialisation
CLOSER = 2.0          # ... and KL to bigram >= 2x KL to unigram there
BIGRAM_LEFT = 0.2     # bigram stage: final loss within 20 % of the unigram-bigram gap above the bigram loss
COINCIDE_FRAC = 0.10  # transition and induction-head midpoints within 10 % of the run
PLATEAU_FRAC = 0.10   # the unigram plateau: on average more than 10 % of the run
STEPS, FULL_STEPS = 2000, 4000   # their 2000 steps at batch 64; --full twice as long, for late seeds


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


def _figure(run, control, st, t_run, t_control, threshold, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = run.steps
    blue, red = "tab:blue", "tab:red"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for r, colour, ts, name in ((run, blue, t_run, "Dirichlet chains"), (control, red, t_control, "doubly stochastic (control)")):
        curves = r.curve("loss_markov")
        for s in range(curves.shape[1]):
            ax.plot(steps, curves[:, s], color=colour, alpha=0.35, lw=0.9)
        ax.plot(steps, curves.mean(1), color=colour, lw=2, label=f"trained on {name}")
        for t in ts:
            if t is not None:
                ax.axvline(t, color=colour, ls=":", lw=0.8, alpha=0.7)
    for key, colour, label in (("loss_unigram", "tab:orange", "unigram predictor"),
                               ("loss_bigram", "tab:green", "bigram predictor (Bayes)")):
        ax.axhline(float(np.nanmean(run.curve(key))), color=colour, ls="--", lw=1, label=label)
    ax.axhline(run.summary["chance_loss"], color="grey", ls="--", lw=1, label="uniform (ln k)")
    ax.axhline(threshold, color="black", ls=":", lw=0.8, label="halfway unigram → bigram")
    top = run.summary["chance_loss"] + 0.02
    ax.set_ylim(float(np.nanmean(run.curve("loss_bigram"))) - 0.03, top)
    ax.set_title("test loss on Dirichlet chains (mean, seeds faint)\nvertical dotted: each seed's bigram transition", fontsize=10)
    ax.set_ylabel("loss after burn-in (nats)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for r, ls, name in ((run, "-", "Dirichlet"), (control, "--", "control")):
        for key, colour, label in (("kl_unigram", "tab:orange", "unigram"), ("kl_bigram", "tab:green", "bigram")):
            c = r.curve(key)
            for s in range(c.shape[1]):
                ax.plot(steps, c[:, s], color=colour, ls=ls, alpha=0.6 if ls == "-" else 0.35, lw=1,
                        label=f"KL({label} ‖ model), {name}" if s == 0 else None)
    for x in st:
        ax.axvline(x["unigram_step"], color="tab:orange", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_title("distance to each predictor on Dirichlet chains\n(dotted: unigram stage of the Dirichlet run)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    for r, colour, name in ((run, blue, "Dirichlet"), (control, red, "control")):
        ind = r.curve("induction")[:, :, 1].max(axis=-1)
        prev = r.curve("prev_token_corrected")[:, :, 0].max(axis=-1)
        for s in range(ind.shape[1]):
            ax.plot(steps, ind[:, s], color=colour, alpha=0.8, lw=1.1,
                    label=f"layer 1 statistical induction, {name}" if s == 0 else None)
            ax.plot(steps, prev[:, s], color=colour, alpha=0.5, lw=0.9, ls="--",
                    label=f"layer 0 previous token (corrected), {name}" if s == 0 else None)
    ax.set_ylim(-0.1, 1.05)
    ax.set_title("head scores on Dirichlet chains", fontsize=10)
    ax.legend(fontsize=7)
    for a in axes:
        a.set_xlabel("training step")
    return save_figure(fig, path, f"In-context Markov chains (k = {run.cfg.task.n_states}): uniform → unigram → bigram, "
                                  "and the doubly-stochastic control")


def bigram_step(run, seed: int, threshold: float):
    """First logged step where the loss on the probe is below `threshold` (halfway from the bigram
    predictor's loss to the unigram one's): when the model passed the bigram transition."""
    return crossing_step(run.steps, run.curve("loss_markov")[:, seed], threshold)


def closer_to_unigram_steps(run, seed: int) -> float:
    """Logged steps (x the log interval) before the model's last step closer to the unigram predictor, at
    which KL(bigram‖model) >= CLOSER x KL(unigram‖model): the time spent at the unigram solution."""
    return stages(run, seed)["unigram_plateau_steps"]


def _control_unigram_uninformative(run) -> tuple[float, float]:
    """(unigram predictor's loss, chance) on the control's own chains: by construction no better than chance."""
    from dataclasses import replace

    from lab.tasks import make_task
    own = replace(make_task(run.cfg.task), probe_transitions=None)
    return own.baseline_losses()[0], own.chance_loss


def main(argv=None):
    exp = Experiment("edelman_markov", "Statistical induction heads", "Edelman et al. 2024", argv)
    seeds = exp.seeds(1, 5, 10)
    steps = exp.pick(30, STEPS, FULL_STEPS)
    common = [f"experiment={PRESET}", f"train.seeds={seeds}", f"train.steps={steps}"]
    run = exp.run("markov", common)
    control = exp.run("doubly_stochastic", common + ["task.transitions=doubly_stochastic",
                                                    "task.probe_transitions=dirichlet"])
    st = [stages(run, s) for s in range(seeds)]
    loss, uni, bi = run.final("loss_markov"), run.final("loss_unigram"), run.final("loss_bigram")
    left = (loss - bi) / (uni - bi)
    chance = run.summary["chance_loss"]
    ok = trained(loss, chance, margin=0.0)
    untrained = "" if all(ok) else f"{len(ok) - sum(ok)} of {len(ok)} seeds did not train (final loss not below chance)"
    c_loss = control.final("loss_markov")
    c_ok = trained(c_loss, chance, margin=0.0)
    c_untrained = "" if all(c_ok) else (f"{len(c_ok) - sum(c_ok)} of {len(c_ok)} control seeds did not train "
                                        "(final loss on Dirichlet chains not below chance)")
    loss_stages = run.summary["phase"]["loss_markov"]["stages"]
    n_stages = [s["n_stages"] for s in loss_stages]
    onsets = [s["bigram_onset"] for s in st]
    ind_on = [run.first_formed_onset("induction", s, min_layer=1)[0] for s in range(seeds)]
    gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(onsets, ind_on)]
    tol = COINCIDE_FRAC * steps
    plateau = [closer_to_unigram_steps(run, s) for s in range(seeds)]
    c_plateau = [closer_to_unigram_steps(control, s) for s in range(seeds)]
    threshold = float(np.mean(bi) + 0.5 * (np.mean(uni) - np.mean(bi)))
    t_run = [bigram_step(run, s, threshold) for s in range(seeds)]
    t_control = [bigram_step(control, s, threshold) for s in range(seeds)]
    # a seed whose Dirichlet run never crossed counts with the run's length (the difference is then a lower bound)
    earlier = [None if tc is None else (steps if tr is None else tr) - tc for tr, tc in zip(t_run, t_control)]
    c_left = (c_loss - control.final("loss_bigram")) / (control.final("loss_unigram") - control.final("loss_bigram"))
    uni_ds, chance_ds = _control_unigram_uninformative(control)
    claims = [
        claim("loss_two_stages", "The loss falls in two stages: from chance to the unigram solution, then to the bigram one.",
              "seeds whose loss_markov has >= 2 change-point transitions (>= 3 stages)", [n >= 3 for n in n_stages],
              "every seed", all(n >= 3 for n in n_stages), not_measured=untrained,
              paper="uniform -> unigram -> bigram",
              note="stage levels per seed: " + "; ".join(" -> ".join(f"{v:.3f}" for v in s.get("levels", [])) for s in loss_stages)
                   + f" (chance {chance:.3f}, unigram {float(np.mean(uni)):.3f}, bigram {float(np.mean(bi)):.3f})"),
        claim("unigram_stage_reached", "Training first converges towards the in-context unigram predictor.",
              "KL(unigram‖model) at the unigram stage / at initialisation", [s["kl_unigram_drop"] for s in st],
              f"<= {REACHED} in every seed", all(s["kl_unigram_drop"] <= REACHED for s in st),
              paper="a plateau at the unigram solution precedes the bigram one", not_measured=untrained),
        claim("unigram_stage_closer", "At that stage the model is much closer to the unigram than to the bigram predictor.",
              "KL(bigram‖model) / KL(unigram‖model) at the unigram stage", [s["ratio"] for s in st],
              f">= {CLOSER} in every seed", all(s["ratio"] >= CLOSER for s in st), not_measured=untrained),
        claim("unigram_plateau", "The model stays at the unigram solution for a stretch of training (a plateau).",
              f"steps at which KL(bigram‖model) >= {CLOSER} x KL(unigram‖model), before the bigram transition",
              plateau, f"mean > {PLATEAU_FRAC:.0%} of the run ({PLATEAU_FRAC * steps:.0f} steps), 95 % interval above it",
              ci_beyond(plateau, PLATEAU_FRAC * steps, "above"), not_measured=untrained,
              paper="a long plateau at the unigram loss before the drop to the bigram loss"),
        claim("bigram_transition", "The model then passes to the bigram solution in an abrupt transition.",
              "seeds with a change-point transition in KL(bigram‖model) after the unigram stage",
              [m is not None for m in onsets], "every seed", all(m is not None for m in onsets),
              paper="an abrupt drop from the unigram to the bigram loss after a long unigram plateau",
              not_measured=untrained, note="per seed: " + "; ".join(s["bigram_reason"] for s in st)),
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
        claim("control_unigram_uninformative",
              "On doubly-stochastic chains the in-context unigram predictor is no better than the uniform guess.",
              "unigram predictor's loss − ln k on the control's own chains (probe)", [uni_ds - chance_ds],
              ">= 0 (by construction: uniform stationary distribution)", uni_ds >= chance_ds - 1e-3,
              kind=CONTROL, unit=CONDITION, paper="doubly-stochastic chains remove the unigram solution's use"),
        claim("control_no_unigram_stage",
              "Trained on doubly-stochastic chains, the model spends less time at the unigram solution.",
              "steps closer to unigram (as in unigram_plateau): Dirichlet run − control, paired by seed",
              [a - b for a, b in zip(plateau, c_plateau)], "mean > 0, 95 % interval above 0",
              ci_beyond([a - b for a, b in zip(plateau, c_plateau)], 0.0, "above"),
              not_measured=untrained or c_untrained, paper="no unigram stage without a useful unigram solution",
              note="both measured on the same Dirichlet probe; control per seed: " + ", ".join(f"{v:.0f}" for v in c_plateau)),
        claim("control_bigram_earlier",
              "Without a useful unigram solution the bigram transition comes earlier.",
              "step where the loss on Dirichlet chains first falls halfway from the unigram to the bigram "
              "predictor's: Dirichlet run − control, paired by seed (same initialisation)", earlier,
              "mean > 0, 95 % interval above 0", ci_beyond(earlier, 0.0, "above"),
              not_measured=untrained or c_untrained,
              paper="training on doubly-stochastic chains reaches the bigram solution faster (their Fig. 5)",
              note="; ".join(filter(None, [
                  "Dirichlet run " + ", ".join("never" if t is None else f"{t:.0f}" for t in t_run),
                  "control " + ", ".join("never" if t is None else f"{t:.0f}" for t in t_control),
                  "" if all(t is not None for t in t_run) else
                  f"a Dirichlet seed that never crossed counts as {steps} (a lower bound on its difference)",
                  measured_note(earlier)]))),
        claim("control_reaches_bigram",
              "The control's statistical induction head carries over: on Dirichlet chains it ends near the bigram loss.",
              "(loss − bigram loss) / (unigram loss − bigram loss) on the Dirichlet probe", c_left,
              f"<= {BIGRAM_LEFT} in every seed", bool(np.all(c_left <= BIGRAM_LEFT)), not_measured=c_untrained,
              paper="not the paper's claim: the lab's check of the control (they test it on Dirichlet chains too)",
              note="the bigram predictor here is the Bayes one for Dirichlet rows; a model trained on doubly-stochastic "
                   "chains learns the estimate for its own prior, whose rows are tied by the column sums, so on "
                   "Dirichlet chains it can sit above the Dirichlet Bayes loss while still counting transitions"),
    ]
    fig = _figure(run, control, st, t_run, t_control, threshold, exp.figure_path("markov_stages.png"))
    exp.finish(claims, [fig], extra={
        "stages": st, "bigram_step": {"dirichlet": t_run, "doubly_stochastic": t_control, "threshold": threshold},
        "final": {"loss": loss.tolist(), "unigram": uni.tolist(), "bigram": bi.tolist(), "control_loss": c_loss.tolist()}})


if __name__ == "__main__":
    script_main(lambda: main())
