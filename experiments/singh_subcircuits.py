"""What needs to go right for an induction head (Singh et al. 2024): subcircuit clamps and phase-change timing.

Preset `experiment=singh` (configs/experiment/singh.yaml): task `singh` (x1 l1 x2 l2 xq: two exemplar-label
pairs of two classes, labels re-drawn from K per sequence, the query's label is scored) on `model=singh`
(2 attention-only layers, 8 heads, RoPE), lr 3e-4, batch 32, logged every 10 steps.
Timing = the first logged step where the probe query loss `loss_query` falls below 0.4·ln 2 (Singh's
criterion, the task's phase threshold), per seed; a seed that never crosses is reported as not crossed.

The three subcircuits, and what each clamp here fixes ("artificial optogenetics": the clamped
activation replaces the network's own in the training and the measuring passes; gradients flow
through everything left free):

- A, previous-token attend + copy (layer 0): `blocks.0.attn.out` at the label positions (1 and 3),
  every head, is grafted from the finished *unclamped* run of the same task config (`value: graft`,
  that run's final checkpoint, seed i from seed i). So what layer 0 writes into the label tokens,
  i.e. where it attends and what it copies from the exemplar before each label, is exactly what a
  converged network writes there, and no parameter between the exemplar and that write is learned.
  Layer 0 stays free at the item and query positions, so the query side of B is still learned.
  `A_att` is the attend part alone: an ideal previous-token pattern on L0H0 (`value: prev_token`:
  every position attends to the one before it); its copy (L0H0's W_V, W_O) is learned. A_att is run
  alone and in --full only (measured once at default scale: crossing 540, 590, 460 vs unclamped 810,
  930, 720); the combinations use A.
- B, induction-head query/key match (layer 1): L1H0's attention pattern at the query is set to the
  ideal one, all mass on the label token equal to the query's label (`value: induction`, heads [0];
  other rows and heads are free). What B's pattern does with the label (the copy) is still learned.
- C, induction-head copy (value/output): the logits are replaced by log(attention mass that L1H0
  puts on each label id + 1e-6) (`value: perfect_copy`, copy_from L1H0), so reading out the attended
  label is perfect and only where L1H0 attends has to be learned. This is a fair 'copy' clamp for
  the IH's OV circuit and the unembedding, but it is stronger than copying alone: it also removes
  every other path to the logits (the direct path and the other 15 heads), so the network *must*
  route the answer through L1H0. Its loss starts at ln 2, not ln K, because attention mass can only
  fall on labels in the context.
- With B and C together the logits are fixed entirely (the ideal pattern read out perfectly), so
  BC and ABC have nothing left to learn: their loss is ~0 from step 0 by construction.

Beyond the paper: the same clamps switched on at step 400 (mid-plateau: the unclamped loss sits at
~ln 2 from step ~300, leaves it at ~500-700 and crosses at ~820), ramped linearly over 50 steps.

    python -m experiments.singh_subcircuits            # 5 seeds, 16 runs: ~15 min alone (3 seeds took ~9)
    python -m experiments.singh_subcircuits --full     # 8 seeds, 2x steps, all conditions, more values

Reduced in the default mode: Fig. 5b without A_att and B+C (B+C is A+B+C here, see above); Fig. 6
with one extra value per axis (classes 50 -> 500, labels 5 -> 20) and three conditions per value:
unclamped, "only B left to learn" (A and C clamped) and "only C left to learn" (A and B clamped).
The late clamps are A, B and C singly. Each lab run costs ~20 s beyond its steps (compile, the
per-head phase fits of summary.json, plots), so the budget goes mostly to the number of runs.
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
PRESET = "singh"           # configs/experiment/singh.yaml: the unclamped recipe every condition starts from
DEFAULT_CLASSES, DEFAULT_LABELS = 50, 5           # configs/task/singh.yaml
LABEL_POSITIONS = [1, 3]                          # x1 l1 x2 l2 xq: task.n_context=2 is not varied here
CONDITIONS = ("none", "A_att", "A", "B", "C", "AB", "AC", "BC", "ABC")
ONLY_B, ONLY_C = "AC", "AB"                       # what is left to learn when the other two are clamped
LATE_RAMP = 50
# Threshold of "removes the plateau": a crossing within 10 % of the unclamped crossing step.
NO_PLATEAU_FRAC = 0.10
COND_LABEL = {"none": "none", "A_att": "A (attend)", "A": "A", "B": "B", "C": "C", "AB": "A+B", "AC": "A+C",
              "BC": "B+C", "ABC": "A+B+C"}
COLORS = {"none": "black", "A_att": "tab:olive", "A": "tab:orange", "B": "tab:blue", "C": "tab:green",
          "AB": "tab:purple", "AC": "tab:red", "BC": "tab:cyan", "ABC": "tab:gray"}


def clamp_overrides(cond: str, source=None, start: int = 0) -> list[str]:
    """The `+clamps.<name>={...}` overrides of a condition; `source` is the finished unclamped Run that A
    grafts from. Its final step is pinned (`source_step`), so a retrained source changes this config
    and the clamped run is retrained too instead of being reused from the cache."""
    late = f", start: {start}, schedule: linear, ramp_steps: {LATE_RAMP}" if start else ""
    graft = "" if source is None else "{site: blocks.0.attn.out, value: graft, source: '%s', source_step: %d, " \
        "queries: %s%%s}" % (Path(source.run_dir).resolve(), int(source.cfg.train.steps), LABEL_POSITIONS)
    spec = {
        "A_att": "{site: blocks.0.attn.pattern, value: prev_token, heads: [0]%s}",
        "A": graft,
        "B": "{site: blocks.1.attn.pattern, value: induction, heads: [0]%s}",
        "C": "{site: logits, value: perfect_copy, copy_from: L1H0%s}",
    }
    parts = [] if cond == "none" else ["A_att"] if cond == "A_att" else list(cond)
    return [f"+clamps.{p}={spec[p] % late}" for p in parts]


def crossings(run, threshold: float) -> list:
    curve = run.curve("loss_query")
    return [crossing_step(run.steps, curve[:, s], threshold) for s in range(curve.shape[1])]


def mean_or_none(values):
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v and len(v) == len(values) else None


def paired(a, b):
    """Per-seed differences a_i - b_i (seed i of one condition against seed i of another: same
    initialisation and data); None where either seed did not cross."""
    return [x - y if x is not None and y is not None else None for x, y in zip(a, b)]


def censored(values, last_step):
    """Crossing steps with never-crossed seeds put at the run's last step (a lower bound)."""
    return [last_step if v is None else v for v in values]


