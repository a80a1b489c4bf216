"""What needs to go right for an induction head (Singh et al. 2024), in the paper's own conditions.

Preset `experiment=singh` (configs/experiment/singh.yaml), as their `ih_paper_runs.sh` ran Fig. 5b and
Fig. 6: task `singh` (x1 l1 x2 l2 xq: two exemplar-label pairs of two classes, labels re-drawn from
K = 5 per sequence, the query's label is scored), one exemplar per training class (`--exemplar_split
1 4 0`), their network (2 attention-only layers, 8 heads, d_model 64, RoPE), and every layer-1 head
but L1H0 ablated from step 0 (`--opto_ablate_heads $REST_HEADS`: one head can become the induction head,
so the clamps below act on the head that forms it).

The conditions, under the paper's names (Fig. 5b; configs/clamp/ holds each as a preset):
- "none": the baseline above.
- "1": an ideal previous-token pattern on one layer-0 head (`clamp=perfect_prev_token`; theirs `0:2`).
- "A" = "1, 2": their `perfect_prev_token_input` (`clamp=singh_A`): layer 0 removed (layer 1 reads the
  embeddings) and each layer-1 key is the previous position's, so layer 1 sees ideal previous-token
  keys; subcircuit A is fixed, B (match) and C (copy) are left.
- "match" = "1, 2, 3qk, 4": an ideal induction pattern on L1H0 (`clamp=singh_match`): A and B fixed, C left.
- "copy" = "3v, 5": the logits are L1H0's attention renormalised over the label tokens (`clamp=singh_copy`):
  C fixed, A and B left.
- "A+copy" = "1, 2, 3v, 5": A and C fixed, B left (`clamp=[singh_A,singh_copy]`).

Measured per seed: the plateau length (steps until the query loss has fallen 10 % of the way from ln 2
to its final level, lab.analysis.plateau) and the drop's 10-90 % width, and Singh's crossing step
(first logged step with loss < 0.4·ln 2). Their explanation, a multiplicative interaction of the three
subcircuits (a rank-1 three-factor toy model, Fig. 5a; lab.analysis.three_factor), predicts that the
plateau shortens as fewer subcircuits are left to learn; the toy model's plateau lengths are plotted
beside the measured ones (normalised to each's unclamped mean: the units differ).

Progress measures (Singh's appendix): the baseline run also logs its probe loss under each clamp
(`apply: measure`, one group per condition), so one unclamped run shows when each subcircuit forms.

Fig. 6: more classes and more labels, with nothing, only B ("A+copy") or only C ("match") left to learn.
Beyond the paper: the match and copy clamps switched on mid-plateau, on the head chosen per seed at the
switch step (`heads: auto`, `copy_from: auto`: the layer-1 head with the highest induction score), and A.

Deviations from the paper, and why:
- exemplars are fixed random vectors (|x| ≈ 1, item_dim 64), not Omniglot ResNet features (no data
  download; the task's structure is the same);
- Adam lr 3e-4, a few thousand steps, instead of lr 1e-5 for 4e5 steps: a 2-core CPU. The plateau is
  hundreds of steps instead of ~1e5, so its length is compared between conditions, never to the paper's;
- A keeps positions 0 and the query on their own keys, as their code does; its layer-1 queries come
  from the embedding everywhere (theirs from the shifted residual except at the query; only the query's
  row is scored, where the two agree);
- the copy clamp puts probability ~1e-6 on labels absent from the context (theirs exactly 0);
- the default mode runs Fig. 6 at one extra value per axis (classes 50 -> 200, labels 5 -> 15) and two
  conditions; --full runs 100, 200 and 10, 15 and adds A and "none with all 8 heads".

    python -m experiments.singh_subcircuits            # 5 seeds per condition: ~35 min on an idle 2-core CPU
    python -m experiments.singh_subcircuits --full     # 8 seeds, every condition and value
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import CONDITION, CONTROL, Experiment, ci_beyond, claim, crossing_step, save_figure, script_main

NAME = "singh_subcircuits"
ORDER = 2                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "singh"           # configs/experiment/singh.yaml: the paper's conditions every run starts from
CONDITIONS = ("none", "1", "A", "match", "copy", "A+copy")
PRESETS = {"none": [], "1": ["perfect_prev_token"], "A": ["singh_A"], "match": ["singh_match"],
           "copy": ["singh_copy"], "A+copy": ["singh_A", "singh_copy"]}
# subcircuits left to learn (the toy model's factors left); "1" fixes only A's attend part, so it is
# left out of the count (A's copy into the label tokens is still learned)
LEFT = {"none": 3, "A": 2, "copy": 2, "match": 1, "A+copy": 1}
TOY_CLAMPS = {3: (), 2: ("c",), 1: ("b", "c")}
ONLY_B, ONLY_C = "A+copy", "match"
COLORS = {"none": "black", "1": "tab:olive", "A": "tab:red", "match": "tab:green", "copy": "tab:blue",
          "A+copy": "tab:purple", "none_8_heads": "tab:gray"}
LATE = ("A", "match", "copy")
LATE_RAMP = 50
# Steps per condition (exploratory runs, 5 seeds, lr 3e-4: the unclamped crossings fell at ~2000-3000
# and later, one seed past 4000; every clamp fixes part of the circuit, so its runs are shorter).
STEPS = {"none": 6000, "1": 6000, "A": 5000, "match": 2000, "copy": 5000, "A+copy": 2000}
SWEEP_STEPS = {("classes", "none"): 8000, ("classes", ONLY_B): 3000, ("classes", ONLY_C): 3000, ("classes", "A"): 6000,
               ("labels", "none"): 8000, ("labels", ONLY_B): 3000, ("labels", ONLY_C): 3000, ("labels", "A"): 6000}
LATE_START = 1000          # mid-plateau: the unclamped loss sits near ln 2 from ~300 steps to ~2000 and beyond
LATE_STEPS = 4000          # a clamp switched on at 1000 needs at most the clamped-from-0 run's steps after it
# The apply: measure twins of the clamps (Singh's appendix progress measures), one group per condition.
MEASURE_CLAMPS = [
    "+clamps.pm_A_embed={site: blocks.0.resid_post, value: embed, apply: measure, group: A}",
    "+clamps.pm_A_keys={site: blocks.1.attn.k, value: prev_token_key, queries: [1, 2, 3], apply: measure, group: A}",
    "+clamps.pm_match={site: blocks.1.attn.pattern, value: induction, heads: [0], apply: measure, group: match}",
    "+clamps.pm_copy={site: logits, value: perfect_copy, copy_from: L1H0, apply: measure, group: copy}",
]


def clamp_overrides(cond: str, start: int = 0) -> list[str]:
    """The Hydra overrides of a condition: its presets, switched on at `start` (ramped) if late; late
    match and copy clamps take their head per seed at the switch step (heads / copy_from: auto)."""
    presets = PRESETS[cond]
    out = [f"clamp=[{','.join(presets)}]"] if presets else []
    if start:
        names = {"singh_A": ("A_embed", "A_keys"), "singh_match": ("match",), "singh_copy": ("copy",),
                 "perfect_prev_token": ("prev_token",)}
        for p in presets:
            for n in names[p]:
                out += [f"clamps.{n}.start={start}", f"clamps.{n}.schedule=linear", f"clamps.{n}.ramp_steps={LATE_RAMP}"]
        if "singh_match" in presets:
            out.append("clamps.match.heads=auto")
        if "singh_copy" in presets:
            out.append("clamps.copy.copy_from=auto")
    return out


def shapes_of(run, final_level=None) -> list[dict]:
    from lab.analysis.plateau import plateau_shapes
    return plateau_shapes(run.steps, run.curve("loss_query"), math.log(2), final_level)


def crossings(run, threshold: float, key: str = "loss_query") -> list:
    curve = run.curve(key)
    return [crossing_step(run.steps, curve[:, s], threshold) for s in range(curve.shape[1])]


def field(shapes, key) -> list:
    return [s[key] for s in shapes]


def paired(a, b):
    """Per-seed differences a_i - b_i (same initialisation and data); None where either is None."""
    return [x - y if x is not None and y is not None else None for x, y in zip(a, b)]


def censored(values, last_step):
    """Steps with never-reached seeds put at the run's last step (a lower bound)."""
    return [last_step if v is None else v for v in values]


