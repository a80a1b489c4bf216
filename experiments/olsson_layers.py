"""Induction heads need two layers (Olsson et al. 2022, "In-context learning and induction heads").

Attention-only transformers with 1, 2 and 3 layers on token induction (repeated random segments).
Claims: the 2- and 3-layer models show a phase change in the repeated-part loss that coincides with
the rise of an induction head and of the in-context-learning score; the 1-layer model shows neither;
the previous-token head forms no later than the induction head. Two of Olsson et al.'s causal
arguments on top:
- (2) smeared keys (`experiment=olsson_smeared`, `model.smeared_keys=true`: each key mixed with the
  previous position's by a learned per-head σ(α), starting at 0.5): the 1-layer model then forms an
  induction head, shows the phase change, ends with a lower ICL score than the plain 1-layer model,
  and its induction head weights the previous key above its own (σ(α) < 0.5);
- (3) test-time ablation (lab-ablate's analysis, lab/analysis/ablation.py, of the final checkpoint):
  mean-ablating the strongest induction head of each layer of the trained 2- and 3-layer models
  removes most of the ICL score, and more than ablating as many random heads per layer.

    python -m experiments.olsson_layers            # 5 seeds x 1500 steps per condition (4 conditions)
    python -m experiments.olsson_layers --full     # 8 seeds x 3000 steps
    python -m experiments.olsson_layers --smoke    # seconds per run: checks the script, not the claims

Default scale: MINUTES_PLACEHOLDER on a 2-core CPU.

Deviations from the paper, with reasons:
- Data: Olsson et al. trained on natural text and used repeated random tokens only as a probe; here
  the models train on repeated random tokens (task=induction), the lab's task, where the induction
  circuit is the only way to beat chance on the repeats. The ICL score is theirs (loss at token 500
  minus token 50 of 512) scaled to the sequence length (lab/measures/losses.py icl_positions).
- Smeared keys: the paper gives no initialisation for α; α = 0 (an even mix) lets Adam (which moves
  α by about lr per step) reach either end within the run. The keys are smeared after RoPE (the
  default model has learned positions, so this does not arise here).
- Ablation: the paper ablates every induction head; here lab-ablate's top heads, the highest
  induction score of each layer (1 of 4 heads per layer), against one random head per layer
  (20 draws), mean ablation on 512 fresh sequences. The layer-0 head ablated with them is the
  highest-scoring one there, not an induction head; the random control ablates a layer-0 head too.
  A seed without a formed induction head, or with no ICL score to remove, is not measured.

Timings compare onsets (where each curve leaves its plateau, by change points), not midpoints:
previous-token scores rise more gradually than induction scores, so midpoints order the heads by
their widths as much as by when they start.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import (CONTROL, Experiment, all_measured, ci_beyond, claim, measured_note, save_figure,
                                script_main)

ORDER = 1                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "olsson"          # configs/experiment/olsson.yaml: token induction, 2-layer attention-only
SMEARED_PRESET = "olsson_smeared"   # configs/experiment/olsson_smeared.yaml: the 1-layer model with smeared keys
DEPTHS = (1, 2, 3)
# Test-time ablation (lab.analysis.ablation, lab-ablate's analysis): mean ablation of the top
# ABLATE_PERCENT % heads of each layer by induction score (1 of 4: the strongest head of each layer)
# against as many random heads per layer, ABLATE_DRAWS draws, on ABLATE_EVAL fresh sequences.
ABLATE_PERCENT, ABLATE_DRAWS, ABLATE_EVAL = 25.0, 20, 512
# "removes the ICL score": the top heads' ablation takes back at least this fraction of it (on average)
ICL_REMOVED_FRAC = 0.5
# Olsson's "coincides": the loss bump and the induction head's rise share a window. Here: the fitted
# midpoints lie within 10 % of the run's steps of each other.
COINCIDE_FRAC = 0.10


def _icl_onsets(run) -> list:
    """Per-seed onset of the ICL score's fall (late-token minus early-token loss), by change points."""
    from lab.analysis.stages import detect_stages
    curve = run.curve("icl_score")
    out = []
    for s in range(curve.shape[1]):
        t = detect_stages(run.steps, curve[:, s], direction="decrease", min_change=0.2)["transitions"]
        out.append(max(t, key=lambda x: abs(x["change"]))["onset"] if t else None)
    return out