def main(argv=None):
    exp = Experiment(NAME, "What needs to go right for an induction head", "Singh et al. 2024", argv,
                     description=__doc__.splitlines()[0])
    seeds = exp.seeds(1, 5, 8)
    scale = exp.pick(1, 1, 2)
    # steps per condition: long enough for every seed to cross (exploratory runs: unclamped ~725-950,
    # A ~300-550, the others <= 200), the unclamped baseline with margin
    steps1 = {c: s * scale for c, s in {"none": 1300, "A_att": 800, "A": 600, "B": 300, "C": 300, "AB": 300,
                                          "AC": 300, "BC": 50, "ABC": 50}.items()}
    # smoke: two runs (compile time dominates): the baseline, and all three clamps switched on late
    # default: A_att and BC only in --full (BC fixes the logits exactly as ABC does; both for time)
    conds = exp.pick(smoke=["none"], default=[c for c in CONDITIONS if c not in ("A_att", "BC")],
                     full=list(CONDITIONS))
    sweep = exp.pick(smoke={}, default={"classes": [500], "labels": [20]},
                     full={"classes": [200, 500, 1000], "labels": [10, 20, 50]})
    sweep_conds = exp.pick(smoke=["none"], default=["none", ONLY_B, ONLY_C])
    # steps for the sweep's extra values (a step costs ~0.02 ms more per class; crossings measured
    # at 1000 classes: unclamped 1630-1900, only B 540-640, only C 150-160; at 20 labels: unclamped
    # 800-880, only B 120-180, only C 400-410). The unclamped runs are also A's graft source, so they
    # run well past their crossing.
    sweep_steps = {("classes", "none"): 3000, ("classes", ONLY_B): 1000, ("classes", ONLY_C): 300,
                   ("labels", "none"): 1300, ("labels", ONLY_B): 300, ("labels", ONLY_C): 600}
    late_start = exp.pick(10, 400, 400)
    late_conds = exp.pick(smoke=["ABC"], default=["A", "B", "C"])
    late_steps = 1300 * scale
    common = [f"experiment={PRESET}", f"train.seeds={seeds}"]

    def run(label, cond, steps, task=(), start=0, source=None):
        return exp.run(label, common + [f"train.steps={steps}", *task] + clamp_overrides(cond, source, start))

    # ---- 1. Fig. 5b: clamps from step 0 ----
    p1 = {}
    for c in conds:
        p1[c] = run(c if c == "none" else f"clamp_{c}", c, steps1[c], source=p1.get("none"))
    m = p1["none"].cfg.task.n_context_classes
    threshold = 0.4 * math.log(m)
    x1 = {c: crossings(r, threshold) for c, r in p1.items()}

    # ---- 2. Fig. 6: timing against classes and labels ----
    axis_key = {"classes": "task.n_classes", "labels": "task.n_labels"}
    default_value = {"classes": DEFAULT_CLASSES, "labels": DEFAULT_LABELS}
    p2 = {ax: {c: {default_value[ax]: p1[c]} for c in sweep_conds if c in p1} for ax in sweep}
    for ax, values in sweep.items():
        for v in values:
            task = [f"{axis_key[ax]}={v}"]
            for c in sweep_conds:      # "none" first: it is A's graft source for this task config
                steps = exp.pick(30, sweep_steps[(ax, c)], 2 * sweep_steps[(ax, c)])
                src = p2[ax].get("none", {}).get(v)
                p2[ax].setdefault(c, {})[v] = run(f"{ax}{v}_{c}", c, steps, task, source=src)
    x2 = {ax: {c: {v: crossings(r, threshold) for v, r in runs.items()} for c, runs in d.items()}
          for ax, d in p2.items()}

    # ---- 3. beyond the paper: the clamps switched on mid-training ----
    p3 = {c: run(f"late_{c}", c, late_steps, start=late_start, source=p1["none"]) for c in late_conds}
    x3 = {c: crossings(r, threshold) for c, r in p3.items()}

    log_every = int(p1["none"].cfg.train.log_every)
    claims = make_claims(exp, x1, p1, x2, p2, x3, p3, threshold, late_start, log_every)
    figs = [fig_subcircuits(exp, p1, x1, threshold), fig_data(exp, p2, x2, threshold),
            fig_late(exp, p1, x1, p3, x3, threshold, late_start)]
    extra = {"threshold": threshold, "crossing_steps": {"clamped_from_step_0": x1, "data": x2,
                                                        f"clamped_from_step_{late_start}": x3},
             "steps": {"clamped_from_step_0": {c: int(r.steps[-1]) for c, r in p1.items()},
                       "late": late_steps}}
    exp.finish(claims, figs, extra=extra)