def main(argv=None):
    exp = Experiment(NAME, "What needs to go right for an induction head", "Singh et al. 2024", argv,
                     description=__doc__.splitlines()[0])
    seeds = exp.seeds(1, 5, 8)
    scale = exp.pick(1, 1, 2)
    steps1 = {c: s * scale for c, s in STEPS.items()}
    conds = exp.pick(smoke=["none"], default=list(CONDITIONS))
    common = [f"experiment={PRESET}", f"train.seeds={seeds}"]

    def run(label, cond, steps, extra=(), start=0):
        return exp.run(label, common + [f"train.steps={exp.pick(40, steps, steps)}", *extra] + clamp_overrides(cond, start))

    # ---- Fig. 5b (and the appendix's progress measures, logged by the baseline) ----
    p1 = {c: run(c if c == "none" else f"clamp_{c}", c, steps1[c], MEASURE_CLAMPS if c == "none" else ())
          for c in conds}
    if exp.pick(False, False, True):
        p1["none_8_heads"] = run("none_8_heads", "none", steps1["none"], ["~clamps.one_l1_head"])
    threshold = 0.4 * math.log(2)
    x1 = {c: crossings(r, threshold) for c, r in p1.items()}
    s1 = {c: shapes_of(r) for c, r in p1.items()}

    # ---- Fig. 6: classes and labels ----
    # default: per axis, the unclamped plateau and the subcircuit the paper says that axis acts on
    # (classes: B, labels: C); --full: every "only ... left" condition on both, for the dissociations
    sweep = exp.pick(smoke={}, default={"classes": [200], "labels": [15]},
                     full={"classes": [100, 200], "labels": [10, 15]})
    full_conds = ["none", ONLY_B, ONLY_C, "A"]
    sweep_conds = exp.pick(smoke={}, default={"classes": ["none", ONLY_B], "labels": ["none", ONLY_C]},
                           full={"classes": full_conds, "labels": full_conds})
    axis_key = {"classes": "task.n_classes", "labels": "task.n_labels"}
    default_value = {"classes": 50, "labels": 5}
    p2 = {ax: {c: {default_value[ax]: p1[c]} for c in sweep_conds[ax] if c in p1} for ax in sweep}
    for ax, values in sweep.items():
        for v in values:
            for c in sweep_conds[ax]:
                steps = int(SWEEP_STEPS.get((ax, c), 2 * steps1[c]) * scale)
                p2[ax].setdefault(c, {})[v] = run(f"{ax}{v}_{c}", c, steps, [f"{axis_key[ax]}={v}"])
    s2 = {ax: {c: {v: shapes_of(r) for v, r in runs.items()} for c, runs in d.items()} for ax, d in p2.items()}

    # ---- beyond the paper: clamps switched on mid-plateau, heads chosen per seed then ----
    late_start = exp.pick(10, LATE_START, LATE_START * scale)
    late_conds = exp.pick(smoke=["copy"], default=list(LATE))
    p3 = {c: run(f"late_{c}", c, LATE_STEPS * scale, start=late_start) for c in late_conds}
    x3 = {c: crossings(r, threshold) for c, r in p3.items()}

    # ---- the three-factor toy model's prediction ----
    from lab.analysis.three_factor import clamp_study
    toy = clamp_study(seeds=tuple(range(exp.pick(3, 10, 20))), conditions=tuple(TOY_CLAMPS.values()))

    claims = make_claims(p1, x1, s1, p2, s2, p3, x3, late_start, toy)
    figs = [fig_subcircuits(exp, p1, s1, toy), fig_progress(exp, p1["none"], threshold),
            fig_data(exp, p2, s2), fig_late(exp, p1, x1, p3, x3, threshold, late_start)]
    extra = {"threshold": threshold,
             "crossing_steps": {"clamped_from_step_0": x1, f"clamped_from_step_{late_start}": x3},
             "plateau": {c: [{k: s[k] for k in ("plateau_length", "width", "final_level", "reason")} for s in sh]
                         for c, sh in s1.items()},
             "toy_model": {str(c["left"]): c["summary"] for c in toy["conditions"]},
             "steps": {c: int(r.steps[-1]) for c, r in p1.items()}}
    exp.finish(claims, figs, extra=extra)


