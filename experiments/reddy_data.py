"""Data dependence and abrupt learning in in-context classification (Reddy 2024, "The mechanistic
basis of data dependence and abrupt learning in an in-context classification task").

Reddy's task (preset `experiment=reddy`: K Gaussian-mixture classes, L = 32 labels, N = 8 item-label
pairs, burstiness B, within-class noise ε, Zipf exponent α) on his two-layer attention-only network
with his three-layer ReLU classifier, trained with SGD at batch 128 as he did. Questions:

1. The (B, K) phase diagram (Fig. 2a, recapitulating Chan et al. 2022): IC accuracy (`acc_ic`, novel
   classes), IC2 (`acc_ic2`, known classes with every label shifted by one: the context against the
   weights) and IW accuracy (`acc_iw`) over a grid of B and K, drawn as heatmaps by the sweep figures of
   lab.plots.sweep (`accuracy_grid`, and `phase_grid` for the IC transition's step): the grid's run
   directories are a lab-sweep sweep (`lab-sweep experiments/out/reddy_data/runs/grid` reports it).
   Burstiness and many classes favour in-context learning (ICL), few classes and no burstiness favour
   in-weights learning (IWL); once ICL is learned the network follows the context over its weights (IC2).
2. ε and α (Fig. 2b, c) at one (B, K) where IC and IW compete: larger within-class noise favours ICL;
   a skewed (Zipf) class distribution favours IWL.
3. L = N (`--full`, or `--parts l_eq_n`): with as many labels as context pairs (distinct labels per
   context, Reddy's no_repeats) ICL is not learned, while L = 32 > N learns it (Fig. A.5): the slow
   context-label stage is the intrinsic curriculum that leads to the induction head.
4. Progress measures: Reddy's CLA (context-label accuracy) rises during the plateau, before the abrupt IC
   transition; ILA1 (layer-1 label -> own item) and TILA2 (layer-2 query -> labels of its class) form the
   induction head and rise with the transition (Fig. 4).

A measure's rise step is fixed here, before looking at results, as the first logged step at which
its smoothed curve (the lab's moving average, 5 log points) has covered half of its rise from its
minimum to its later maximum (rises < 0.2 do not count). The transition's step is the same on
`acc_ic_ctx` (IC accuracy among the labels in context: ~0.5 on the 2-class IC set until the induction
head forms, then ~1). A claim whose runs did not train (query loss not below ln L in any seed) is "not
measured".

Paper conditions (Reddy's code, ic_vs_iw_v3.py and transformer_v2.py, as carried in the public repository
YiranHuangIrene/ICL): two attention layers (one head, no LayerNorm, no score scaling, Q/K/V ~ N(0, 1/D)),
three ReLU layers of width 128 (He init) and a linear map to the L logits at the query; plain SGD, lr
0.01, batch 128, weight decay 1e-6 per step, 150000-200000 iterations; K = 2048 default (grid 128-2048),
B in {0, 1, 2, 4}, ε = 0.1, α = 0, p_B = 1, no_repeats; six seeds. The lab's deviations:
  - momentum 0.9 on top of Reddy's SGD (lr 0.01, batch 128): ~10x larger steps, so the transition at K =
    2048, B = 4 comes after ~600 steps (measured on one seed). Plain SGD (no momentum) was tried only with
    the lab's former init (N(0, 0.02²) everywhere), where the three ReLU layers shrink the signal ~100-fold
    and the loss had not left ln L after 400 steps; with Reddy's init it needs his tens of thousands of
    steps. Default: 1000 steps; `--full`: 150000 (Reddy's count) with Reddy's own optimiser, plain SGD
    with his weight decay of 1e-6 per step (optim.momentum=0, optim.weight_decay=1e-6; not run here: no GPU).
  - the grid and sweeps are cut to fit a 2-core CPU: B in {0, 1, 4} x K in {512, 2048}; ε in {0.1, 1.0}
    and α in {0, 1} at (B, K) = (1, 512); no L = N runs. `--full`: B in {0, 1, 2, 4} x K in {128, 256,
    512, 1024, 2048}, ε in {0, 0.1, 0.25, 0.5, 0.75, 1}, α in {0, 0.5, 1, 1.5, 2}, L = N.
  - items enter through a learned projection into d_model = 128 with learned positions (Reddy: the item
    concatenated with a one-hot position code); labels are learned embeddings (Reddy: fixed random vectors).
  - the layer-2 query of Reddy's code also receives the layer-1 query (a quirk of transformer_v2.py); not here.

    python -m experiments.reddy_data            # 8 conditions x 6 seeds x 1000 steps, ~28 min on an idle 2-core CPU (estimate below)
    python -m experiments.reddy_data --full     # the paper's grid, sweeps and step count: a GPU node
    python -m experiments.reddy_data --parts grid --cells 2048:4,512:0    # a subset (claims needing other cells are left out)

Default-mode budget, measured 2026-12-04 on this VM (shared with other work, so from CPU time, not wall
time): one 6-seed, 1000-step run took 195-214 s of user+sys CPU (/usr/bin/time -v; compile included) on
one core (XLA single-threaded, seeds mapped), and the script runs one run at a time, so 8 runs are
~8 x 205 s = ~27 min of idle wall time plus ~15 s of analysis. `--full` runs 31 conditions x 150000 steps.
Six seeds per condition, as Reddy ran. Per-condition claims (over B, K, ε, α) list each condition's mean
over its seeds; they are not averaged across conditions as if the conditions were seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import CONDITION, CONTROL, Experiment, ci_beyond, claim, save_figure, script_main, trained

ORDER = 3                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "reddy"           # configs/experiment/reddy.yaml: task and model at the paper's defaults
N_CONTEXT = 8
L_DEFAULT = 32
K_DEFAULT = 2048
BS = (0, 1, 2, 4)
# Default scale (sized for a 2-core CPU; see the module docstring) and --full (the paper's scale, a GPU node).
STEPS_DEFAULT, STEPS_FULL = 1000, 150_000
DEFAULT_EXTRA = ["train.log_every=50"]               # 30 measure passes per run
FULL_EXTRA = ["train.log_every=1000", "train.checkpoint_every=10000",
              # Reddy's own optimiser at his step count: plain SGD with his 1e-6 per-step weight decay
              "optim.momentum=0", "optim.weight_decay=1e-6"]
SWEEP_POINT = (1, 512)      # (B, K) of the ε and α sweeps: where IC and IW compete at the default scale
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


def _figure_accuracy(runs, ks, bs, path, l_eq_n_runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    l_eq_n = {k: r for k, r in l_eq_n_runs.items() if k[2] == 1 and k[0] == K_DEFAULT}
    fig, axes = plt.subplots(1, 3 if l_eq_n else 2, figsize=(15 if l_eq_n else 10.5, 4.3))
    for i, K in enumerate(ks):
        color = f"C{i}"
        bs_k = [B for B in bs if (K, L_DEFAULT, B) in runs]         # a --cells subset may lack some
        if not bs_k:
            continue
        for ax, key, ls, name in ((axes[0], "acc_ic", "-", "IC (novel classes)"),
                                  (axes[0], "acc_ic2", ":", "IC2 (swapped labels)"),
                                  (axes[1], "acc_iw", "-", "IW")):
            finals = np.array([runs[(K, L_DEFAULT, B)].final(key) for B in bs_k])     # (B, seeds)
            ax.plot(bs_k, finals.mean(1), ls=ls, color=color, marker="o", label=f"{name}, K = {K}")
            for j in range(finals.shape[1]):
                ax.scatter(bs_k, finals[:, j], color=color, s=12, alpha=0.5)
    for ax, title in ((axes[0], "in-context accuracy"), (axes[1], "in-weights accuracy")):
        ax.axhline(1 / L_DEFAULT, color="grey", lw=0.7, ls="--", label=f"chance 1/L = 1/{L_DEFAULT}")
        ax.set_xticks(bs)
        ax.set_xlabel("burstiness B (copies of each class in a context)")
        ax.set_ylabel("final accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{title} vs B (L = {L_DEFAULT}, N = {N_CONTEXT}; dots: seeds)")
        ax.legend(fontsize=7)
    if not l_eq_n:
        return save_figure(fig, path, "Reddy 2024 task: burstiness favours in-context over in-weights learning")
    ax = axes[2]
    for (K, L, B), run in l_eq_n.items():
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


def _figure_progress(runs, progress, base, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    K_top, B_top = base.cfg.task.n_classes, base.cfg.task.burstiness
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
        ax.set_title(f"K = {K_top}, B = {B_top}, seed {s}\n(dotted: half-rise step of each curve)")
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


# ---- the (B, K) grid as a sweep, and the ε / α sweeps ----

def write_sweep_overrides(run, swept: dict) -> None:
    """Mark a run directory as a job of a sweep (lab.analysis.sweep.scan reads `.hydra/overrides.yaml`):
    the swept keys first, in the order given, so the sweep's first two parameters are the heatmaps' axes."""
    import yaml
    hydra = run.run_dir / ".hydra"
    hydra.mkdir(exist_ok=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in swept.items()]))


def grid_figures(grid_dir, out_dir) -> list:
    """The (B, K) phase diagram through the sweep figures of lab.plots.sweep (lab-sweep's own code):
    accuracy_grid (IC, IC2, IW heatmaps) and phase_grid (mean IC phase-change step)."""
    import matplotlib.pyplot as plt

    from lab.analysis.sweep import scan
    from lab.plots.style import STYLE
    from lab.plots.sweep import SWEEP_FIGURES
    sweep = scan(grid_dir)
    # a run killed before it finished has no overrides.yaml yet: not a cell of the grid
    sweep.rows = [r for r in sweep.rows if all(r.get(k) is not None for k in sweep.swept)]
    paths = []
    with plt.rc_context(STYLE):
        for name in ("accuracy_grid", "phase_grid"):
            path = SWEEP_FIGURES[name].draw(sweep, out_dir / f"{name}.png")
            if path is not None:
                paths.append(path)
    return paths


def _figure_sweeps(sweeps: dict, point: tuple, path):
    """Reddy Fig. 2-style: final IC, IC2 and IW accuracy against ε and against Zipf α (dots: seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(name, runs) for name, runs in sweeps.items() if runs]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.2 * max(len(panels), 1), 4.4), squeeze=False)
    styles = {"acc_ic": ("IC (novel classes)", "tab:blue", "-"), "acc_ic2": ("IC2 (labels swapped)", "tab:cyan", ":"),
              "acc_iw": ("IW (known classes)", "tab:red", "-")}
    for ax, (name, runs) in zip(axes[0], panels):
        xs = sorted(runs)
        for key, (text, color, ls) in styles.items():
            finals = np.array([runs[x].final(key) for x in xs])       # (values, seeds)
            ax.plot(xs, finals.mean(1), color=color, ls=ls, marker="o", label=text)
            for j in range(finals.shape[1]):
                ax.scatter(xs, finals[:, j], color=color, s=10, alpha=0.4)
        ax.axhline(1 / L_DEFAULT, color="grey", lw=0.7, ls="--", label=f"chance 1/L = 1/{L_DEFAULT}")
        ax.set_xticks(xs)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel({"eps": "within-class noise ε", "alpha": "Zipf exponent α (P_k ∝ k^−α)"}[name])
        ax.set_ylabel("final accuracy (mean over seeds; dots: seeds)")
        ax.set_title(f"{'ε' if name == 'eps' else 'α'} sweep at B = {point[0]}, K = {point[1]}, L = {L_DEFAULT}")
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Reddy 2024 Fig. 2 analogue: within-class noise and Zipf skew move IC vs IW")