def make_claims(exp, x1, p1, x2, p2, x3, p3, threshold, late_start, log_every):
    claims = []
    thr_text = f"0.4·ln 2 = {threshold:.3f}"
    none = x1["none"]
    none_mean = mean_or_none(none)
    claims.append(claim(
        "unclamped_crosses", f"Without clamps the query loss falls below {thr_text} within the run (the plateau ends).",
        "crossing step per seed (unclamped)", none, f"every seed crosses by step {int(p1['none'].steps[-1])}",
        all(v is not None for v in none),
        paper="Singh et al.: a plateau at ln 2, then an abrupt phase change as the induction head forms"))
    # Fig. 5b: single clamps
    names = {"A_att": "A's attend part alone (ideal previous-token pattern on L0H0)",
             "A": "subcircuit A (layer 0's write into the label tokens, grafted from a converged run)",
             "B": "subcircuit B (ideal induction pattern on L1H0)",
             "C": "subcircuit C (perfect copy of L1H0's attention to the logits)"}
    for c in ("A_att", "A", "B", "C"):
        vals = x1.get(c)
        if vals is None and c == "A_att":
            continue            # run in --full only
        diffs = paired(vals, none) if vals is not None else [None]
        uncrossed = vals is not None and any(v is None for v in vals)
        claims.append(claim(
            f"clamp_{c}_no_later", f"Clamping {names[c]} from step 0 makes the phase change no later than without clamps.",
            f"crossing step with clamp {c} − unclamped crossing step, same seed", diffs,
            f"every seed crosses and the 95 % CI of the mean difference is at most +{log_every} (one log interval)",
            False if uncrossed else ci_beyond(diffs, log_every, "below", strict=False),
            paper="Fig. 5b: clamping any of the subcircuits speeds up the phase change (weakest form: no later)",
            note="not run in this mode" if vals is None else "crossing steps " + ", ".join(
                "never" if v is None else f"{v:.0f}" for v in vals)))
    # pairs: no later than the slower of their two single clamps
    diffs, notes = [], []
    pairs = [p for p in ("AB", "AC", "BC") if p in x1] or ["AB"]
    for pair in pairs:
        singles = [mean_or_none(x1[p]) if p in x1 else None for p in pair]
        pm = mean_or_none(x1[pair]) if pair in x1 else None
        if pm is None or any(s is None for s in singles):
            diffs.append(None)
        else:
            diffs.append(pm - max(singles))
            notes.append(f"{pair}: {pm:.0f} vs {' and '.join(f'{p} {s:.0f}' for p, s in zip(pair, singles))}")
    claims.append(claim(
        "pairs_no_later", "Clamping a pair of subcircuits makes the phase change no later than the slower of its two single clamps.",
        f"mean crossing of the pair − the larger mean crossing of its two single clamps, for {', '.join(pairs)}",
        diffs, "<= 0 for every pair", None if any(d is None for d in diffs) else all(d <= 0 for d in diffs),
        paper="Fig. 5b: clamping more subcircuits speeds the phase change further (weakest form)", kind=CONTROL,
        unit=CONDITION, note="a control: a pair fixes everything its slower single clamp fixes and more, so it cannot "
                             "be expected to be slower; " + "; ".join(notes)))
    vals = x1.get("ABC")
    lim = None if none_mean is None else NO_PLATEAU_FRAC * none_mean
    held = None if vals is None or lim is None else all(v is not None and v <= lim for v in vals)
    claims.append(claim(
        "all_three_no_plateau", "Clamping all three subcircuits removes the plateau.",
        "crossing step per seed, clamps A+B+C", vals if vals is not None else [None],
        f"<= {NO_PLATEAU_FRAC:.0%} of the unclamped mean crossing ({'n/a' if lim is None else f'{lim:.0f}'}) in every seed",
        held, paper="Fig. 5b: with every subcircuit clamped there is no phase change left", kind=CONTROL,
        note="a control: in this lab B+C alone fix the logits (ideal pattern read out perfectly), so it holds by construction."))
    # Fig. 6: data dependence
    for ax, big_name in (("classes", "classes"), ("labels", "labels")):
        for c, what, paper in (
                ("none", "the unclamped phase change", "Fig. 6: more classes and more labels delay the phase change"),
                (ONLY_B, "the phase change when only B is left to learn (A and C clamped)",
                 "Fig. 6: the number of classes acts on subcircuit B"),
                (ONLY_C, "the phase change when only C is left to learn (A and B clamped)",
                 "Fig. 6: the number of labels acts on subcircuit C (dramatically)")):
            if (ax, c) in (("labels", ONLY_B), ("classes", ONLY_C)):
                continue     # compared in the dissociation claims below
            ratio, note = delay_ratio(x2, p2, ax, c)
            claims.append(claim(
                f"{ax}_delay_{'unclamped' if c == 'none' else 'only_' + ('B' if c == ONLY_B else 'C')}",
                f"More {big_name} delay {what}.",
                f"crossing step at the largest / at the default number of {ax}, same seed", ratio,
                "95 % CI of the mean ratio above 1",
                None if not ratio or any(r is None for r in ratio) else ci_beyond(ratio, 1.0, "above"),
                paper=paper, note=note))
    for ax, slow, spared, text in (("classes", ONLY_B, ONLY_C, "More classes slow the learning of B more than that of C."),
                                   ("labels", ONLY_C, ONLY_B, "More labels slow the learning of C more than that of B.")):
        r_slow, n1 = delay_ratio(x2, p2, ax, slow)
        r_spared, n2 = delay_ratio(x2, p2, ax, spared)
        ok = r_slow and r_spared and all(r is not None for r in r_slow + r_spared)
        diffs = [a - b for a, b in zip(r_slow, r_spared)] if ok else [None]
        claims.append(claim(
            f"{ax}_dissociation", text,
            f"delay ratio (largest / default {ax}) with only {'B' if slow == ONLY_B else 'C'} to learn − with only "
            f"{'C' if slow == ONLY_B else 'B'} to learn, same seed", diffs, "95 % CI of the mean difference above 0",
            None if not ok else ci_beyond(diffs, 0.0, "above"),
            paper="Fig. 6: subcircuit B is delayed by the number of classes, C by the number of labels",
            note="; ".join(n for n in (n1, n2) if n)))
    # beyond the paper: late clamps
    for c, vals in x3.items():
        diffs = paired(vals, none)
        claims.append(claim(
            f"late_{c}_no_later", f"Switching on the clamp of subcircuit {c} at step {late_start} still makes the phase change no later than without clamps.",
            f"crossing step with clamp {c} from step {late_start} (ramped over {LATE_RAMP}) − unclamped crossing, same seed",
            diffs, f"every seed crosses and the 95 % CI of the mean difference is at most +{log_every}",
            False if any(v is None for v in vals) else ci_beyond(diffs, log_every, "below", strict=False),
            paper="not in the paper (beyond Fig. 5b): the clamps applied mid-plateau"))
        fresh = x1.get(c)
        after = [None if v is None else v - late_start for v in vals]
        diffs = paired(after, fresh) if fresh is not None else [None]
        claims.append(claim(
            f"late_{c}_carries_progress",
            f"After the clamp of subcircuit {c} is switched on at step {late_start}, the phase change follows sooner than it does with the same clamp from step 0.",
            f"(crossing step − {late_start}) − crossing step with the clamp from step 0, same seed", diffs,
            "95 % CI of the mean difference below 0",
            None if fresh is None or any(a is None for a in diffs) else ci_beyond(diffs, 0.0, "below"),
            paper="not tested in the paper; predicted by its finding that the subcircuits develop gradually "
                  "and together during the plateau (progress before the clamp carries over)"))
    return claims