def _censor_note(values, what="seed(s) never left the plateau") -> str:
    n = sum(v is None for v in values)
    return f"; {n} {what}, counted at the run's last step (a lower bound)" if n else ""


def make_claims(p1, x1, s1, p2, s2, p3, x3, late_start, toy):
    claims = []
    thr = 0.4 * math.log(2)
    none_run = p1["none"]
    last = float(none_run.steps[-1])
    none_len = field(s1["none"], "plateau_length")
    none_cens = censored(none_len, last)
    not_trained = "" if any(v is not None for v in x1["none"]) else \
        f"no unclamped seed crossed 0.4·ln 2 in {last:.0f} steps: the baseline did not learn the task"
    claims.append(claim(
        "unclamped_crosses", f"Without clamps the query loss falls below 0.4·ln 2 = {thr:.3f} within the run (the plateau ends).",
        "crossing step per seed (unclamped)", x1["none"], f"every seed crosses by step {last:.0f}",
        all(v is not None for v in x1["none"]),
        paper="Singh et al.: a plateau at ln 2, then an abrupt phase change as the induction head forms"))
    names = {"1": "an ideal previous-token pattern on one layer-0 head (\"1\")",
             "A": "subcircuit A (perfect_prev_token_input, \"1, 2\")",
             "match": "the match (ideal induction pattern, A and B, \"1, 2, 3qk, 4\")",
             "copy": "the copy (subcircuit C, \"3v, 5\")", "A+copy": "A and the copy (\"1, 2, 3v, 5\")"}
    for c in [c for c in CONDITIONS if c != "none" and c in s1]:
        vals = field(s1[c], "plateau_length")
        held = False if any(v is None for v in vals) else ci_beyond(paired(vals, none_cens), 0.0, "below")
        claims.append(claim(
            f"clamp_{c.replace('+', '_')}_shortens_plateau",
            f"Clamping {names[c]} from step 0 shortens the plateau.",
            f"plateau length (steps to 10 % of the drop from ln 2) with clamp {c} − unclamped, same seed",
            paired(vals, none_cens), "every clamped seed leaves the plateau and the 95 % CI of the mean difference is below 0",
            held, paper="Fig. 5b: clamping any subcircuit speeds up the phase change", not_measured=not_trained,
            note=f"plateau lengths {', '.join('never' if v is None else f'{v:.0f}' for v in vals)}"
                 + _censor_note(none_len, "unclamped seed(s) never left")))
    # Singh's explanation: fewer subcircuits left -> shorter plateau (the toy model's prediction)
    by_left = {k: [c for c in s1 if LEFT.get(c) == k] for k in (3, 2, 1)}

    def mean_len(conds, s):
        vals = [censored(field(s1[c], "plateau_length"), float(p1[c].steps[-1]))[s] for c in conds]
        return float(np.mean(vals)) if conds else None
    n = len(none_len)
    for more, fewer in ((3, 2), (2, 1)):
        if not by_left[more] or not by_left[fewer]:
            continue
        diffs = [mean_len(by_left[more], s) - mean_len(by_left[fewer], s) for s in range(n)]
        toy_d = toy["paired"].get(f"{more}-{fewer}") or {}
        claims.append(claim(
            f"plateau_{more}_left_longer_than_{fewer}",
            f"With {more} subcircuits left to learn the plateau is longer than with {fewer}.",
            f"mean plateau length over the conditions with {more} left ({', '.join(by_left[more])}) − with {fewer} left "
            f"({', '.join(by_left[fewer])}), same seed", diffs, "95 % CI of the mean difference above 0",
            ci_beyond(diffs, 0.0, "above"), not_measured=not_trained,
            paper="Singh et al.'s multiplicative three-factor model: the plateau shortens as fewer subcircuits are left",
            note=f"the toy model (lab.analysis.three_factor, {len(toy['seeds'])} seeds): {more} − {fewer} factors left "
                 f"= {toy_d.get('mean', float('nan')):.0f} steps of its gradient descent"))
    # the plateau's shape: the drop relative to the plateau before it
    if by_left[1]:
        def rel(c, s):
            sh = s1[c][s]
            return None if not sh["width"] or not sh["plateau_length"] else sh["width"] / sh["plateau_length"]
        diffs = []
        for s in range(n):
            one = [rel(c, s) for c in by_left[1]]
            base = rel("none", s)
            diffs.append(None if base is None or any(v is None for v in one) else float(np.mean(one)) - base)
        toy_rel = {c["left"]: np.nanmean([sh["width"] / sh["plateau_length"] if sh["width"] and sh["plateau_length"]
                                          else np.nan for sh in c["shapes"]]) for c in toy["conditions"]}
        claims.append(claim(
            "drop_less_abrupt_with_one_left",
            "With one subcircuit left the drop is less abrupt relative to the plateau before it than with all three left.",
            f"10-90 % width / plateau length, mean over {', '.join(by_left[1])} − unclamped, same seed", diffs,
            "95 % CI of the mean difference above 0", ci_beyond(diffs, 0.0, "above"), not_measured=not_trained,
            paper="Singh et al.: the plateau's shape (abruptness) changes with the number of subcircuits left",
            note="toy model width / plateau length: " + ", ".join(f"{k} left {v:.2f}" for k, v in sorted(toy_rel.items()))))
    # progress measures: the loss under each clamp, logged in the unclamped run
    for g in ("A", "match", "copy"):
        key = f"loss_query_clamped_{g}"
        if key not in none_run.metrics:
            continue
        xc = crossings(none_run, thr, key)
        diffs = paired(xc, x1["none"])
        claims.append(claim(
            f"progress_{g}_leads", f"In the unclamped run, the loss under the {g} clamp crosses 0.4·ln 2 before the loss itself does.",
            f"crossing step of the probe loss with the {g} clamp applied (apply: measure) − of the plain probe loss, same seed",
            diffs, "95 % CI of the mean difference below 0, over the seeds where both cross",
            ci_beyond(diffs, 0.0, "below"), not_measured=not_trained,
            paper="Singh et al., appendix: clamped losses as progress measures show the subcircuits forming during the plateau",
            note="crossings under the clamp " + ", ".join("never" if v is None else f"{v:.0f}" for v in xc)
                 + ("; A replaces layer 0's output by the embedding, an input the network trained with layer 0 never "
                    "saw, so its loss under A can rise as training goes on (out of distribution, not a missing subcircuit)"
                    if g == "A" else "")))
    # Fig. 6
    for ax in p2:
        for c, what, paper in (("none", "the unclamped plateau", "Fig. 6: more classes and more labels delay the phase change"),
                               (ONLY_B, "the plateau with only B left (A and copy clamped)", "Fig. 6: the number of classes acts on B"),
                               (ONLY_C, "the plateau with only C left (match clamped)", "Fig. 6: the number of labels acts on C")):
            if (ax, c) in (("labels", ONLY_B), ("classes", ONLY_C)) or c not in p2[ax]:
                continue
            ratio, note = delay_ratio(p2, s2, ax, c)
            claims.append(claim(
                f"{ax}_delay_{'unclamped' if c == 'none' else 'only_' + ('B' if c == ONLY_B else 'C')}",
                f"More {ax} lengthen {what}.", f"plateau length at the largest / at the default number of {ax}, same seed",
                ratio, "95 % CI of the mean ratio above 1",
                None if not ratio or any(r is None for r in ratio) else ci_beyond(ratio, 1.0, "above"),
                paper=paper, note=note, not_measured=not_trained))
    for ax, slow, spared, text in (("classes", ONLY_B, ONLY_C, "More classes slow the learning of B more than that of C."),
                                   ("labels", ONLY_C, ONLY_B, "More labels slow the learning of C more than that of B.")):
        if ax not in p2 or slow not in p2[ax] or spared not in p2[ax]:
            continue
        r_slow, n1 = delay_ratio(p2, s2, ax, slow)
        r_spared, n2 = delay_ratio(p2, s2, ax, spared)
        ok = r_slow and r_spared and all(r is not None for r in r_slow + r_spared)
        diffs = [a - b for a, b in zip(r_slow, r_spared)] if ok else [None]
        claims.append(claim(
            f"{ax}_dissociation", text,
            f"plateau-length ratio (largest / default {ax}) with only {'B' if slow == ONLY_B else 'C'} left − with only "
            f"{'C' if slow == ONLY_B else 'B'} left, same seed", diffs, "95 % CI of the mean difference above 0",
            None if not ok else ci_beyond(diffs, 0.0, "above"), not_measured=not_trained,
            paper="Fig. 6: B is delayed by the number of classes, C by the number of labels", note="; ".join(x for x in (n1, n2) if x)))
    # beyond the paper: late clamps on the head chosen at the switch
    none_x = censored(x1["none"], last)
    for c, vals in x3.items():
        diffs = paired(vals, none_x)
        heads = (p3[c].summary.get("clamps") or {})
        chosen = {k: v.get("heads_per_seed") for k, v in heads.items() if isinstance(v, dict) and v.get("heads_per_seed")}
        claims.append(claim(
            f"late_{c}_no_later", f"Switching on the {c} clamp at step {late_start} makes the phase change no later than without clamps.",
            f"crossing step with the {c} clamp from step {late_start} (ramped over {LATE_RAMP}) − unclamped, same seed",
            diffs, "every seed crosses and the 95 % CI of the mean difference is at most 0",
            False if any(v is None for v in vals) else ci_beyond(diffs, 0.0, "below", strict=False),
            not_measured=not_trained, paper="not in the paper (beyond Fig. 5b): the clamps applied mid-plateau",
            note=f"heads chosen at the switch: {chosen}" if chosen else ""))
        fresh = x1.get(c)
        after = [None if v is None else v - late_start for v in vals]
        diffs = paired(after, fresh) if fresh is not None else [None]
        claims.append(claim(
            f"late_{c}_carries_progress",
            f"After the {c} clamp goes on at step {late_start}, the phase change follows sooner than with the same clamp from step 0.",
            f"(crossing step − {late_start}) − crossing step with the clamp from step 0, same seed", diffs,
            "95 % CI of the mean difference below 0",
            None if fresh is None or any(a is None for a in diffs) else ci_beyond(diffs, 0.0, "below"),
            not_measured=not_trained,
            paper="not tested in the paper; predicted by its finding that the subcircuits develop together during the plateau"))
    return claims