def _strongest_induction_onset(run, seed: int):
    """Onset of the rise of the head with the highest final induction score in this seed."""
    scores = run.final("induction")[seed]                   # (L, H)
    l, h = np.unravel_index(np.argmax(scores), scores.shape)
    t = run.transitions(group_head=("induction", f"L{l}H{h}"))[seed]
    return (t["onset"] if t else None), f"L{l}H{h}"


def _smear_mix(run) -> np.ndarray:
    """(seeds, H) final sigma(alpha_h) of the smeared-key layer: the weight of each key's own position
    (1: unsmeared; 0: the previous position's key only)."""
    from lab.train.restore import load_run
    alpha = np.asarray(load_run(run.run_dir).params["blocks"][0]["attn"]["smear_alpha"], float)
    return 1 / (1 + np.exp(-alpha))


def _ablation(exp, run, depth: int) -> dict:
    """lab-ablate's analysis of a trained run's final checkpoint (top vs random heads), with the ICL score."""
    from lab.analysis.ablation import ablate
    exp.say(f"layers{depth}: ablating the top {ABLATE_PERCENT:g} % induction heads per layer vs random heads")
    return ablate(run.run_dir, kind="mean", top_percent=ABLATE_PERCENT, draws=ABLATE_DRAWS,
                  eval_size=ABLATE_EVAL if not exp.smoke else 32)


def _ablation_rows(result: dict) -> dict:
    """{seed value: {condition: row}} for none / top / random."""
    out = {}
    for r in result["rows"]:
        out.setdefault(r["seed"], {})[r["condition"]] = r
    return out


def _figure_ablation(results: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.8), squeeze=False)
    for ax, (depth, res) in zip(axes[0], results.items()):
        rows = _ablation_rows(res)
        conds = ("none", "top", "random")
        for s, r in rows.items():
            ax.plot(range(3), [r[c]["icl_score"] for c in conds], color="grey", lw=0.8, alpha=0.6, marker="o", ms=3)
        means = [np.mean([r[c]["icl_score"] for r in rows.values()]) for c in conds]
        ax.plot(range(3), means, color="black", lw=2, marker="s", label="mean over seeds")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(3), ["nothing ablated", f"top {res['n_per_layer']}/layer\n(induction score)",
                                 f"random {res['n_per_layer']}/layer\n(mean of {res['draws']})"])
        ax.set_title(f"{depth}-layer: {res['kind']} ablation at step {res['step']}")
        ax.set_ylabel("ICL score (late − early token loss)")
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Test-time ablation: ICL score with the top induction head of each layer "
                                  "ablated vs as many random heads (grey: one seed)")