def _trend_claim(cid, text, runs: dict, key: str, rising: bool, min_change: float, paper: str, what: str):
    """A monotone trend of a final accuracy over a swept value (conditions' means, unit=CONDITION): total change
    >= min_change in the stated direction, never against it by more than SLACK; not measured if some
    condition's seeds did not train."""
    xs = sorted(runs)
    means = [_mean_final(runs[x], key) for x in xs]
    sign = 1 if rising else -1
    steps_ok = all(sign * (b - a) >= -SLACK for a, b in zip(means, means[1:]))
    held = len(xs) >= 2 and sign * (means[-1] - means[0]) >= min_change and steps_ok
    untrained = [x for x in xs if not any(trained_seeds(runs[x]))]
    return claim(cid, text, f"final {key} (mean over seeds) at {what} = {', '.join(map(str, xs))}", means,
                 f"{'rises' if rising else 'falls'} by >= {min_change} from the first to the last, and never "
                 f"{'falls' if rising else 'rises'} by more than {SLACK} from one value to the next",
                 held if len(xs) >= 2 else None, unit=CONDITION, paper=paper,
                 not_measured=f"no seed trained at {what} = {untrained}" if untrained else "")


def _untrained(*runs) -> str:
    """Why a claim over these runs is not measured: a run none of whose seeds trained; "" if all trained."""
    bad = [r.label for r in runs if not any(trained_seeds(r))]
    return f"no seed trained (query loss not below ln L) in {', '.join(bad)}" if bad else ""