def delay_ratio(p2, s2, ax, cond):
    """Per-seed plateau length at the largest value of `ax` / at the default (never-left seeds at their
    run's last step, a lower bound), and a note."""
    runs = p2.get(ax, {}).get(cond, {})
    if len(runs) < 2:
        return [], "not run in this mode"
    lo, hi = min(runs), max(runs)
    a = censored(field(s2[ax][cond][lo], "plateau_length"), float(runs[lo].steps[-1]))
    b = censored(field(s2[ax][cond][hi], "plateau_length"), float(runs[hi].steps[-1]))
    ratio = [bb / aa if aa else None for aa, bb in zip(a, b)]
    n_cens = sum(v is None for v in field(s2[ax][cond][lo], "plateau_length") + field(s2[ax][cond][hi], "plateau_length"))
    note = f"{ax} {lo} -> {hi}: mean plateau length {np.mean(a):.0f} -> {np.mean(b):.0f}"
    if n_cens:
        note += f"; {n_cens} seed(s) never left the plateau, counted at their run's last step (a lower bound)"
    return ratio, note


# ---- figures ----

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _points(ax, x, vals, top, color, label=None, width=0.0):
    """Seeds as dots (never reached: open triangles at `top`)."""
    xs = x + np.linspace(-width, width, len(vals)) if width else np.full(len(vals), x, float)
    hit = [(xx, v) for xx, v in zip(xs, vals) if v is not None]
    missed = [xx for xx, v in zip(xs, vals) if v is None]
    if hit:
        ax.scatter(*zip(*hit), color=color, s=22, zorder=3, edgecolor="white", lw=0.5, label=label)
    if missed:
        ax.scatter(missed, [top] * len(missed), marker="^", facecolor="none", edgecolor=color, s=40, zorder=3)


