"""Data dependence and abrupt learning in in-context classification (Reddy 2024, "The mechanistic
basis of data dependence and abrupt learning in an in-context classification task").

Reddy's task (preset `experiment=reddy`, i.e. `task=reddy model=reddy`: K Gaussian-mixture classes, L labels,
N item-label pairs, burstiness B) on his two-layer attention-only network. Three questions:

1. Data dependence: IC accuracy (`acc_ic`, novel classes; `acc_ic2`, label-swapped known classes) and
   IW accuracy (`acc_iw`) over burstiness B in {0, 1, 2, 4} and number of classes K. Reddy (Fig. 2,
   recapitulating Chan et al. 2022): burstiness and many classes favour in-context learning (ICL),
   few classes and no burstiness favour in-weights learning (IWL).
2. L = N: Reddy's phenomenological model predicts, and his full network confirms (Fig. A.5, N in
   {2, 4, 8}, six seeds), that ICL is learned robustly when the number of labels L exceeds the number
   of context pairs N but not when L = N: the slow first stage (predict *some* label of the context,
   accuracy 1/L -> 1/N) is the intrinsic curriculum that leads to the induction head, and with L = N
   it gives nothing. Tested here with N = 8 context pairs of 8 distinct classes (B = 1) and L = 8
   labels, against L = 32 at the same B, with `task.distinct_labels=true`: as in Reddy's data code
   (no_repeats) the classes of a context carry distinct labels, so at L = N every label is present.
   The same check on the main grid's runs (labels class mod L, which repeat: ~5.3 distinct of 8 at
   L = N, B = 1) is reported too; there part of the first stage stays in place.
3. Progress measures: Reddy's CLA (context-label accuracy) rises slowly during the plateau, before
   the abrupt IC transition; ILA1 (layer-1 label -> own item) and TILA2 (layer-2 query -> labels of
   its class) form the induction head and rise abruptly with the transition ("progress measures that
   precede in-context learning"; hypothesis: slowly learned CLA drives ILA1 and TILA2).

A measure's rise step is fixed here, before looking at results, as the first logged step at which
its smoothed curve (the lab's moving average, 5 log points) has covered half of its rise from its
minimum to its later maximum (rises < 0.2 do not count). The transition's step is the same on
`acc_ic_ctx` (IC accuracy among the labels in context: ~0.5 on the 2-class IC set until the induction
head forms, then ~1). CLA is `cla_ic`, ILA1 / TILA2 / TLA2 are `ila1` / `tila2` / `tla2`, all on the
fixed IC set (novel classes), as logged by lab/tasks/reddy.py.

    python -m experiments.reddy_data            # 8 conditions x 1500 steps, 6 seeds (Reddy's), ~35-40 min alone
    python -m experiments.reddy_data --full     # K in {512, 1024, 2048}, L = N at B = 1 and 4, 6 seeds, 3000 steps

Default-mode budget, estimated from this VM: ~115 s of user CPU per 2-seed 1500-step run (plots,
compile and the 60 logged measure passes included), so ~300 s per 6-seed run and ~40 min for the
8 runs. Six seeds per condition, as Reddy ran, because the claims over B and K compare conditions'
means and "every seed" rules need more than one or two seeds to mean anything.
Per-condition claims (over B, over K) list each condition's mean over its seeds; they are not
averaged across conditions as if the conditions were seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import CONDITION, Experiment, claim, save_figure, script_main

ORDER = 3                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "reddy"           # configs/experiment/reddy.yaml: task and model at the paper's defaults
N_CONTEXT = 8
L_DEFAULT = 32
K_DEFAULT = 2048
BS = (0, 1, 2, 4)
# An IC accuracy this high at the end of training counts as "ICL learned" (Reddy's IC accuracy goes
# to ~1 after the transition); monotone trends may wobble by this much between neighbouring B.
ICL_LEARNED = 0.9
SLACK = 0.05
MIN_RISE = 0.2            # the lab's score_min_rise: smaller rises are not a rise
MEASURES = {"CLA": "cla_ic", "ILA1": "ila1", "TILA2": "tila2", "TLA2": "tla2"}
TRANSITION_KEY = "acc_ic_ctx"
COLORS = {"acc": "black", "CLA": "tab:blue", "ILA1": "tab:orange", "TILA2": "tab:green", "TLA2": "tab:purple"}


def label(K: int, L: int, B: int) -> str:
    return f"K{K}_L{L}_B{B}"


def rise_step(steps, values, window: int = 5, min_rise: float = MIN_RISE):
    """First logged step at which the smoothed curve has covered half its rise from its minimum
    (before its maximum) to its maximum; None if it rises by less than min_rise."""
    from lab.analysis.phase import smooth
    y = np.asarray(values, float)
    if y.size < 3 or not np.all(np.isfinite(y)):
        return None
    ys = smooth(y, window)
    i_max = int(np.argmax(ys))
    i_min = int(np.argmin(ys[:i_max + 1]))
    lo, hi = ys[i_min], ys[i_max]
    if hi - lo < min_rise:
        return None
    idx = i_min + int(np.flatnonzero(ys[i_min:] >= lo + 0.5 * (hi - lo))[0])
    return float(np.asarray(steps)[idx])


def mean_distinct_labels(task_cfg, n: int = 4096) -> float:
    """Mean number of distinct labels among the N context labels of the task's training sequences."""
    import jax

    from lab.tasks import make_task
    task = make_task(task_cfg)
    labels = np.asarray(jax.jit(lambda key: task.sample(key, n))(jax.random.PRNGKey(0)).context_labels)
    return float(np.mean([len(set(row.tolist())) for row in labels]))