def trained_seeds(run) -> list[bool]:
    """Per seed: its training-distribution query loss ended below chance ln L (common.trained)."""
    return [bool(t) for t in trained(run.final("loss_query"), float(np.log(run.cfg.task.n_labels)))]


def _parts(argv):
    """--parts grid,eps,alpha,l_eq_n: run only these parts of the mode's plan (default: all of the mode's);
    --cells K:B,K:B: only these cells of the (B, K) grid (a subset that fits the time at hand; the claims
    that need the missing cells are left out)."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--parts", default=None)
    parser.add_argument("--cells", default=None)
    known, rest = parser.parse_known_args(argv)
    cells = None
    if known.cells is not None:
        try:
            cells = {tuple(int(x) for x in c.split(":")) for c in known.cells.split(",")}
        except ValueError:
            cells = {()}
        if any(len(c) != 2 for c in cells):
            from lab.core import ConfigError
            raise ConfigError(f"--cells {known.cells}: write the grid cells as K:B pairs, e.g. --cells 2048:4,512:0")
    parts = None if known.parts is None else set(known.parts.split(","))
    if parts is not None and not parts <= set(PARTS):
        from lab.core import ConfigError
        raise ConfigError(f"--parts {known.parts}: unknown part(s) {sorted(parts - set(PARTS))}; "
                          f"choose among {', '.join(PARTS)}")
    return parts, cells, rest


PARTS = ("grid", "eps", "alpha", "l_eq_n")


def main(argv=None):
    parts, cells, argv = _parts(sys.argv[1:] if argv is None else list(argv))
    exp = Experiment("reddy_data", "Data dependence and abrupt learning", "Reddy 2024", argv)
    seeds = exp.seeds(1, 6, 6)          # Reddy's own six seeds
    steps = exp.pick(30, STEPS_DEFAULT, STEPS_FULL)
    probe = exp.pick(64, 256, 1024)
    bs = exp.pick((0, 4), (0, 1, 4), BS)
    ks = exp.pick((64, 128), (512, K_DEFAULT), (128, 256, 512, 1024, K_DEFAULT))
    point = exp.pick((4, 64), SWEEP_POINT, SWEEP_POINT)      # (B, K) of the ε and α sweeps
    epsilons = exp.pick((0.1, 1.0), (0.1, 1.0), (0.0, 0.1, 0.25, 0.5, 0.75, 1.0))
    alphas = exp.pick((0.0,), (0.0, 1.0), (0.0, 0.5, 1.0, 1.5, 2.0))      # smoke: the grid's cell only
    todo = (set(exp.pick(("grid", "eps", "alpha"), ("grid", "eps", "alpha"), PARTS))
            if parts is None else parts)
    base = [f"experiment={PRESET}", f"task.n_labels={L_DEFAULT}", f"task.probe_size={probe}",
            f"train.seeds={seeds}", f"train.steps={steps}"] + exp.pick([], DEFAULT_EXTRA, FULL_EXTRA)

    def cell(tag, K, B, eps=0.1, alpha=0.0, extra=()):
        """One condition; the grid's own cells serve the sweeps at their point (same overrides)."""
        name = f"{tag}/{label(K, L_DEFAULT, B)}" + (f"_eps{eps:g}" if eps != 0.1 else "") + (
            f"_alpha{alpha:g}" if alpha else "")
        return exp.run(name, base + [f"task.n_classes={K}", f"task.burstiness={B}", f"task.noise={eps}",
                                     f"task.zipf_alpha={alpha}", *extra])

    runs, sweeps = {}, {"eps": {}, "alpha": {}}
    if "grid" in todo:
        for K in ks:
            for B in bs:
                if cells is not None and (K, B) not in cells:
                    continue
                run = runs[(K, L_DEFAULT, B)] = cell("grid", K, B)
                write_sweep_overrides(run, {"task.burstiness": B, "task.n_classes": K})
    B0, K0 = point
    for name, values, key in (("eps", epsilons, "noise"), ("alpha", alphas, "zipf_alpha")):
        if name not in todo:
            continue
        for v in values:
            kw = {"eps": v} if name == "eps" else {"alpha": v}
            if v != (0.1 if name == "eps" else 0.0):
                sweeps[name][v] = cell(name, K0, B0, **kw)
            elif cells is None or (K0, B0) in cells:     # the grid's own cell (trained once, for both)
                sweeps[name][v] = runs.get((K0, L_DEFAULT, B0)) or cell("grid", K0, B0)
    claims, figs = [], []
    trained_runs = [*runs.values(), *sweeps["eps"].values(), *sweeps["alpha"].values()]
    log_every = int(trained_runs[0].cfg.train.log_every) if trained_runs else 0

    # ---- the abrupt transition at the paper's defaults ----
    top = runs.get((max(ks), L_DEFAULT, max(bs)))
    if top is not None:
        onsets = top.onsets()
        claims.append(claim(
            "abrupt_icl_default", f"At K = {max(ks)}, L = {L_DEFAULT}, N = {N_CONTEXT}, B = {max(bs)} in-context "
            "learning arrives through an abrupt transition in every seed.",
            "seeds with a transition in loss_ic_ctx after its plateau (change points or sigmoid)",
            [m is not None for m in onsets], "every seed", all(m is not None for m in onsets),
            paper="a slow plateau followed by an abrupt jump of IC accuracy to ~1 (Fig. 1d, 3a)",
            not_measured="" if any(trained_seeds(top)) else "no seed trained (query loss not below ln L)"))

    # ---- data dependence over B, per K ----
    for K in ks:
        by_b = {B: runs[(K, L_DEFAULT, B)] for B in bs if (K, L_DEFAULT, B) in runs}
        if len(by_b) < 2:
            continue
        claims.append(_trend_claim(
            f"ic_rises_with_B_K{K}", f"With K = {K} classes, IC accuracy rises with burstiness B.", by_b, "acc_ic",
            True, 0.5, "IC accuracy grows with B (Fig. 2a; Chan et al. 2022): bursty contexts make ICL pay", "B"))
        claims.append(_trend_claim(
            f"iw_falls_with_B_K{K}", f"With K = {K} classes, IW accuracy falls as burstiness B rises.", by_b, "acc_iw",
            False, 0.1, "IW accuracy falls with B (Fig. 2a): the trade-off between ICL and IWL", "B"))

    # ---- data dependence over K ----
    k_lo, k_hi, b_lo, b_hi = min(ks), max(ks), min(bs), max(bs)
    r_lo, r_hi = runs.get((k_lo, L_DEFAULT, b_lo)), runs.get((k_hi, L_DEFAULT, b_lo))
    if len(ks) >= 2 and r_lo and r_hi:
        d0 = _diff(_mean_final(r_lo, "acc_iw"), _mean_final(r_hi, "acc_iw"))
        claims.append(claim(
            "iw_falls_with_K_B0", f"Without bursty contexts (B = 0), fewer classes are memorised better: "
            f"IW accuracy at K = {k_lo} exceeds that at K = {k_hi}.",
            f"acc_iw(K={k_lo}) − acc_iw(K={k_hi}) at B = 0 (means over seeds)", [d0], ">= 0.1",
            d0 >= 0.1, unit=CONDITION,
            paper="large dictionaries (many classes) slow in-weights learning (Fig. 2a; Chan et al. 2022)",
            not_measured=_untrained(r_lo, r_hi)))
    r_lo, r_hi = runs.get((k_lo, L_DEFAULT, b_hi)), runs.get((k_hi, L_DEFAULT, b_hi))
    if len(ks) >= 2 and r_lo and r_hi:
        dic = _diff(_mean_final(r_hi, "acc_ic"), _mean_final(r_lo, "acc_ic"))
        diw = _diff(_mean_final(r_lo, "acc_iw"), _mean_final(r_hi, "acc_iw"))
        claims.append(claim(
            "k_shifts_to_icl", f"At B = {max(bs)}, more classes (K = {k_hi} vs {k_lo}) shift the network from "
            "in-weights toward in-context learning.",
            f"[acc_ic(K={k_hi}) − acc_ic(K={k_lo}), acc_iw(K={k_lo}) − acc_iw(K={k_hi})] at B = {max(bs)}",
            [dic, diw], f"both >= −{SLACK} and at least one >= 0.1",
            dic >= -SLACK and diw >= -SLACK and max(dic, diw) >= 0.1, unit=CONDITION,
            paper="ICL rises and IWL falls with K (Fig. 2a); Reddy's default K = 2048 is where ICL wins",
            not_measured=_untrained(r_lo, r_hi)))

    # ---- IC2: the context overrides what the weights memorised ----
    if top is not None:
        learned = top.final("acc_ic") >= ICL_LEARNED          # the claim is about seeds that learned ICL
        gap = [float(a - b) if ok else None for a, b, ok in zip(top.final("acc_ic"), top.final("acc_ic2"), learned)]
        claims.append(claim(
            "ic2_follows_context", f"Once ICL is learned (K = {max(ks)}, B = {max(bs)}), the network follows the "
            "context even against its weights: IC2 accuracy (known classes, every label shifted by one) is "
            "within 0.1 of IC accuracy (novel classes).",
            f"acc_ic − acc_ic2 per seed that learned ICL (acc_ic >= {ICL_LEARNED})", gap, "95 % CI of the mean below 0.1",
            ci_beyond(gap, 0.1, "below"), paper="IC2 (Fig. 2: known classes with swapped labels) tracks IC once the "
            "induction head has formed: in-context learning wins over in-weights learning where both apply",
            note=f"acc_ic2 per seed: {', '.join(f'{v:.2f}' for v in top.final('acc_ic2'))}",
            not_measured="" if learned.any() else f"no seed learned ICL (acc_ic >= {ICL_LEARNED}) to test"))
        low = runs.get((min(ks), L_DEFAULT, min(bs)))
        if low is not None:
            ic2 = low.final("acc_ic2").tolist()
            claims.append(claim(
                "ic2_chance_without_icl", f"Where no ICL is learned (K = {min(ks)}, B = {min(bs)}), IC2 accuracy is "
                f"near chance: the network answers known classes from its weights.",
                "acc_ic2 per seed", ic2, f"95 % CI of the mean below 2/L = {2 / L_DEFAULT:.3f}",
                ci_beyond(ic2, 2 / L_DEFAULT, "below"), kind=CONTROL,
                paper="IC2 is low where IWL dominates (Fig. 2)",
                note="a control: at B = 0 no training context holds the query's class, so no in-context "
                     "mechanism is rewarded and the shifted labels can only be missed"))

    # ---- ε and α (Fig. 2b, c) ----
    paper_eps = ("Fig. 2b: larger within-class variation ε favours ICL over IWL (items of a class vary more, so "
                 "memorising class -> label is harder while matching the query to its context item still works)")
    paper_alpha = ("Fig. 2c, recapitulating Chan et al. 2022: a skewed (Zipf) class distribution favours IWL of the "
                   "common classes; around α ≈ 1 ICL and IWL coexist")
    where = f"B = {B0}, K = {K0}"
    if sweeps["eps"]:
        claims.append(_trend_claim("eps_raises_ic", f"At {where}, IC accuracy rises with within-class noise ε.",
                                   sweeps["eps"], "acc_ic", True, 0.1, paper_eps, "ε"))
        claims.append(_trend_claim("eps_lowers_iw", f"At {where}, IW accuracy falls as within-class noise ε rises.",
                                   sweeps["eps"], "acc_iw", False, 0.1, paper_eps, "ε"))
    if sweeps["alpha"]:
        claims.append(_trend_claim("alpha_raises_iw", f"At {where}, IW accuracy rises with the Zipf exponent α.",
                                   sweeps["alpha"], "acc_iw", True, 0.1, paper_alpha, "α"))
        claims.append(_trend_claim("alpha_lowers_ic", f"At {where}, IC accuracy falls as the Zipf exponent α rises.",
                                   sweeps["alpha"], "acc_ic", False, 0.1, paper_alpha, "α"))

    # ---- L = N (--full, or --parts l_eq_n) ----
    variants, distinct = {"distinct": {}}, {}
    if "l_eq_n" in todo:
        for L in exp.pick((N_CONTEXT,), (N_CONTEXT, L_DEFAULT)):
            variants["distinct"][(K_DEFAULT, L, 1)] = exp.run(f"l_eq_n/{label(K_DEFAULT, L, 1)}_distinct", [
                f"experiment={PRESET}", f"task.n_classes={K_DEFAULT}", f"task.n_labels={L}", "task.burstiness=1",
                "task.distinct_labels=true", f"task.probe_size={probe}", f"train.seeds={seeds}",
                f"train.steps={steps}"] + exp.pick([], DEFAULT_EXTRA, FULL_EXTRA))
        eq, gt = variants["distinct"].get((K_DEFAULT, N_CONTEXT, 1)), variants["distinct"].get((K_DEFAULT, L_DEFAULT, 1))
        n_distinct = distinct[eq.label] = mean_distinct_labels(eq.cfg.task)
        claims.append(claim(
            "l_eq_n_every_label_in_context", f"With distinct labels in each context and L = N = {N_CONTEXT}, B = 1, "
            "every label is present in every training context.", "mean distinct labels per training context",
            [n_distinct], f"= {N_CONTEXT}", abs(n_distinct - N_CONTEXT) < 1e-6, kind=CONTROL, unit=CONDITION,
            note="holds by construction of task.distinct_labels: what makes L = N the paper's condition"))
        acc_eq = eq.final("acc_ic")
        learned_eq = float(np.mean(acc_eq >= ICL_LEARNED))
        learned_gt = float(np.mean(gt.final("acc_ic") >= ICL_LEARNED)) if gt is not None else None
        claims.append(claim(
            "no_icl_L_eq_N_B1", f"With as many labels as context pairs (L = N = {N_CONTEXT}, B = 1; distinct labels "
            f"per context, as in Reddy's data) the network does not learn ICL, while with L = {L_DEFAULT} > N it does.",
            f"final acc_ic per seed at L = N (ICL learned: acc_ic >= {ICL_LEARNED})", acc_eq.tolist(),
            f"at L = N at most half the seeds learn ICL, and every seed at L = {L_DEFAULT} does "
            f"(here: {learned_eq:.2f} vs {'n/a' if learned_gt is None else f'{learned_gt:.2f}'})",
            None if learned_gt is None else (learned_eq <= 0.5 and learned_gt == 1.0),
            paper="'the full model robustly learns an ICL solution for L > N but not when L = N' (Fig. A.5, six seeds)",
            not_measured="" if gt is None or any(trained_seeds(gt)) else f"no seed trained at L = {L_DEFAULT}"))

    # ---- progress measures ----
    progress = {"log_every": log_every, "seeds": []}
    if runs:
        progress = _progress(runs, log_every)
        rows = progress["seeds"]
        paper_order = ("Reddy Fig. 4 and text: CLA rises slowly during the plateau, before the transition; ILA1 and "
                       "TILA2 (the induction head) rise abruptly with the IC jump ('progress measures that precede "
                       "in-context learning'); hypothesis: slowly learned CLA drives ILA1 and TILA2")
        note_rows = "over every seed with a lab-detected IC transition in the grid's B > 0 runs"

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

    if runs:
        figs += grid_figures(exp.out / "runs" / "grid", exp.out)
        figs.append(_figure_accuracy(runs, ks, bs, exp.figure_path("accuracy_vs_B.png"), variants["distinct"]))
        if top is not None:
            figs.append(_figure_progress(runs, progress, top, exp.figure_path("progress_measures.png")))
    if any(sweeps.values()):
        figs.append(_figure_sweeps(sweeps, point, exp.figure_path("eps_alpha.png")))
    every = [*runs.values(), *sweeps["eps"].values(), *sweeps["alpha"].values(), *variants["distinct"].values()]
    finals = {run.label: {k: run.final(k).tolist() for k in ("acc_ic", "acc_ic2", "acc_iw", "acc_ic_ctx", "cla_ic",
                                                              "loss_query")}
              | {"ic_phase_midpoints": run.midpoints(), "ic_phase_onsets": run.onsets(),
                 "trained": trained_seeds(run)} for run in every}
    exp.finish(claims, figs, extra={"final": finals, "progress": progress, "mean_distinct_context_labels": distinct,
                                    "parts": sorted(todo)})


if __name__ == "__main__":
    script_main(lambda: main())