def _bars(ax, conds, values, tops, ylabel, title):
    for i, c in enumerate(conds):
        v = [x for x in values[c] if x is not None]
        if v:
            ax.bar(i, np.mean(v), color=COLORS[c], alpha=0.35, width=0.7)
            ax.text(i, np.mean(v), f"{np.mean(v):.0f}", ha="center", va="bottom", fontsize=8)
        _points(ax, i, values[c], tops[c], COLORS[c], width=0.15)
    ax.set_xticks(range(len(conds)), conds)
    ax.set_xlabel("clamped from step 0 (Singh et al.'s names)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def fig_subcircuits(exp, p1, s1, toy):
    plt = _plt()
    conds = [c for c in CONDITIONS if c in p1]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1.2, 1.2, 1.2, 1]})
    tops = {c: float(p1[c].steps[-1]) for c in conds}
    _bars(axes[0], conds, {c: field(s1[c], "plateau_length") for c in conds}, tops,
          "plateau length (steps to 10 % of the drop from ln 2)", "Plateau length (bars: mean; dots: seeds;\nopen triangles: never left)")
    _bars(axes[1], conds, {c: field(s1[c], "width") for c in conds}, tops, "10-90 % width of the drop (steps)",
          "Abruptness of the drop")
    ax = axes[2]
    for c in conds:
        r = p1[c]
        ax.plot(r.steps, r.curve("loss_query").mean(axis=1), color=COLORS[c], lw=1.6, label=c)
    ax.axhline(0.4 * math.log(2), color="grey", ls=":", lw=1)
    ax.axhline(math.log(2), color="grey", ls="--", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("probe query loss (mean over seeds)")
    ax.set_title("Query loss (dashed: ln 2; dotted: 0.4·ln 2)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    # measured vs the toy model, each normalised to its own mean with all three left
    ax = axes[3]
    none_mean = np.mean([v for v in field(s1["none"], "plateau_length") if v is not None] or [np.nan])
    for c in [c for c in conds if c in LEFT]:
        v = np.array([np.nan if x is None else x for x in field(s1[c], "plateau_length")]) / none_mean
        ax.scatter(np.full(len(v), LEFT[c]) + 0.08 * (list(LEFT).index(c) % 2 * 2 - 1), v, color=COLORS[c], s=20,
                   label=f"lab: {c}", zorder=3)
    toy_lengths = {c["left"]: np.array([np.nan if s["plateau_length"] is None else s["plateau_length"] for s in c["shapes"]])
                   for c in toy["conditions"]}
    ref = np.nanmean(toy_lengths[3])
    ks = sorted(toy_lengths)
    ax.plot(ks, [np.nanmean(toy_lengths[k]) / ref for k in ks], color="black", marker="s", lw=1.5,
            label=f"three-factor toy model (mean of {len(toy['seeds'])} seeds)")
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 3])
    ax.set_xlabel("subcircuits (factors) left to learn")
    ax.set_ylabel("plateau length / its mean with all three left")
    ax.set_title("Measured vs Singh's toy model (Fig. 5a)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle("Singh et al. Fig. 5b in the lab, their conditions (one exemplar per class, one active layer-1 head): "
                 "A = previous-token keys, match = A + B, copy = C", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("subcircuits.png"))