def _figure(exp, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 6.4), sharex=True, squeeze=False)
    for j, (label, run) in enumerate(runs.items()):
        steps = run.steps
        ax = axes[0, j]
        ax.plot(steps, run.curve("loss_repeat"), color="tab:blue", alpha=0.7, lw=1.2)
        ax.plot(steps, run.curve("icl_score"), color="tab:purple", alpha=0.7, lw=1.2, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        for m in run.onsets():
            if m is not None:
                ax.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax.set_title(f"{label}-layer attention-only" if isinstance(label, int) else label)
        ax.set_ylabel("loss on repeat (—), ICL score (- -)" if j == 0 else "")
        ax2 = axes[1, j]
        ind = run.curve("induction").max(axis=(2, 3))       # strongest head per seed
        prev = run.curve("prev_token_corrected").max(axis=(2, 3))
        ax2.plot(steps, ind, color="tab:green", lw=1.2, alpha=0.8)
        ax2.plot(steps, prev, color="tab:orange", lw=1.2, alpha=0.8, ls="--")
        ax2.axhline(run.summary["thresholds"].get("induction", 0.4), color="grey", lw=0.6, ls=":")
        for m in run.onsets():
            if m is not None:
                ax2.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("training step")
        ax2.set_ylabel("max over heads: induction (—),\nprev-token corrected (- -)" if j == 0 else "")
    return save_figure(fig, path, "Induction heads need two layers, or smeared keys: loss, ICL score and head "
                                  "scores per seed (red: onset of each seed's loss transition)")


def main(argv=None):
    exp = Experiment("olsson_layers", "Induction heads need two layers", "Olsson et al. 2022", argv)
    seeds = exp.seeds(1, 5, 8)
    steps = exp.pick(30, 1500, 3000)
    runs = {}
    for depth in DEPTHS:
        control = ["model=attn_only_1l"] if depth == 1 else []     # the preset's model is attn_only_2l
        runs[depth] = exp.run(f"layers{depth}", [f"experiment={PRESET}", *control, f"model.n_layers={depth}",
                                                 f"train.seeds={seeds}", f"train.steps={steps}"])
    smeared = exp.run("smeared1", [f"experiment={SMEARED_PRESET}", f"train.seeds={seeds}", f"train.steps={steps}"])
    tol = COINCIDE_FRAC * steps
    claims = []
    for depth in (2, 3):
        run = runs[depth]
        names = run.summary["seeds"]
        loss_on = run.onsets()
        outcomes = run.summary.get("outcome_per_seed", [])
        claims.append(claim(
            f"phase_change_{depth}l", f"A {depth}-layer attention-only model shows a phase change in the repeated-part loss.",
            "seeds with a transition in loss_repeat (change points or sigmoid)",
            [m is not None for m in loss_on], "every seed", all(m is not None for m in loss_on),
            paper="a bump in the loss curve of every multi-layer model",
            note="; ".join(f"seed {names[i]}: {r['reason']}" for i, r in
                           enumerate(run.summary["phase"]["loss_repeat"]["stages"]) if loss_on[i] is None)))
        formed = [bool(f) if loss_on[i] is not None else None
                  for i, f in enumerate(run.summary.get("induction_head_formed", []))]
        claims.append(claim(
            f"induction_head_{depth}l",
            f"In the {depth}-layer model every seed whose loss has a transition forms an attention induction head.",
            "seeds with a head whose induction score (attention to the tokens after every earlier occurrence) "
            "rose and crossed the threshold, among seeds with a loss transition", formed,
            f"every such seed (threshold {run.summary['thresholds'].get('induction', 0.4)})",
            all_measured(formed, bool),
            paper="the loss bump is the formation of induction heads",
            note="; ".join(f"seed {names[i]}: {o}" for i, o in enumerate(outcomes) if o != "induction head")))
        ind = [_strongest_induction_onset(run, s)[0] for s in range(seeds)]
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_on, ind)]
        claims.append(claim(
            f"coincides_induction_{depth}l",
            f"In the {depth}-layer model the loss phase change coincides with the rise of the strongest induction head.",
            "|loss onset − strongest induction head's onset| (steps)", gaps,
            f"<= {tol:.0f} steps (10 % of the run) in every seed with both", all_measured(gaps, lambda g: g <= tol),
            note=measured_note(gaps)))
        icl = _icl_onsets(run)
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_on, icl)]
        claims.append(claim(
            f"coincides_icl_{depth}l",
            f"In the {depth}-layer model the in-context-learning score falls at the loss phase change.",
            "|loss onset − ICL-score onset| (steps)", gaps, f"<= {tol:.0f} steps in every seed with both",
            all_measured(gaps, lambda g: g <= tol), kind=CONTROL,
            note="a control on this task: the late position is a repeat target in every sequence and the early "
                 "one almost never, so the ICL score is the repeat loss minus a constant and must fall with it"))
        order = []
        for s in range(seeds):
            prev, _ = run.first_formed_onset("prev_token", s)
            ind_s, _ = run.first_formed_onset("induction", s, min_layer=1)
            order.append(prev - ind_s if prev is not None and ind_s is not None else None)
        log_every = run.cfg.train.log_every
        claims.append(claim(
            f"prev_before_induction_{depth}l",
            f"In the {depth}-layer model the previous-token head forms no later than the induction head.",
            "onset of the first previous-token head − onset of the first induction head (steps; change-point "
            "onsets, where each score starts to rise)", order,
            f"95 % CI of the mean at most +{log_every} (one log interval)",
            ci_beyond(order, log_every, "below", strict=False),
            paper="previous-token heads form during the same phase change as the induction heads they feed",
            note="; ".join(filter(None, [measured_note(order), "per seed: " + ", ".join(
                "n/a" if o is None else f"{o:+.0f}" for o in order)]))))
        comp = run.summary.get("composition") or {}
        prev_final = run.final("prev_token_corrected")                  # (seeds, L, H)
        links = []
        for s in range(seeds):
            _, head = _strongest_induction_onset(run, s)
            if head not in comp or not run.summary["induction_head_formed"][s]:
                links.append(None)
                continue
            partner = comp[head]["partner_per_seed"][s]                  # "L0H<h>"
            links.append(partner == f"L0H{int(np.argmax(prev_final[s, 0]))}")
        claims.append(claim(
            f"k_composition_{depth}l",
            f"In the {depth}-layer model the strongest induction head K-composes most with the strongest "
            "layer-0 previous-token head.",
            "seeds (with an induction head) whose strongest induction head's largest K-composition score is with "
            "the layer-0 head of highest previous-token score", links, "every such seed", all_measured(links, bool),
            paper="Elhage et al. 2021: the induction circuit is a previous-token head K-composing with an induction head",
            note=measured_note(links)))
    one = runs[1]
    max_ind = one.final("induction").max(axis=(1, 2))
    thr = one.summary["thresholds"].get("induction", 0.4)
    one_on = one.onsets()
    claims.append(claim(
        "no_phase_change_1l", "A 1-layer attention-only model shows no phase change in the repeated-part loss.",
        "seeds with a transition in loss_repeat", [m is not None for m in one_on],
        "no seed", all(m is None for m in one_on), kind=CONTROL,
        note="architecture: one layer has no earlier layer to K-compose with, so no induction head and no bump"))
    claims.append(claim(
        "no_induction_head_1l", "A 1-layer attention-only model forms no induction head.",
        "final induction score of its strongest head", max_ind, f"< {thr} in every seed",
        bool(np.all(max_ind < thr)), kind=CONTROL,
        paper="induction heads need a previous-token head in an earlier layer (K-composition)",
        note="architecture (see above)"))
    claims += _smeared_claims(smeared, one, seeds)
    ablations = {depth: _ablation(exp, runs[depth], depth) for depth in (2, 3)}
    for depth, res in ablations.items():
        claims += _ablation_claims(runs[depth], res, depth)
    figs = [_figure(exp, {1: one, "1-layer attention-only, smeared keys": smeared, 2: runs[2], 3: runs[3]},
                    exp.figure_path("layers.png")),
            _figure_ablation(ablations, exp.figure_path("ablation.png"))]
    exp.finish(claims, figs, extra={
        "final_loss_repeat": {**{d: runs[d].final("loss_repeat").tolist() for d in DEPTHS},
                              "smeared1": smeared.final("loss_repeat").tolist()},
        "final_icl_score": {**{d: runs[d].final("icl_score").tolist() for d in DEPTHS},
                            "smeared1": smeared.final("icl_score").tolist()},
        "smear_mix_final": _smear_mix(smeared).tolist(),
        "ablation": {d: {"summary": r["summary"], "top_heads": r["top_heads"], "kind": r["kind"], "step": r["step"],
                         "n_per_layer": r["n_per_layer"], "draws": r["draws"], "eval_size": r["eval_size"],
                         "icl_positions": r["icl_positions"]} for d, r in ablations.items()}})


