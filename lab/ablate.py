"""Head ablation of a finished run (Bi-Induct protocol): does knocking out the heads with the
highest induction scores hurt the induction-predictable tokens more than knocking out as many
random heads?

For a run directory: restore the newest checkpoint, sample an evaluation batch, score every head's
induction attention on it (unablated, the task's per-head `induction` measure), then measure the
task's main loss and accuracy (`loss_repeat` / `acc_repeat` for token induction: the tokens
induction can predict) with heads ablated at `blocks.{l}.attn.z`, for each seed:

  none        nothing ablated
  L{l}H{h}    that head alone
  top         the top-k % heads of each layer by induction score (at least one per layer)
  random      as many random heads per layer, `draws` times (mean and std over the draws)

Mean ablation (default) replaces a head's z by its mean over the evaluation batch (per position,
from the unablated pass); zero ablation replaces it by 0. Every condition is one row of an
(N, L, H) head-mask array that a single jitted function evaluates, so it compiles once per call.

    lab-ablate RUN_DIR [--kind mean|zero] [--top-percent 2] [--draws 20] [--eval-size 256]

writes RUN_DIR/ablation/{ablation.csv, ablation.json, ablation.png}; `ablate(run_dir)` returns the
same results as a dict. JAX is imported inside the functions so that `main` can still choose XLA's
CPU threading from the run's config.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from lab.runs import RunLoadError, load_run, run_dir_problem   # JAX-free at import

KINDS = ("mean", "zero")
CONDITIONS = ("none", "top", "random")          # the summary conditions; single heads are L{l}H{h}
def csv_fields(result: dict) -> list[str]:
    return ["seed", "condition", "heads", "n_ablated", result["metric"], result["accuracy"], "delta_loss",
            "delta_acc", "loss_std", "acc_std"]


# ----------------------------------------------------------------------------- pure functions
def head_stats(model, task, measures_cfg, params: dict, batch):
    """The unablated pass of one seed: each head's z averaged over the batch, (L, 1, T, H, d_head),
    its induction score (the task's `induction` measure), (L, H), and the task's main loss and accuracy."""
    import jax.numpy as jnp

    L = model.n_layers
    names = tuple(f"blocks.{l}.attn.z" for l in range(L))
    logits, cache = model.apply(params, batch, cache_names=names)
    means = jnp.stack([cache[f"blocks.{l}.attn.z"].mean(axis=0, keepdims=True) for l in range(L)])
    forward = lambda b, cache_names: model.apply(params, b, cache_names=cache_names)   # noqa: E731
    scores = task.measures(model, params, batch, forward, measures_cfg, False)["induction"]
    loss, acc = task.main_scores(logits, batch)
    return means, scores, loss, acc


def evaluate_masks(model, task, params: dict, batch, masks, values):
    """The task's main loss and accuracy (e.g. loss_repeat, acc_repeat), each (N,), for N head masks (N, L, H): where masks[n, l, h], head h's
    z in layer l is replaced by values[l] (broadcastable to z, e.g. (1, T, H, d_head) or 0)."""
    import jax

    from lab.hooks import Intervention

    def one(mask):
        interventions = {f"blocks.{l}.attn.z": Intervention(mask[l][None, None, :, None], values[l])
                         for l in range(model.n_layers)}
        logits, _ = model.apply(params, batch, interventions)
        return task.main_scores(logits, batch)

    return jax.lax.map(one, masks)   # one condition at a time: memory of one forward pass


# ----------------------------------------------------------------------------- conditions
def n_per_layer(n_heads: int, top_percent: float) -> int:
    """Heads ablated per layer for `top` and `random`: ceil(H * pct / 100), at least 1, at most H."""
    return min(n_heads, max(1, math.ceil(n_heads * top_percent / 100 - 1e-9)))


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def heads_text(mask: np.ndarray) -> str:
    return " ".join(head_name(l, h) for l, h in zip(*np.nonzero(mask)))


def top_mask(scores: np.ndarray, n: int) -> np.ndarray:
    """(L, H) bool: the n highest-scoring heads of each layer (ties: the lower head index)."""
    mask = np.zeros(scores.shape, bool)
    for l, row in enumerate(scores):
        mask[l, np.argsort(-row, kind="stable")[:n]] = True
    return mask


def random_masks(n_layers: int, n_heads: int, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, L, H) bool: n heads per layer, drawn uniformly without replacement, per draw and layer."""
    masks = np.zeros((draws, n_layers, n_heads), bool)
    for d in range(draws):
        for l in range(n_layers):
            masks[d, l, rng.choice(n_heads, n, replace=False)] = True
    return masks


def _std(x) -> float:
    return float(np.std(x)) if len(x) > 1 else 0.0


# ----------------------------------------------------------------------------- the analysis
def ablate(run_dir, kind: str = "mean", top_percent: float = 2.0, draws: int = 20, eval_size: int = 256,
           seed: int = 0, eval_seed: int = 0) -> dict:
    """Ablate the heads of the run in `run_dir` (see the module docstring) and return the results:
    `rows` (one per seed and condition, as written to ablation.csv), `summary` (none / top / random
    over seeds and draws), per-head `single_delta_loss` (L, H; mean over seeds), `induction_scores`
    (seeds, L, H), and the settings. `seed` drives the random head draws, `eval_seed` the batch."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent={top_percent} must be in (0, 100]")
    if draws < 1 or eval_size < 1:
        raise ValueError(f"draws={draws} and eval_size={eval_size} must be >= 1")

    from functools import partial

    import jax
    import jax.numpy as jnp

    from lab.runtime import configure_compile_cache

    cfg, trainer, step, params = load_run(run_dir)
    configure_compile_cache(cfg.train)
    model, L, H = trainer.model, trainer.model.n_layers, trainer.model.n_heads
    batch = jax.jit(trainer.task.sample, static_argnums=1)(jax.random.PRNGKey(eval_seed), eval_size)
    task = trainer.task
    stats_fn = jax.jit(partial(head_stats, model, task, cfg.measures))
    eval_fn = jax.jit(partial(evaluate_masks, model, task))
    lk, ak = task.main_metric, task.main_accuracy
    n = n_per_layer(H, top_percent)
    rng = np.random.default_rng(seed)
    singles = np.eye(L * H, dtype=bool).reshape(L * H, L, H)

    rows, scores_all, single_delta, single_delta_acc, top_heads, random_heads = [], [], [], [], {}, {}
    for i, s in enumerate(trainer.seeds):
        p = jax.tree.map(lambda x: x[i], params)
        means, scores, _, _ = stats_fn(p, batch)
        scores = np.asarray(scores)
        values = means if kind == "mean" else jnp.zeros_like(means)
        top = top_mask(scores, n)
        rand = random_masks(L, H, n, draws, rng)
        masks = np.concatenate([np.zeros((1, L, H), bool), singles, top[None], rand])
        loss, acc = (np.asarray(x, float) for x in eval_fn(p, batch, jnp.asarray(masks), values))
        base_loss, base_acc = loss[0], acc[0]

        def row(condition, heads, n_ablated, l, a, l_std=None, a_std=None):
            return {"seed": s, "condition": condition, "heads": heads, "n_ablated": int(n_ablated),
                    lk: float(l), ak: float(a), "delta_loss": float(l - base_loss),
                    "delta_acc": float(a - base_acc), "loss_std": l_std, "acc_std": a_std}

        rows.append(row("none", "", 0, base_loss, base_acc))
        for j, m in enumerate(singles, start=1):
            rows.append(row(heads_text(m), heads_text(m), 1, loss[j], acc[j]))
        k = 1 + L * H
        rows.append(row("top", heads_text(top), top.sum(), loss[k], acc[k]))
        r_loss, r_acc = loss[k + 1:], acc[k + 1:]
        rand_row = row("random", " | ".join(heads_text(m) for m in rand), n * L, r_loss.mean(), r_acc.mean(),
                       _std(r_loss), _std(r_acc))
        rand_row["draws"] = [{"heads": heads_text(m), lk: float(a), ak: float(b)}
                             for m, a, b in zip(rand, r_loss, r_acc)]
        rows.append(rand_row)

        scores_all.append(scores.tolist())
        single_delta.append((loss[1:k] - base_loss).reshape(L, H))
        single_delta_acc.append((acc[1:k] - base_acc).reshape(L, H))
        top_heads[str(s)] = heads_text(top).split()
        random_heads[str(s)] = [heads_text(m).split() for m in rand]

    def pooled(condition: str, key: str) -> list[float]:
        out = []
        for r in rows:
            if r["condition"] == condition:
                out += [d[key] for d in r["draws"]] if "draws" in r else [r[key]]
        return out

    summary = {}
    for c in CONDITIONS:
        lo, ac = pooled(c, lk), pooled(c, ak)
        base = pooled("none", lk)
        summary[c] = {"loss_mean": float(np.mean(lo)), "loss_std": _std(lo), "acc_mean": float(np.mean(ac)),
                      "acc_std": _std(ac), "delta_loss_mean": float(np.mean(lo) - np.mean(base)), "n": len(lo)}
    return {
        "run_dir": str(Path(run_dir)), "step": step, "kind": kind, "top_percent": top_percent,
        "n_per_layer": n, "draws": draws, "eval_size": eval_size, "eval_seed": eval_seed, "seed": seed,
        "n_layers": L, "n_heads": H, "seeds": list(trainer.seeds), "n_outputs": int(model.n_outputs),
        "metric": lk, "accuracy": ak, "metric_label": task.main_metric_label,
        "chance_loss": float(trainer.task.chance_loss),
        "induction_scores": scores_all,
        "single_delta_loss": np.mean(single_delta, axis=0).tolist(),
        "single_delta_acc": np.mean(single_delta_acc, axis=0).tolist(),
        "top_heads": top_heads, "random_heads": random_heads,
        "summary": summary, "rows": rows,
    }


# ----------------------------------------------------------------------------- outputs
def write_csv(result: dict, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        fields = csv_fields(result)
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: ("" if r[k] is None else round(r[k], 6) if isinstance(r[k], float) else r[k])
                        for k in fields})
    return path


def _condition_labels(result: dict) -> list[str]:
    n = result["n_per_layer"]
    return ["none", f"top {result['top_percent']:g}%\n{n}/layer", f"random\n{n}/layer, ×{result['draws']}"]


def plot(result: dict, path: Path) -> Path:
    """Left: loss increase when each head alone is ablated (mean over seeds), annotated with its
    induction score; right: loss and accuracy for none / top / random (mean ± std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

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
            ax.annotate(f"{m:.3f}" + (f"\n± {sd:.3f}" if sd else ""), (x, m + sd), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9)
        ax.axhline(chance, ls="--", lw=1, color="0.3", label="chance")
        ax.legend(loc="best", fontsize=8, frameon=False)
        top = max(max(m + sd for m, sd in zip(means, stds)), chance)
        ax.set_ylim(0, top * 1.22 if key == "loss" else min(1.25, max(top * 1.22, 0.1)))
        ax.set_xticks(range(3), labels, fontsize=9)
        ax.set_title(title, fontsize=11)
    fig.get_layout_engine().set(wspace=0.06)
    axes[1].set_ylabel("cross-entropy (nats)")
    axes[2].set_ylabel("top-1 accuracy")
    seeds = f"seeds {result['seeds']}" if n_seeds > 1 else f"seed {result['seeds'][0]}"
    fig.suptitle(f"{result['kind']} ablation of {Path(result['run_dir']).name} at step {result['step']} "
                 f"({result['eval_size']} eval sequences, {seeds}; error bars: std over "
                 f"{'draws and seeds' if n_seeds > 1 else 'draws'})", fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def save(result: dict, out_dir) -> list[Path]:
    """Write ablation.csv, ablation.json and ablation.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=1))
    return [write_csv(result, out_dir / "ablation.csv"), out_dir / "ablation.json", plot(result, out_dir / "ablation.png")]


def format_table(result: dict) -> str:
    """A short text report: none / top / random per seed and pooled, and the single-head deltas."""
    n = result["n_per_layer"]
    lines = [f"{result['kind']} ablation of {result['run_dir']} at step {result['step']}: "
             f"{result['eval_size']} eval sequences, seeds {result['seeds']}, {n} head(s)/layer for top and random",
             f"{'seed':>5}  {'condition':<10} {result['metric']:>16} {'Δloss':>8} {result['accuracy']:>16}  heads"]
    for r in result["rows"]:
        if r["condition"] not in CONDITIONS:
            continue
        loss, acc = f"{r[result['metric']]:.4f}", f"{r[result['accuracy']]:.4f}"
        if r["loss_std"] is not None:
            loss, acc = f"{loss} ± {r['loss_std']:.4f}", f"{acc} ± {r['acc_std']:.4f}"
        heads = f"{result['draws']} draws" if r["condition"] == "random" else r["heads"]
        lines.append(f"{r['seed']:>5}  {r['condition']:<10} {loss:>16} {r['delta_loss']:>+8.4f} {acc:>16}  {heads}")
    if len(result["seeds"]) > 1:
        for c in CONDITIONS:
            s = result["summary"][c]
            loss, acc = f"{s['loss_mean']:.4f} ± {s['loss_std']:.4f}", f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f}"
            lines.append(f"{'all':>5}  {c:<10} {loss:>16} {s['delta_loss_mean']:>+8.4f} {acc:>16}")
    delta = np.asarray(result["single_delta_loss"])
    lines.append("Δloss with one head ablated" + (" (mean over seeds)" if len(result["seeds"]) > 1 else "") + ":")
    lines.append("      " + "".join(f"{f'H{h}':>8}" for h in range(result["n_heads"])))
    for l, row in enumerate(delta):
        lines.append(f"  L{l:<3}" + "".join(f"{v:>+8.3f}" for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _percent(text: str) -> float:
    v = float(text)
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 100]")
    return v


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-ablate",
        description="Ablate the attention heads of a finished run: each head alone, the top-k% induction "
                    "heads per layer, and as many random heads; write ablation.csv/.json/.png.")
    parser.add_argument("run_dir", type=Path, help="a run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--kind", choices=KINDS, default="mean",
                        help="mean: replace a head's z by its mean over the eval batch (default); zero: by 0")
    parser.add_argument("--top-percent", type=_percent, default=2.0,
                        help="ablate the top K%% heads of each layer by induction score, at least one (default 2)")
    parser.add_argument("--draws", type=_positive_int, default=20, help="random head sets to draw (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random head draws (default 0)")
    parser.add_argument("--eval-size", type=_positive_int, default=256, help="sequences in the eval batch (default 256)")
    parser.add_argument("--eval-seed", type=int, default=0, help="PRNG seed of the eval batch (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/ablation)")
    args = parser.parse_args(argv)

    problem = run_dir_problem(args.run_dir)   # before JAX starts: a quick, clean refusal
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:   # as lab-train does: XLA's CPU threading from the run's config, before JAX is imported
        from omegaconf import OmegaConf

        from lab.runtime import configure_xla_threads
        configure_xla_threads(OmegaConf.load(args.run_dir / "config.yaml").train)
    except Exception:   # an unreadable config is reported by ablate() below
        pass
    import logging
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        result = ablate(args.run_dir, kind=args.kind, top_percent=args.top_percent, draws=args.draws,
                        eval_size=args.eval_size, seed=args.seed, eval_seed=args.eval_seed)
    except RunLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    paths = save(result, args.out or args.run_dir / "ablation")
    print(format_table(result))
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
