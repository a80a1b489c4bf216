"""Induction heads need two layers (Olsson et al. 2022, "In-context learning and induction heads").

Attention-only transformers with 1, 2 and 3 layers on token induction (repeated random segments).
Claims: the 2- and 3-layer models show a phase change in the repeated-part loss that coincides with
the rise of an induction head and of the in-context-learning score; the 1-layer model shows neither;
the previous-token head forms no later than the induction head.

    python -m experiments.olsson_layers            # 3 seeds x 1500 steps per depth
    python -m experiments.olsson_layers --full     # 5 seeds x 3000 steps
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import Experiment, all_measured, claim, measured_note, save_figure, script_main

ORDER = 1                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "olsson"          # configs/experiment/olsson.yaml: token induction, 2-layer attention-only
DEPTHS = (1, 2, 3)
# Olsson's "coincides": the loss bump and the induction head's rise share a window. Here: the fitted
# midpoints lie within 10 % of the run's steps of each other.
COINCIDE_FRAC = 0.10


def _icl_midpoints(run) -> list:
    """Per-seed phase change in the ICL score (late-token minus early-token loss; it falls)."""
    curve = run.curve("icl_score")
    fits = [run.fit(curve[:, s], "decrease", min_amplitude=0.2) for s in range(curve.shape[1])]
    return [r["midpoint"] if r["detected"] else None for r in fits]


def _head_midpoint(run, group: str, seed: int):
    """Midpoint of the earliest detected rise among the heads of `group`, and that head."""
    best = None
    for head, entry in run.summary["phase"].get(group, {}).items():
        r = entry["per_seed"][seed]
        if r["detected"] and (best is None or r["midpoint"] < best[0]):
            best = (r["midpoint"], head)
    return best or (None, None)


def _strongest_induction_midpoint(run, seed: int):
    """Midpoint of the rise of the head with the highest final induction score in this seed."""
    scores = run.final("induction")[seed]                   # (L, H)
    l, h = np.unravel_index(np.argmax(scores), scores.shape)
    r = run.summary["phase"]["induction"][f"L{l}H{h}"]["per_seed"][seed]
    return (r["midpoint"] if r["detected"] else None), f"L{l}H{h}"


def _figure(exp, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 6.4), sharex=True, squeeze=False)
    for j, (depth, run) in enumerate(runs.items()):
        steps = run.steps
        ax = axes[0, j]
        ax.plot(steps, run.curve("loss_repeat"), color="tab:blue", alpha=0.7, lw=1.2)
        ax.plot(steps, run.curve("icl_score"), color="tab:purple", alpha=0.7, lw=1.2, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        for m in run.midpoints():
            if m is not None:
                ax.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax.set_title(f"{depth}-layer attention-only")
        ax.set_ylabel("loss on repeat (—), ICL score (- -)" if j == 0 else "")
        ax2 = axes[1, j]
        ind = run.curve("induction").max(axis=(2, 3))       # strongest head per seed
        prev = run.curve("prev_token_corrected").max(axis=(2, 3))
        ax2.plot(steps, ind, color="tab:green", lw=1.2, alpha=0.8)
        ax2.plot(steps, prev, color="tab:orange", lw=1.2, alpha=0.8, ls="--")
        ax2.axhline(run.summary["thresholds"].get("induction", 0.4), color="grey", lw=0.6, ls=":")
        for m in run.midpoints():
            if m is not None:
                ax2.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("training step")
        ax2.set_ylabel("max over heads: induction (—),\nprev-token corrected (- -)" if j == 0 else "")
    return save_figure(fig, path, "Induction heads need two layers: loss, ICL score and head scores per seed "
                 "(red: detected loss phase change)")


def main(argv=None):
    exp = Experiment("olsson_layers", "Induction heads need two layers", "Olsson et al. 2022", argv)
    seeds = exp.seeds(1, 3, 5)
    steps = exp.pick(30, 1500, 3000)
    runs = {}
    for depth in DEPTHS:
        control = ["model=attn_only_1l"] if depth == 1 else []     # the preset's model is attn_only_2l
        runs[depth] = exp.run(f"layers{depth}", [f"experiment={PRESET}", *control, f"model.n_layers={depth}",
                                                 f"train.seeds={seeds}", f"train.steps={steps}"])
    tol = COINCIDE_FRAC * steps
    claims = []
    for depth in (2, 3):
        run = runs[depth]
        loss_mid = run.midpoints()
        claims.append(claim(
            f"phase_change_{depth}l", f"A {depth}-layer attention-only model shows a phase change in the repeated-part loss.",
            "fraction of seeds with a detected phase change (loss_repeat)",
            [m is not None for m in loss_mid], "= 1 (every seed)", all(m is not None for m in loss_mid),
            paper="a bump in the loss curve of every multi-layer model",
            note="; ".join(f"seed {run.summary['seeds'][i]}: {r['reason']}"
                           for i, r in enumerate(run.summary["phase"]["loss_repeat"]["per_seed"]) if not r["detected"])))
        ind = [_strongest_induction_midpoint(run, s)[0] for s in range(seeds)]
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_mid, ind)]
        claims.append(claim(
            f"coincides_induction_{depth}l",
            f"In the {depth}-layer model the loss phase change coincides with the rise of the strongest induction head.",
            "|loss midpoint − induction-head midpoint| (steps)", gaps,
            f"<= {tol:.0f} steps (10 % of the run) in every seed with both", all_measured(gaps, lambda g: g <= tol),
            note=measured_note(gaps)))
        icl = _icl_midpoints(run)
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_mid, icl)]
        claims.append(claim(
            f"coincides_icl_{depth}l",
            f"In the {depth}-layer model the in-context-learning score falls at the loss phase change.",
            "|loss midpoint − ICL-score midpoint| (steps)", gaps, f"<= {tol:.0f} steps in every seed with both",
            all_measured(gaps, lambda g: g <= tol), note=measured_note(gaps)))
        order = []
        for s in range(seeds):
            prev, _ = _head_midpoint(run, "prev_token", s)
            ind_s, _ = _head_midpoint(run, "induction", s)
            order.append(prev - ind_s if prev is not None and ind_s is not None else None)
        log_every = run.cfg.train.log_every
        claims.append(claim(
            f"prev_before_induction_{depth}l",
            f"In the {depth}-layer model the previous-token head forms no later than the induction head.",
            "first previous-token-head midpoint − first induction-head midpoint (steps)", order,
            f"<= {log_every} (one log interval) in every seed with both", all_measured(order, lambda o: o <= log_every),
            paper="previous-token heads form during the same phase change as the induction heads they feed",
            note="; ".join(filter(None, [measured_note(order), "per seed: " + ", ".join(
                "n/a" if o is None else f"{o:+.0f}" for o in order)]))))
    one = runs[1]
    max_ind = one.final("induction").max(axis=(1, 2))
    thr = one.summary["thresholds"].get("induction", 0.4)
    claims.append(claim(
        "no_phase_change_1l", "A 1-layer attention-only model shows no phase change in the repeated-part loss.",
        "fraction of seeds with a detected phase change (loss_repeat)", [m is not None for m in one.midpoints()],
        "= 0", all(m is None for m in one.midpoints())))
    claims.append(claim(
        "no_induction_head_1l", "A 1-layer attention-only model forms no induction head.",
        "final induction score of its strongest head", max_ind, f"< {thr} in every seed",
        bool(np.all(max_ind < thr)) and not any(one.summary.get("induction_head_formed", [])),
        paper="induction heads need a previous-token head in an earlier layer (K-composition)"))
    fig = _figure(exp, runs, exp.figure_path("layers.png"))
    exp.finish(claims, [fig], extra={"final_loss_repeat": {d: runs[d].final("loss_repeat").tolist() for d in DEPTHS}})


if __name__ == "__main__":
    script_main(lambda: main())