def fig_progress(exp, run, threshold):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for key, label, color in (("loss_query", "probe loss (the network as trained)", "black"),
                              ("loss_query_clamped_A", "with A clamped", COLORS["A"]),
                              ("loss_query_clamped_match", "with the match clamped", COLORS["match"]),
                              ("loss_query_clamped_copy", "with the copy clamped", COLORS["copy"])):
        if key not in run.metrics:
            continue
        y = run.curve(key)
        ax.plot(run.steps, y, color=color, lw=0.6, alpha=0.3)
        ax.plot(run.steps, y.mean(axis=1), color=color, lw=1.8, label=label)
    ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.axhline(math.log(2), color="grey", ls="--", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("probe query loss (thin: seeds; thick: mean)")
    ax.set_title("Progress measures (Singh et al., appendix): the unclamped run's loss with each clamp applied", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("progress_measures.png"))


def fig_data(exp, p2, s2):
    plt = _plt()
    names = [a for a in ("classes", "labels") if a in p2] or ["classes"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.6 * len(names), 4.4), squeeze=False)
    text = {"none": "nothing clamped", ONLY_B: "only B left (A+copy)", ONLY_C: "only C left (match)", "A": "B, C left (A)"}
    for ax, name in zip(axes[0], names):
        for c, runs in p2.get(name, {}).items():
            vs = sorted(runs)
            for v in vs:
                _points(ax, v, field(s2[name][c][v], "plateau_length"), float(runs[v].steps[-1]), COLORS[c])
            means = [float(np.mean(censored(field(s2[name][c][v], "plateau_length"), float(runs[v].steps[-1])))) for v in vs]
            low = [any(x is None for x in field(s2[name][c][v], "plateau_length")) for v in vs]
            ax.plot(vs, means, color=COLORS[c], lw=1.5, marker="o", ms=4, label=text.get(c, c), ls="--" if any(low) else "-")
        ax.set_xscale("log")
        ticks = sorted({v for runs in p2.get(name, {}).values() for v in runs})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
        ax.set_xlabel({"classes": "training classes (task.n_classes)", "labels": "labels (task.n_labels)"}[name])
        ax.set_ylabel("plateau length (steps)")
        ax.set_title(f"Plateau length against the number of {name}", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Singh et al. Fig. 6 in the lab: lines = mean over seeds, dots = seeds, open triangles = never left "
                 "(at the run's end; the mean is then a lower bound, dashed)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("data_dependence.png"))


def fig_late(exp, p1, x1, p3, x3, threshold, late_start):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    none = p1["none"]
    ax.plot(none.steps, none.curve("loss_query"), color="black", lw=0.6, alpha=0.3)
    ax.plot(none.steps, none.curve("loss_query").mean(axis=1), color="black", lw=1.8, label="unclamped")
    for c, r in p3.items():
        ax.plot(r.steps, r.curve("loss_query").mean(axis=1), color=COLORS[c], lw=1.6, label=f"{c} from step {late_start}")
    ax.axvspan(late_start, late_start + LATE_RAMP, color="gold", alpha=0.3, lw=0, label=f"clamp ramp ({LATE_RAMP} steps)")
    ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set_xlim(0, float(none.steps[-1]))
    ax.set_xlabel("training step")
    ax.set_ylabel("probe query loss (mean over seeds; thin: unclamped seeds)")
    ax.set_title("Clamps switched on mid-plateau (match and copy on the head chosen per seed at the switch)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("late_clamps.png"))


if __name__ == "__main__":
    script_main(lambda: main())