def sigmoid_midpoint(run, key: str, seed: int):
    """The lab's sigmoid-fit midpoint of a rising curve (None where no abrupt rise is detected)."""
    r = run.fit(run.curve(key)[:, seed], "increase", min_amplitude=MIN_RISE)
    return r["midpoint"] if r["detected"] else None


def _mean_final(run, key: str):
    return float(np.mean(run.final(key))) if run is not None else None


def _diff(a, b):
    return None if a is None or b is None else a - b


def _progress(runs, log_every: int) -> dict:
    """Per transition seed (L = 32 runs whose IC phase change the lab detected): rise steps of the
    transition and of each measure."""
    rows = []
    for (K, L, B), run in runs.items():
        if L != L_DEFAULT or B == 0:
            continue
        for s, t in enumerate(run.transitions()):
            if t is None:
                continue
            row = {"run": run.label, "seed": s, "lab_onset": t["onset"], "lab_midpoint": t["midpoint"],
                   "transition": rise_step(run.steps, run.curve(TRANSITION_KEY)[:, s])}
            for name, key in MEASURES.items():
                row[name] = rise_step(run.steps, run.curve(key)[:, s])
                row[f"{name}_sigmoid_midpoint"] = sigmoid_midpoint(run, key, s)
            rows.append(row)
    return {"log_every": log_every, "seeds": rows}


def _order_claim(cid, text, rows, quantity_fn, threshold_text, ok_fn, paper, note=""):
    values = [quantity_fn(r) for r in rows]
    held = None if not values or any(v is None for v in values) else all(ok_fn(v) for v in values)
    return claim(cid, text, quantity_fn.__doc__ or "", values, threshold_text, held, paper=paper, note=note)


