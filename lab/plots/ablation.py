"""The figure of a head ablation (lab/analysis/ablation.py): each head's loss increase and the
none / top / random conditions."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lab.analysis.ablation import CONDITIONS  # noqa: E402
from lab.plots.style import save_figure  # noqa: E402

ACC_TOP = 1.04       # the accuracy axis: [0, 1] with a margin of 0.04
ACC_INSIDE = 0.8     # bars (mean + std) above this carry their numbers inside, under the axis top


def _condition_labels(result: dict) -> list[str]:
    n = result["n_per_layer"]
    return ["none", f"top {result['top_percent']:g}%\n{n}/layer", f"random\n{n}/layer, ×{result['draws']}"]


def plot(result: dict, path: Path) -> Path:
    """Left: loss increase when each head alone is ablated (mean over seeds), annotated with its
    induction score; right: loss and accuracy for none / top / random (mean ± std). Writes `path`."""
    return save_figure(figure(result), path)


def figure(result: dict):
    """The figure `plot` writes, open (the caller closes it)."""
    L, H = result["n_layers"], result["n_heads"]
    delta = np.asarray(result["single_delta_loss"])
    score = np.asarray(result["induction_scores"]).mean(axis=0)
    n_seeds = len(result["seeds"])
    heat_w, bar_w = max(5.0, 1.6 + 0.75 * H), 3.4   # inches: the bar panels keep their width
    fig, axes = plt.subplots(1, 3, figsize=(heat_w + 2 * bar_w, max(4.6, 1.6 + 0.6 * L)),
                             gridspec_kw={"width_ratios": [heat_w, bar_w, bar_w]}, layout="constrained")
    ax = axes[0]
    lim = max(float(np.abs(delta).max()), 1e-6)
    im = ax.imshow(delta, cmap="RdBu_r", norm=Normalize(-lim, lim), aspect="auto")
    fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02, label=f"Δ {result['metric']} (nats)")
    if L * H <= 256:
        fs = 9 if H <= 8 else 7
        for l in range(L):
            for h in range(H):
                dark = abs(delta[l, h]) > 0.6 * lim
                ax.text(h, l, f"{delta[l, h]:+.2f}\nind {score[l, h]:.2f}", ha="center", va="center",
                        fontsize=fs, color="white" if dark else "black")
    chosen = np.zeros((L, H), int)
    for heads in result["top_heads"].values():
        for name in heads:
            l, h = map(int, name[1:].split("H"))
            chosen[l, h] += 1
    for l, h in zip(*np.nonzero(chosen)):
        ax.add_patch(Rectangle((h - 0.47, l - 0.47), 0.94, 0.94, fill=False, lw=2.2, ec="black"))
    ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
    ax.set_yticks(range(L), [f"L{l}" for l in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    which = "any seed" if n_seeds > 1 else "its seed"
    ax.set_title(f"one head {result['kind']}-ablated: Δ loss"
                 + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else "")
                 + f"\noutlined: top {result['top_percent']:g}% by induction score ({which})", fontsize=10)

    colours = ["0.6", "tab:red", "tab:blue"]
    labels = _condition_labels(result)
    summ = result["summary"]
    label = result.get("metric_label", "loss on repeated part")
    chance_acc = math.exp(-result["chance_loss"])   # a uniform guess over as many outcomes as the chance loss says
    for ax, key, title, chance in ((axes[1], "loss", label, result["chance_loss"]),
                                   (axes[2], "acc", label.replace("loss", "accuracy", 1), chance_acc)):
        means = [summ[c][f"{key}_mean"] for c in CONDITIONS]
        stds = [summ[c][f"{key}_std"] for c in CONDITIONS]
        ax.bar(range(3), means, yerr=stds, capsize=5, color=colours, edgecolor="black", lw=0.6)
        for x, (m, sd) in enumerate(zip(means, stds)):
            text = f"{m:.3f}" + (f"\n± {sd:.3f}" if sd else "")
            if key == "acc" and m + sd > ACC_INSIDE:   # no room above the bar below 1: write it inside
                ax.annotate(text, (x, m / 2), ha="center", va="center", fontsize=9,   # halfway up: clear of the error bar
                            color="white" if colours[x] != "0.6" else "black")
            else:
                ax.annotate(text, (x, m + sd), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=9)
        ax.axhline(chance, ls="--", lw=1, color="0.3", label="chance")
        ax.legend(loc="best", fontsize=8, frameon=False)
        top = max(max(m + sd for m, sd in zip(means, stds)), chance)
        if key == "loss":
            ax.set_ylim(0, top * 1.22)
        else:   # an accuracy: [0, 1] and a margin for the error bars, never the 1.2 a loss-style margin gave
            ax.set_ylim(0, ACC_TOP)
            ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xticks(range(3), labels, fontsize=9)
        ax.set_title(title, fontsize=11)
    fig.get_layout_engine().set(wspace=0.06)
    axes[1].set_ylabel("cross-entropy (nats)")
    axes[2].set_ylabel("top-1 accuracy")
    seeds = f"seeds {result['seeds']}" if n_seeds > 1 else f"seed {result['seeds'][0]}"
    fig.suptitle(f"{result['kind']} ablation of {Path(result['run_dir']).name} at step {result['step']} "
                 f"({result['eval_size']} eval sequences, {seeds}; error bars: std over "
                 f"{'draws and seeds' if n_seeds > 1 else 'draws'})", fontsize=11)
    return fig
