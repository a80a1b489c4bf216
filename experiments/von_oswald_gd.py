"""In-context learning by gradient descent (von Oswald et al. 2022, "Transformers learn in-context by
gradient descent"): K layers of linear self-attention trained on in-context linear regression match
K steps of GD++, gradient descent with their curvature correction, and do better than K steps of
plain gradient descent.

Models (configs/experiment/von_oswald.yaml on configs/model/linear_attn.yaml): K = 1, 2, 3 layers of
linear self-attention, one head, no MLP, no LayerNorm, no positions, every token reading the N context
tokens (model.attn_mask=context, as in their code), trained on w ~ N(0, I_d), tokens [x_i, w·x_i],
query [x_q, 0], d = N = 10, U(-1, 1) inputs, no noise. References, logged on the probe at every log
step (lab/tasks/regression.py): one GD step at the population-optimal rate (`gd_loss`), K GD steps
with one fitted rate (`gd_steps_loss`), and K GD++ steps with per-step fitted rates and data
transformations x ← (I − γ_l Σ_i x_i x_iᵀ) x (`gdpp_loss`), fitted on 10 000 sequences as they did.

Their conditions (google-research/self-organising-systems, transformers_learn_icl_by_gd/:
constructed_token_setup.ipynb's config cell, src/config.py, src/train.py, src/data.py): Adam (b1 0.9,
b2 0.98) at lr 1e-3, global-norm clipping at 1e-3 for K <= 2 layers (10 for deeper), weights drawn
with variance 0.002 / K / fan-in (VarianceScaling(0.002 / K)), batch 2048, 5000 steps for one layer
and 50 000 for K-layer models; GD's rate by a grid search on 10 000 tasks, GD++'s (η, γ) by Adam.

Deviations (each also in the preset header and in the verdict's notes):
  - Inputs: their notebook sets input_range = 1, i.e. x ~ U(-0.5, 0.5) (the paper's text says
    U(-1, 1)); the lab keeps U(-1, 1), so every loss here is 4 x theirs (the problem is the same up to
    that scale).
  - The lab's transformer projects the tokens into d_model = 32 with a learned W_F and reads ŷ with a
    learned W_U; theirs adds attention outputs to the raw (d + 1)-dim tokens and reads −ŷ from the
    query's y entry. Both can express GD and GD++ exactly (tests/test_task_regression.py builds them).
  - Scale: batch 256 and 3000-5000 steps with a cosine decay of the rate to 0 (their rate is
    constant over 10 x more steps of an 8 x larger batch; the decay lets these short runs settle);
    `--full` runs their batch and step counts.
  - The one-layer model trains at lr 1e-2 after a 100-step warm-up: at 1e-3 the lab's one-layer model
    (one more small factor, W_U, than theirs) stayed at the saddle at the origin through 3000 steps.
  - GD++'s parameters are fitted by BFGS (from the GD solution) instead of Adam: the same objective.

Claims per K (>= 5 seeds; a seed whose loss did not fall 5 % below chance is left out, and a K with
no trained seed is "not measured"): the model's probe loss against K GD++ steps (relative gap within
±LOSS_TOL, 95 % interval), against K plain GD steps (below it, for K >= 2), and its predictions and
sensitivities to x_q against GD++'s (for K = 1, GD++ is one GD step).

    python -m experiments.von_oswald_gd           # K = 1, 2, 3 x 5 seeds, batch 256, 3000-5000 steps
    python -m experiments.von_oswald_gd --full    # their batch 2048, 5000 (K = 1) / 50 000 (K >= 2) steps
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import (CONDITION, CONTROL, Experiment, ci_beyond, claim, save_figure, script_main,
                                trained)

ORDER = 5                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "von_oswald"      # configs/experiment/von_oswald.yaml: their recipe, a 2-layer model
DEPTHS = (1, 2, 3)
LOSS_TOL = 0.10            # "matches GD++": the 95 % interval of (model − GD++) / GD++ within ±10 %
PRED_TOL = 0.05            # predictions differ by < 5 % of the query target's variance
COS_MIN = 0.95             # their model cosine is ~1 at the end of training


DEVIATIONS = (". Deviations from their code: x ~ U(-1, 1), not U(-0.5, 0.5) (losses 4 x theirs); tokens projected by W_F "
              "into d_model = 32 and read by W_U; batch 256 and a few thousand steps with a cosine decay, not 2048 "
              "x 50 000 at a constant rate (--full); K = 1 at lr 1e-2 (at 1e-3 it stayed at the saddle); GD++ fitted by BFGS")


def init_std(depth: int, fan_in: int = 11) -> float:
    """Their init: VarianceScaling(0.002 / K) with fan-in d + 1 = 11, i.e. std sqrt(0.002 / (11 K))."""
    return math.sqrt(0.002 / depth / fan_in)


def recipe(exp: Experiment, depth: int) -> list[str]:
    """Per-depth overrides on the preset (see the module docstring for why K = 1 differs)."""
    steps = {1: exp.pick(30, 3000, 5000), 2: exp.pick(30, 4000, 50000), 3: exp.pick(30, 5000, 50000)}[depth]
    out = [f"model.n_layers={depth}", f"model.init_std={init_std(depth):.4g}", f"train.steps={steps}"]
    if exp.mode == "full":
        out += ["train.batch_size=2048"]
    if depth == 1:     # the saddle at 1e-3 (module docstring); the decay lets it settle on GD
        out += ["optim.lr=1e-2", "optim.warmup_steps=100"]
    elif exp.mode == "full":
        out += ["optim.schedule=constant"]
    if depth >= 3:     # their clipping for deeper models
        out += ["optim.grad_clip=10"]
    return out


def _figure(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 3.8), sharey=True)
    for ax, (depth, run) in zip(np.atleast_1d(axes), runs.items()):
        loss = run.curve("loss_query")
        ax.plot(run.steps, loss, color="tab:blue", alpha=0.35, lw=1)
        ax.plot(run.steps, np.nanmedian(loss, 1), color="tab:blue", lw=2.2, label=f"trained {depth}-layer LSA (median; seeds thin)")
        ax.axhline(float(run.final("gd_steps_loss").mean()), color="tab:orange", ls="--", lw=1.6,
                   label=f"{depth} step{'s' if depth > 1 else ''} of GD")
        if depth > 1:
            ax.axhline(float(run.final("gdpp_loss").mean()), color="tab:green", ls="--", lw=1.6, label=f"{depth} steps of GD++")
        ax.axhline(run.summary["chance_loss"], color="grey", ls=":", lw=1, label="predict 0 (chance)")
        ax.set_title(f"K = {depth} layer{'s' if depth > 1 else ''}")
        ax.set_xlabel("training step")
        ax.set_ylim(0, run.summary["chance_loss"] * 1.1)
        ax.legend(fontsize=8, loc="upper right")
    np.atleast_1d(axes)[0].set_ylabel("query loss ½(ŷ − y)² (probe)")
    return save_figure(fig, path, "Linear self-attention trained on in-context regression vs K steps of GD and GD++")


def _agreement_figure(runs, target_var, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    colours = {1: "tab:blue", 2: "tab:green", 3: "tab:purple"}
    for depth, run in runs.items():
        c = colours.get(depth)
        axes[0].plot(run.steps, np.nanmedian(run.curve("pred_distance_gdpp") / target_var, 1), color=c, lw=2,
                     label=f"K = {depth}")
        axes[1].plot(run.steps, np.nanmedian(run.curve("sensitivity_cosine_gdpp"), 1), color=c, lw=2, label=f"K = {depth}")
        axes[2].scatter(np.full(run.final("loss_query").shape, depth), run.final("loss_query"), color=c, s=22, zorder=3,
                        alpha=0.7, label=f"trained {depth}-layer model (per seed)")
    ks = list(runs)
    axes[2].plot(ks, [float(runs[k].final("gd_steps_loss").mean()) for k in ks], "s--", color="tab:orange", label="K steps of GD")
    axes[2].plot(ks, [float(runs[k].final("gdpp_loss").mean()) for k in ks], "o--", color="k", mfc="white",
                 label="K steps of GD++")
    axes[0].axhline(PRED_TOL, color="grey", ls=":", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_title("preds diff: mean (ŷ − ŷ_GD++)² / Var(y_q)")
    axes[1].axhline(COS_MIN, color="grey", ls=":", lw=0.8)
    axes[1].set_ylim(-0.05, 1.02)
    axes[1].set_title("model cos: cos(∂ŷ/∂x_q, ∂ŷ_GD++/∂x_q)")
    for ax in axes[:2]:
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    axes[2].set_xticks(list(runs))
    axes[2].set_xlabel("K (layers / steps)")
    axes[2].set_ylabel("final query loss (probe)")
    axes[2].set_ylim(bottom=0)
    axes[2].set_title("loss at the end of training")
    axes[2].legend(fontsize=8)
    return save_figure(fig, path, "Trained K-layer linear self-attention against K steps of GD++ (medians over seeds; for K = 1 GD++ is one GD step)")


def _claims_for(depth: int, run, target_var: float) -> list[dict]:
    chance = run.summary["chance_loss"]
    loss = run.final("loss_query")
    ok = trained(loss, chance)
    only = lambda xs: [float(x) if t else None for x, t in zip(xs, ok)]   # noqa: E731  (seeds that trained)
    gdpp, gdk = run.final("gdpp_loss"), run.final("gd_steps_loss")
    why = "" if any(ok) else (f"no seed of the {depth}-layer model trained (final query loss not 5 % below chance "
                              f"{chance:.3g}): the claim needs a trained model")
    per_seed = (f"{sum(ok)} of {len(ok)} seeds trained; final query loss per seed "
                + ", ".join(f"{x:.3g}" for x in loss) + f" (chance {chance:.3g}; {depth} GD step(s) {gdk.mean():.3g}"
                + (f", {depth} GD++ steps {gdpp.mean():.3g})" if depth > 1 else ")"))
    ref = "GD++" if depth > 1 else "GD"
    gap = only((loss - gdpp) / gdpp)
    within = ci_beyond(gap, -LOSS_TOL, "above", strict=False)
    within = None if within is None else within and ci_beyond(gap, LOSS_TOL, "below", strict=False)
    claims = [claim(
        f"k{depth}_loss_matches_gdpp", f"A trained {depth}-layer linear self-attention model reaches the loss of "
        + (f"{depth} steps of GD++." if depth > 1 else "one gradient-descent step."),
        f"(model − {ref}) / {ref} query loss on the probe ({depth} step{'s' if depth > 1 else ''}), seeds that trained", gap,
        f"95 % interval within ±{LOSS_TOL}", within, not_measured=why, note=per_seed + DEVIATIONS,
        paper=f"the trained {depth}-layer model's loss equals that of {depth} step(s) of "
              + ("GD++ (their Fig. 3)" if depth > 1 else "GD with a tuned rate (their Fig. 2)"))]
    if depth > 1:
        gain = only((gdk - loss) / gdk)
        claims.append(claim(
            f"k{depth}_beats_gd", f"It does better than {depth} steps of plain gradient descent.",
            f"({depth} GD steps − model) / {depth} GD steps query loss, seeds that trained", gain,
            "95 % interval above 0", ci_beyond(gain, 0.0, "above"), not_measured=why,
            paper=f"trained {depth}-layer models outperform {depth} steps of GD with a tuned rate and match GD++"))
    pred = only(run.final("pred_distance_gdpp") / target_var)
    cos = only(run.final("sensitivity_cosine_gdpp"))
    claims += [
        claim(f"k{depth}_predictions_match", f"Its predictions are those of {'one GD step' if depth == 1 else f'{depth} GD++ steps'}.",
              f"mean (ŷ − ŷ_{ref})² / Var(y_q), seeds that trained", pred, f"95 % interval below {PRED_TOL}",
              ci_beyond(pred, PRED_TOL, "below"), not_measured=why, paper="preds diff ≈ 0 after training"),
        claim(f"k{depth}_sensitivity_matches", f"Its prediction responds to the query like {'one GD step' if depth == 1 else 'GD++'}'s.",
              f"cos(∂ŷ/∂x_q, ∂ŷ_{ref}/∂x_q), mean over the probe, seeds that trained", cos,
              f"95 % interval above {COS_MIN}", ci_beyond(cos, COS_MIN, "above"), not_measured=why,
              paper="model cosine ≈ 1 after training"),
    ]
    return claims


def main(argv=None):
    exp = Experiment("von_oswald_gd", "In-context learning by gradient descent", "von Oswald et al. 2022", argv)
    seeds = exp.seeds(1, 5, 5)
    runs = {depth: exp.run(f"lsa_{depth}layer", [f"experiment={PRESET}", f"train.seeds={seeds}"] + recipe(exp, depth))
            for depth in DEPTHS}
    task_cfg = runs[1].cfg.task
    from lab.tasks.regression import X_MOMENTS
    target_var = task_cfg.dim * X_MOMENTS[task_cfg.x_dist][0] + task_cfg.noise ** 2
    claims = []
    for depth, run in runs.items():
        claims += _claims_for(depth, run, target_var)
    # GD++ contains GD (γ = 0), and its parameters start from GD's fit: never worse by construction
    gap = [float(((r.final("gd_steps_loss") - r.final("gdpp_loss")) / r.final("gd_steps_loss")).mean()) for r in runs.values()]
    claims.append(claim(
        "gdpp_below_gd", "K steps of GD++ reach a lower loss than K steps of GD (K = " + ", ".join(map(str, runs)) + ").",
        "(GD − GD++) / GD query loss on the probe, per K", gap, "> 0 for K >= 2 (0 for K = 1)", None,
        kind=CONTROL, unit=CONDITION, note="a control: GD++ nests GD (γ = 0) and its fit starts there",
        paper="GD++ outperforms GD at every K > 1 (their Fig. 3)"))
    figs = [_figure(runs, exp.figure_path("loss_vs_gd_gdpp.png")),
            _agreement_figure(runs, target_var, exp.figure_path("agreement_with_gdpp.png"))]
    exp.finish(claims, figs, extra={
        "deviations": ["x ~ U(-1, 1) (their code: U(-0.5, 0.5)); losses are 4 x theirs",
                       "tokens projected into d_model = 32 (W_F) and read out by W_U; theirs: raw d + 1 = 11 tokens",
                       "default scale: batch 256, 3000-5000 steps, cosine decay (theirs: 2048, 5000 / 50 000, constant)",
                       "K = 1 at lr 1e-2 with warm-up (at 1e-3 the lab's 1-layer model stayed at the saddle)",
                       "GD++ fitted by BFGS, not Adam"],
        "final_loss_query": {d: runs[d].final("loss_query").tolist() for d in runs},
        "gd_steps_loss": {d: float(runs[d].final("gd_steps_loss").mean()) for d in runs},
        "gdpp_loss": {d: float(runs[d].final("gdpp_loss").mean()) for d in runs}})


if __name__ == "__main__":
    script_main(lambda: main())