def _figure_accuracy(runs, ks, path, l_eq_n_runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for i, K in enumerate(ks):
        color = f"C{i}"
        bs = [B for B in BS if (K, L_DEFAULT, B) in runs]
        if not bs:
            continue
        for ax, key, ls, name in ((axes[0], "acc_ic", "-", "IC (novel classes)"),
                                  (axes[0], "acc_ic2", ":", "IC2 (swapped labels)"),
                                  (axes[1], "acc_iw", "-", "IW")):
            finals = np.array([runs[(K, L_DEFAULT, B)].final(key) for B in bs])     # (B, seeds)
            ax.plot(bs, finals.mean(1), ls=ls, color=color, marker="o", label=f"{name}, K = {K}")
            for j in range(finals.shape[1]):
                ax.scatter(bs, finals[:, j], color=color, s=12, alpha=0.5)
    for ax, title in ((axes[0], "in-context accuracy"), (axes[1], "in-weights accuracy")):
        ax.axhline(1 / L_DEFAULT, color="grey", lw=0.7, ls="--", label=f"chance 1/L = 1/{L_DEFAULT}")
        ax.set_xticks(BS)
        ax.set_xlabel("burstiness B (copies of each class in a context)")
        ax.set_ylabel("final accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{title} vs B (L = {L_DEFAULT}, N = {N_CONTEXT}; dots: seeds)")
        ax.legend(fontsize=7)
    ax = axes[2]
    for (K, L, B), run in l_eq_n_runs.items():
        if B != 1 or K != K_DEFAULT:
            continue
        color = "tab:red" if L == N_CONTEXT else "tab:blue"
        curves = run.curve("acc_ic")
        for s in range(curves.shape[1]):
            ax.plot(run.steps, curves[:, s], color=color, alpha=0.8, lw=1.2,
                    label=f"L = {L}{' = N' if L == N_CONTEXT else ' > N'}" if s == 0 else None)
        ax.axhline(1 / L, color=color, lw=0.7, ls="--")
    ax.set_xlabel("training step")
    ax.set_ylabel("IC accuracy (novel classes)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"L = N vs L > N (N = {N_CONTEXT}, B = 1, K = {K_DEFAULT}, distinct labels\nin each context; "
                 "dashed: chance 1/L)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Reddy 2024 task: burstiness favours in-context over in-weights learning")


def _figure_progress(runs, progress, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = runs.get((K_DEFAULT, L_DEFAULT, 4))
    n_seeds = base.curve("acc_ic").shape[1] if base is not None else 0
    n_panels = min(n_seeds, 3) + 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.4), squeeze=False)
    axes = axes[0]
    rows = {(r["run"], r["seed"]): r for r in progress["seeds"]}
    for s in range(n_panels - 1):
        ax = axes[s]
        row = rows.get((base.label, s), {})
        curves = {"acc": TRANSITION_KEY, **MEASURES}
        for name, key in curves.items():
            y = base.curve(key)[:, s]
            ax.plot(base.steps, y, color=COLORS[name], lw=1.4 if name != "TLA2" else 0.9,
                    ls="-" if name != "TLA2" else "--",
                    label="IC acc. among context labels" if name == "acc" else f"{name} ({key})")
            step = row.get("transition" if name == "acc" else name)
            if step is not None:
                ax.axvline(step, color=COLORS[name], lw=1.0, ls=":", alpha=0.9)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("training step")
        ax.set_ylabel("score")
        ax.set_title(f"K = {K_DEFAULT}, B = 4, seed {s}\n(dotted: half-rise step of each curve)")
        if s == 0:
            ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    names = list(MEASURES)
    runs_seen = sorted({r["run"] for r in progress["seeds"]})
    labelled = set()
    for i, name in enumerate(names):
        for r in progress["seeds"]:
            if r[name] is None or r["transition"] is None:
                continue
            j = runs_seen.index(r["run"])
            ax.scatter(r[name] - r["transition"], i + 0.12 * (j - (len(runs_seen) - 1) / 2),
                       color=f"C{j}", s=22, label=None if r["run"] in labelled else r["run"])
            labelled.add(r["run"])
    ax.axvline(0, color="black", lw=0.8)
    ax.axvspan(-progress["log_every"], progress["log_every"], color="grey", alpha=0.15, lw=0)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("rise step − IC transition step (steps; < 0: before)")
    ax.set_title("all seeds with a detected IC transition\n(grey: ± one log interval)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return save_figure(fig, path, "Progress measures around the abrupt in-context transition (Reddy 2024 Fig. 4 analogue)")


def main(argv=None):
    exp = Experiment("reddy_data", "Data dependence and abrupt learning", "Reddy 2024", argv)
    seeds = exp.seeds(1, 6, 6)          # Reddy's own six seeds
    steps = exp.pick(30, 1500, 3000)
    probe = exp.pick(64, 256, 512)
    ks = exp.pick((K_DEFAULT,), (512, K_DEFAULT), (512, 1024, K_DEFAULT))
    seeds_k = {K: seeds for K in ks}
    conditions = exp.pick(
        smoke=[(K_DEFAULT, L_DEFAULT, 0), (K_DEFAULT, L_DEFAULT, 4)],
        default=[(K_DEFAULT, L_DEFAULT, B) for B in BS] + [(512, L_DEFAULT, 0), (512, L_DEFAULT, 4)],
        full=[(K, L_DEFAULT, B) for K in ks for B in BS] + [(K_DEFAULT, N_CONTEXT, 1), (K_DEFAULT, N_CONTEXT, 4)])
    runs = {}
    for K, L, B in conditions:
        runs[(K, L, B)] = exp.run(label(K, L, B), [
            f"experiment={PRESET}", f"task.n_classes={K}", f"task.n_labels={L}", f"task.burstiness={B}",
            f"task.probe_size={probe}", f"train.seeds={seeds_k.get(K, seeds)}", f"train.steps={steps}"])
    any_run = next(iter(runs.values()))
    log_every = int(any_run.cfg.train.log_every)
    claims = []

    # ---- the abrupt transition at the paper's defaults ----
    base = runs.get((K_DEFAULT, L_DEFAULT, 4))
    onsets = base.onsets() if base is not None else []
    claims.append(claim(
        "abrupt_icl_default", f"At the paper's defaults (K = {K_DEFAULT}, L = {L_DEFAULT}, N = {N_CONTEXT}, B = 4) "
        "in-context learning arrives through an abrupt transition in every seed.",
        "seeds with a transition in loss_ic_ctx after its plateau (change points or sigmoid)",
        [m is not None for m in onsets], "every seed", None if base is None else all(m is not None for m in onsets),
        paper="a slow plateau followed by an abrupt jump of IC accuracy to ~1 (Fig. 1d, 3a)"))

    # ---- data dependence over B, per K ----
    for K in ks:
        bs = [B for B in BS if (K, L_DEFAULT, B) in runs]
        ic = [_mean_final(runs[(K, L_DEFAULT, B)], "acc_ic") for B in bs]
        iw = [_mean_final(runs[(K, L_DEFAULT, B)], "acc_iw") for B in bs]
        measurable = len(bs) >= 2 and 0 in bs and 4 in bs
        ic_ok = measurable and ic[-1] - ic[0] >= 0.5 and all(b >= a - SLACK for a, b in zip(ic, ic[1:]))
        iw_ok = measurable and iw[0] - iw[-1] >= 0.1 and all(b <= a + SLACK for a, b in zip(iw, iw[1:]))
        claims.append(claim(
            f"ic_rises_with_B_K{K}", f"With K = {K} classes, IC accuracy rises with burstiness B.",
            f"final acc_ic (mean over seeds) at B = {', '.join(map(str, bs))}", ic,
            f"acc_ic(B=4) − acc_ic(B=0) >= 0.5, and never falls by more than {SLACK} from one B to the next",
            ic_ok if measurable else None, unit=CONDITION,
            paper="IC accuracy grows with B (Fig. 2; Chan et al. 2022): bursty contexts are what make ICL pay"))
        claims.append(claim(
            f"iw_falls_with_B_K{K}", f"With K = {K} classes, IW accuracy falls as burstiness B rises.",
            f"final acc_iw (mean over seeds) at B = {', '.join(map(str, bs))}", iw,
            f"acc_iw(B=0) − acc_iw(B=4) >= 0.1, and never rises by more than {SLACK} from one B to the next",
            iw_ok if measurable else None, unit=CONDITION,
            paper="IW accuracy falls with B (Fig. 2): the trade-off between ICL and IWL"))

    # ---- data dependence over K ----
    if len(ks) >= 2:
        k_lo, k_hi = min(ks), max(ks)
        r_lo, r_hi = runs.get((k_lo, L_DEFAULT, 0)), runs.get((k_hi, L_DEFAULT, 0))
        d0 = _diff(_mean_final(r_lo, "acc_iw"), _mean_final(r_hi, "acc_iw")) if r_lo and r_hi else None
        claims.append(claim(
            "iw_falls_with_K_B0", f"Without bursty contexts (B = 0), fewer classes are memorised better: "
            f"IW accuracy at K = {k_lo} exceeds that at K = {k_hi}.",
            f"acc_iw(K={k_lo}) − acc_iw(K={k_hi}) at B = 0 (means over seeds)", [d0], ">= 0.1",
            None if d0 is None else d0 >= 0.1, unit=CONDITION,
            paper="large dictionaries (many classes) slow in-weights learning (Fig. 2; Chan et al. 2022)"))
        r_lo, r_hi = runs.get((k_lo, L_DEFAULT, 4)), runs.get((k_hi, L_DEFAULT, 4))
        if r_lo and r_hi:
            dic = _diff(_mean_final(r_hi, "acc_ic"), _mean_final(r_lo, "acc_ic"))
            diw = _diff(_mean_final(r_lo, "acc_iw"), _mean_final(r_hi, "acc_iw"))
            held = dic >= -SLACK and diw >= -SLACK and max(dic, diw) >= 0.1
        else:
            dic = diw = held = None
        claims.append(claim(
            "k_shifts_to_icl_B4", f"At B = 4, more classes (K = {k_hi} vs {k_lo}) shift the network from "
            "in-weights toward in-context learning.",
            f"[acc_ic(K={k_hi}) − acc_ic(K={k_lo}), acc_iw(K={k_lo}) − acc_iw(K={k_hi})] at B = 4",
            [dic, diw], f"both >= −{SLACK} and at least one >= 0.1", held, unit=CONDITION,
            paper="ICL rises and IWL falls with K (Fig. 2); Reddy's default K = 2048 is where ICL wins"))

    # ---- L = N ----
    # The paper's condition: the classes of a context carry distinct labels (Reddy's no_repeats,
    # task.distinct_labels), so at L = N, B = 1 every label is in every context; the L = 32 control is
    # run the same way. The grid's runs (labels k mod L, which repeat) are checked as a second variant.
    variants, distinct = {"distinct": {}, "repeating": {}}, {}
    for L in exp.pick((N_CONTEXT,), (N_CONTEXT, L_DEFAULT)):
        variants["distinct"][(K_DEFAULT, L, 1)] = exp.run(label(K_DEFAULT, L, 1) + "_distinct", [
            f"experiment={PRESET}", f"task.n_classes={K_DEFAULT}", f"task.n_labels={L}", "task.burstiness=1",
            "task.distinct_labels=true", f"task.probe_size={probe}", f"train.seeds={seeds}", f"train.steps={steps}"])
    variants["repeating"] = runs
    for variant, vruns in variants.items():
        for B in (1, 4):
            eq, gt = vruns.get((K_DEFAULT, N_CONTEXT, B)), vruns.get((K_DEFAULT, L_DEFAULT, B))
            if eq is None:
                continue
            n_distinct = distinct[eq.label] = mean_distinct_labels(eq.cfg.task)
            acc_eq = eq.final("acc_ic")
            learned_eq = float(np.mean(acc_eq >= ICL_LEARNED))
            learned_gt = float(np.mean(gt.final("acc_ic") >= ICL_LEARNED)) if gt is not None else None
            held = None if learned_gt is None else (learned_eq <= 0.5 and learned_gt == 1.0)
            how = ("the context's classes carry distinct labels, as in Reddy's data" if variant == "distinct"
                   else "labels k mod L, which may repeat in a context")
            claims.append(claim(
                f"no_icl_L_eq_N_B{B}" + ("" if variant == "distinct" else "_repeating_labels"),
                f"With as many labels as context pairs (L = N = {N_CONTEXT}, B = {B}; {how}) the network does "
                f"not learn ICL, while with L = {L_DEFAULT} > N at the same B it does.",
                f"final acc_ic per seed at L = N (ICL learned: acc_ic >= {ICL_LEARNED})", acc_eq.tolist(),
                f"at L = N at most half the seeds learn ICL, and every seed at L = {L_DEFAULT} does "
                f"(here: {learned_eq:.2f} vs {'n/a' if learned_gt is None else f'{learned_gt:.2f}'})", held,
                paper="'the full model robustly learns an ICL solution for L > N but not when L = N' (Fig. A.5: N in "
                      "{2, 4, 8} x L, six seeds), a prediction of the three-logit model: with L = N there is no slow "
                      "context-label stage (accuracy 1/L -> 1/N) to lead the network to the induction head",
                note=f"{n_distinct:.2f} distinct labels of {N_CONTEXT} per training context"
                     + ("" if variant == "distinct" else
                        f", so the context-label stage still helps (1/{N_CONTEXT} -> ~1/{n_distinct:.1f})")))

    # ---- progress measures ----
    progress = _progress(runs, log_every)
    rows = progress["seeds"]
    paper_order = ("Reddy Fig. 4 and text: CLA rises slowly during the plateau, before the transition; ILA1 and "
                   "TILA2 (the induction head) rise abruptly with the IC jump ('progress measures that precede "
                   "in-context learning'); hypothesis: slowly learned CLA drives ILA1 and TILA2")
    note_rows = "over every seed with a lab-detected IC transition in the L = 32, B > 0 runs"

    def cla_vs_transition(r):
        """CLA rise step − IC transition step (steps)"""
        return _diff(r["CLA"], r["transition"])

    def cla_vs_head(r):
        """CLA rise step − earlier of the ILA1 and TILA2 rise steps (steps)"""
        if r["ILA1"] is None or r["TILA2"] is None:
            return None
        return _diff(r["CLA"], min(r["ILA1"], r["TILA2"]))

    def ila1_vs_transition(r):
        """ILA1 rise step − IC transition step (steps)"""
        return _diff(r["ILA1"], r["transition"])

    def tila2_vs_transition(r):
        """TILA2 rise step − IC transition step (steps)"""
        return _diff(r["TILA2"], r["transition"])

    claims.append(_order_claim(
        "cla_before_transition", "Context-label accuracy (CLA) rises before the abrupt IC transition.",
        rows, cla_vs_transition, f"<= −{log_every} (one log interval before) in every seed",
        lambda v: v <= -log_every, paper_order, note_rows))
    claims.append(_order_claim(
        "cla_before_ila1_tila2", "CLA rises before ILA1 and TILA2, the two halves of the induction head.",
        rows, cla_vs_head, f"<= −{log_every} in every seed", lambda v: v <= -log_every, paper_order, note_rows))
    claims.append(_order_claim(
        "ila1_not_after_transition", "Item-label attention in layer 1 (ILA1) rises no later than the IC transition.",
        rows, ila1_vs_transition, f"<= +{log_every} (within one log interval after) in every seed",
        lambda v: v <= log_every, paper_order, note_rows))
    claims.append(_order_claim(
        "tila2_not_after_transition", "Query-to-class-label attention in layer 2 (TILA2) rises no later than the "
        "IC transition.", rows, tila2_vs_transition, f"<= +{log_every} in every seed",
        lambda v: v <= log_every, paper_order, note_rows))

    figs = [_figure_accuracy(runs, ks, exp.figure_path("accuracy_vs_B.png"), variants["distinct"])]
    if base is not None:
        figs.append(_figure_progress(runs, progress, exp.figure_path("progress_measures.png")))
    finals = {run.label: {k: run.final(k).tolist() for k in ("acc_ic", "acc_ic2", "acc_iw", "acc_ic_ctx", "cla_ic")}
              | {"ic_phase_midpoints": run.midpoints(), "ic_phase_onsets": run.onsets()} for run in [*runs.values(), *variants["distinct"].values()]}
    exp.finish(claims, figs, extra={"final": finals, "progress": progress,
                                    "mean_distinct_context_labels": distinct})


if __name__ == "__main__":
    script_main(lambda: main())