def delay_ratio(x2, p2, ax, cond):
    """Per-seed crossing at the largest value of `ax` / at the default value (never-crossed seeds at
    their run's last step, a lower bound), and a note on censoring."""
    runs = p2.get(ax, {}).get(cond, {})
    if len(runs) < 2:
        return [], "not run in this mode"
    lo, hi = min(runs), max(runs)
    a = censored(x2[ax][cond][lo], float(runs[lo].steps[-1]))
    b = censored(x2[ax][cond][hi], float(runs[hi].steps[-1]))
    n_cens = sum(v is None for v in x2[ax][cond][lo] + x2[ax][cond][hi])
    ratio = [bb / aa if aa else None for aa, bb in zip(a, b)]
    note = f"{ax} {lo} -> {hi}: mean crossing {np.mean(a):.0f} -> {np.mean(b):.0f}"
    if n_cens:
        note += f"; {n_cens} seed(s) never crossed, counted at their run's last step (a lower bound)"
    return ratio, note


# ---- figures ----

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _points(ax, x, vals, top, color, label=None, width=0.0):
    """Seeds as dots (never crossed: open triangles at `top`), mean as a bar or a tick."""
    xs = x + np.linspace(-width, width, len(vals)) if width else np.full(len(vals), x, float)
    crossed = [(xx, v) for xx, v in zip(xs, vals) if v is not None]
    missed = [xx for xx, v in zip(xs, vals) if v is None]
    if crossed:
        ax.scatter(*zip(*crossed), color=color, s=22, zorder=3, edgecolor="white", lw=0.5, label=label)
    if missed:
        ax.scatter(missed, [top] * len(missed), marker="^", facecolor="none", edgecolor=color, s=40, zorder=3)