def _trained(run) -> list:
    return list(run.summary.get("trained_per_seed") or [True] * len(run.summary["seeds"]))


def _smeared_claims(sm, one, seeds: int) -> list:
    """Olsson et al.'s argument 2: one layer with smeared keys forms an induction head and a phase change."""
    ok, names = _trained(sm), sm.summary["seeds"]
    untrained = "" if any(ok) else ("no seed of the smeared-key model trained (final loss_repeat not 5 % below "
                                    "chance): a run that did not train refutes nothing")
    skipped = "; ".join(f"seed {names[i]} did not train (not measured)" for i in range(seeds) if not ok[i])
    on = sm.onsets()
    has_on = [m is not None if ok[i] else None for i, m in enumerate(on)]
    stages = sm.summary["phase"]["loss_repeat"]["stages"]
    out = [claim(
        "phase_change_smeared_1l",
        "A 1-layer attention-only model with smeared keys shows a phase change in the repeated-part loss.",
        "seeds with a transition in loss_repeat (change points or sigmoid), among seeds that trained", has_on,
        "every such seed", all_measured(has_on, bool), not_measured=untrained,
        paper="Olsson et al. 2022 (argument 2): with smeared keys a 1-layer model gets the phase change that "
              "otherwise needs two layers",
        note="; ".join(filter(None, [skipped] + [f"seed {names[i]}: {stages[i]['reason']}" for i in range(seeds)
                                                  if has_on[i] is False])))]
    formed = [bool(f) if ok[i] else None for i, f in enumerate(sm.summary.get("induction_head_formed", []))]
    out.append(claim(
        "induction_head_smeared_1l", "A 1-layer attention-only model with smeared keys forms an induction head.",
        "seeds with a head whose induction score rose and crossed the threshold, among seeds that trained", formed,
        f"every such seed (threshold {sm.summary['thresholds'].get('induction', 0.4)})", all_measured(formed, bool),
        not_measured=untrained, paper="the plain 1-layer model cannot (no previous-token head to K-compose with); "
                                      "smearing gives each key its previous token",
        note=skipped))
    diff = [float(a - b) if ok[i] else None for i, (a, b) in enumerate(zip(sm.final("icl_score"), one.final("icl_score")))]
    out.append(claim(
        "icl_smeared_vs_plain_1l",
        "The smeared-key 1-layer model ends with a lower (more in-context) ICL score than the plain 1-layer model.",
        "final ICL score, smeared − plain 1-layer model (same seed values; nats)", diff, "95 % CI of the mean below 0",
        ci_beyond(diff, 0.0, "below"), not_measured=untrained,
        note="final ICL score smeared " + ", ".join(f"{v:.2f}" for v in sm.final("icl_score"))
             + "; plain " + ", ".join(f"{v:.2f}" for v in one.final("icl_score"))))
    mix = _smear_mix(sm)                                       # (seeds, H)
    ind = sm.final("induction")[:, 0]                          # (seeds, H): the one layer
    head_mix = [float(mix[i, int(np.argmax(ind[i]))]) if formed[i] else None for i in range(seeds)]
    out.append(claim(
        "smeared_head_reads_previous_key",
        "The smeared-key model's induction head weights the previous position's key above its own: its σ(α) "
        "falls below the 0.5 it starts at.",
        "final σ(α_h) of the strongest induction head (weight of the key's own position)", head_mix,
        "95 % CI of the mean below 0.5", ci_beyond(head_mix, 0.5, "below"), not_measured=untrained,
        paper="the mechanism smearing offers: the key at j carries token j−1, which the query matches",
        note="σ(α) per seed and head: " + "; ".join(" ".join(f"{m:.2f}" for m in row) for row in mix)
             + ". " + measured_note(head_mix)))
    return out