def fig_subcircuits(exp, p1, x1, threshold):
    plt = _plt()
    conds = [c for c in CONDITIONS if c in p1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    top = max(float(r.steps[-1]) for r in p1.values())
    for i, c in enumerate(conds):
        vals = x1[c]
        mean = mean_or_none(vals)
        if mean is not None:
            ax.bar(i, mean, color=COLORS[c], alpha=0.35, width=0.7)
            ax.text(i, mean, f"{mean:.0f}", ha="center", va="bottom", fontsize=8)
        _points(ax, i, vals, top, COLORS[c], width=0.15)
    ax.set_xticks(range(len(conds)), [COND_LABEL[c] for c in conds])
    ax.set_xlabel("subcircuits clamped from step 0")
    ax.set_ylabel(f"first step with query loss < {threshold:.3f} (0.4·ln 2)")
    ax.set_title("Phase-change timing per clamp (bars: mean; dots: seeds;\nopen triangles: never crossed)")
    for c in conds:
        r = p1[c]
        ax2.plot(r.steps, r.curve("loss_query").mean(axis=1), color=COLORS[c], lw=1.6, label=COND_LABEL[c])
    ax2.axhline(threshold, color="grey", ls=":", lw=1)
    ax2.axhline(math.log(2), color="grey", ls="--", lw=0.6)
    ax2.text(0, math.log(2), " ln 2", va="bottom", fontsize=7, color="grey")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("probe query loss (mean over seeds)")
    ax2.set_title("Query loss under each clamp (dotted: threshold)")
    ax2.legend(fontsize=8, ncol=2)
    fig.suptitle("Singh et al. Fig. 5b in the lab: A = previous-token write into the labels, B = induction match, "
                 "C = induction copy", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("subcircuits.png"))


def fig_data(exp, p2, x2, threshold):
    plt = _plt()
    axes_names = [a for a in ("classes", "labels") if a in p2] or ["classes"]
    fig, axes = plt.subplots(1, len(axes_names), figsize=(5.6 * len(axes_names), 4.4), squeeze=False)
    text = {"none": "unclamped", ONLY_B: "only B to learn (A, C clamped)", ONLY_C: "only C to learn (A, B clamped)"}
    for ax, name in zip(axes[0], axes_names):
        for c, runs in p2.get(name, {}).items():
            vs = sorted(runs)
            top = max(float(r.steps[-1]) for r in runs.values())
            for v in vs:
                _points(ax, v, x2[name][c][v], top, COLORS[c])
            # mean with never-crossed seeds at their run's end (a lower bound: dashed, marked ">=")
            means = [float(np.mean(censored(x2[name][c][v], float(runs[v].steps[-1])))) for v in vs]
            low = [any(x is None for x in x2[name][c][v]) for v in vs]
            ax.plot(vs, means, color=COLORS[c], lw=1.5, marker="o", ms=4, label=text.get(c, c),
                    ls="--" if any(low) else "-")
            for v, mu, lb in zip(vs, means, low):
                if lb:
                    ax.annotate(f"≥ {mu:.0f}", (v, mu), textcoords="offset points", xytext=(6, -4),
                                fontsize=8, color=COLORS[c])
        ax.set_xscale("log")
        ticks = sorted({v for runs in p2.get(name, {}).values() for v in runs})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
        ax.set_xlabel({"classes": "training classes (task.n_classes)", "labels": "labels (task.n_labels)"}[name])
        ax.set_ylabel(f"first step with query loss < {threshold:.3f}")
        ax.set_title(f"Timing against the number of {name}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Singh et al. Fig. 6 in the lab: lines = mean over seeds, dots = seeds, open triangles = never "
                 "crossed (drawn at the run's end; the mean then is a lower bound, dashed)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("data_dependence.png"))


def fig_late(exp, p1, x1, p3, x3, threshold, late_start):
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    none = p1["none"]
    ax.plot(none.steps, none.curve("loss_query"), color="black", lw=0.8, alpha=0.35)
    ax.plot(none.steps, none.curve("loss_query").mean(axis=1), color="black", lw=1.8, label="unclamped")
    for c, r in p3.items():
        ax.plot(r.steps, r.curve("loss_query").mean(axis=1), color=COLORS[c], lw=1.6, label=f"{c} from step {late_start}")
    ax.axvspan(late_start, late_start + LATE_RAMP, color="gold", alpha=0.3, lw=0, label=f"clamp ramp ({LATE_RAMP} steps)")
    ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set_xlim(0, float(none.steps[-1]))
    ax.set_xlabel("training step")
    ax.set_ylabel("probe query loss (mean over seeds; thin: unclamped seeds)")
    ax.set_title("Clamps switched on mid-plateau")
    ax.legend(fontsize=8)
    conds = list(p3)
    for i, c in enumerate(conds):
        fresh = x1.get(c)
        if fresh is not None:
            mu = mean_or_none(fresh)
            ax2.bar(i - 0.2, mu or 0, width=0.38, color=COLORS[c], alpha=0.3, hatch="//",
                    label="clamp from step 0: crossing step" if i == 0 else None)
            _points(ax2, i - 0.2, fresh, float(p1[c].steps[-1]), COLORS[c], width=0.06)
        after = [None if v is None else v - late_start for v in x3[c]]
        mu = mean_or_none(after)
        ax2.bar(i + 0.2, mu or 0, width=0.38, color=COLORS[c], alpha=0.6,
                label=f"clamp from step {late_start}: crossing − {late_start}" if i == 0 else None)
        _points(ax2, i + 0.2, after, float(p3[c].steps[-1]) - late_start, COLORS[c], width=0.06)
    nm = mean_or_none(x1["none"])
    if nm is not None:
        ax2.axhline(nm, color="black", ls="--", lw=1, label=f"unclamped crossing ({nm:.0f})")
        ax2.axhline(nm - late_start, color="black", ls=":", lw=1, label=f"unclamped crossing − {late_start}")
    ax2.set_xticks(range(len(conds)), [f"clamp {c}" for c in conds])
    ax2.set_ylabel("steps")
    ax2.set_title("Steps to the phase change after the clamp goes on")
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, exp.figure_path("late_clamps.png"))


if __name__ == "__main__":
    script_main(lambda: main())