def _ablation_claims(run, res: dict, depth: int) -> list:
    """Olsson et al.'s argument 3: ablating the induction heads at test time removes the ICL score."""
    rows, ok, formed = _ablation_rows(res), _trained(run), run.summary["induction_head_formed"]
    removed, excess, why = [], [], []
    for i, s in enumerate(res["seeds"]):
        r = rows[s]
        base = r["none"]["icl_score"]
        if not ok[i] or not formed[i] or base >= 0:
            removed.append(None)
            excess.append(None)
            why.append(f"seed {s}: " + ("did not train" if not ok[i] else "no induction head formed" if not formed[i]
                                        else f"no ICL score to remove ({base:+.2f})"))
            continue
        removed.append(r["top"]["delta_icl"] / -base)
        excess.append(r["top"]["delta_icl"] - r["random"]["delta_icl"])
    heads = "; ".join(f"seed {s}: {' '.join(h)}" for s, h in res["top_heads"].items())
    setting = (f"{res['kind']} ablation of the final checkpoint on {res['eval_size']} fresh sequences, "
               f"{res['n_per_layer']} head(s) per layer; top heads {heads}")
    untrained = "" if any(ok) else f"no seed of the {depth}-layer model trained"
    return [
        claim(f"ablation_removes_icl_{depth}l",
              f"Ablating the {depth}-layer model's strongest induction head of each layer at test time removes most "
              "of its ICL score.",
              "fraction of the unablated ICL score removed by ablating the top heads (ΔICL / −ICL)", removed,
              f"95 % CI of the mean above {ICL_REMOVED_FRAC}", ci_beyond(removed, ICL_REMOVED_FRAC, "above"),
              not_measured=untrained, paper="Olsson et al. 2022 (argument 3): knocking out induction heads at test "
                                            "time greatly reduces in-context learning",
              note="; ".join(filter(None, [setting, measured_note(removed), "; ".join(why)]))),
        claim(f"ablation_top_vs_random_{depth}l",
              f"In the {depth}-layer model ablating the top induction heads raises the ICL score more than ablating "
              "as many random heads.",
              "ΔICL(top heads) − mean ΔICL(random heads, same number per layer) (nats)", excess,
              "95 % CI of the mean above 0", ci_beyond(excess, 0.0, "above"), not_measured=untrained,
              note="; ".join(filter(None, [f"{res['draws']} random draws per seed", measured_note(excess)])))]


if __name__ == "__main__":
    script_main(lambda: main())
