"""Head ablation of a finished run (Bi-Induct protocol): does knocking out the heads with the
highest induction scores hurt the induction-predictable tokens more than knocking out as many
random heads?

For a run directory: restore the newest checkpoint, sample an evaluation batch, score every head's
induction attention on it (unablated, the task's per-head `induction` measure), then measure the
task's main loss and accuracy (`loss_repeat` / `acc_repeat` for token induction: the tokens
induction can predict), and for a task that logs one the in-context-learning score (`icl_score`,
Olsson et al. 2022: the loss at a late position minus at an early one; None otherwise), with heads
ablated at `blocks.{l}.attn.z`, for each seed:

  none        nothing ablated
  L{l}H{h}    that head alone
  top         the top-k % heads of each layer by induction score (at least one per layer)
  random      as many random heads per layer, `draws` times (mean and std over the draws)

Mean ablation (default) replaces a head's z by its mean over the evaluation batch (per position,
from the unablated pass); zero ablation replaces it by 0. Every condition is one row of an
(N, L, H) head-mask array that a single jitted function evaluates, so it compiles once per call.

    lab-ablate RUN_DIR [--kind mean|zero] [--top-percent 2] [--draws 20] [--eval-size 256]

(lab/app/ablate.py) writes RUN_DIR/ablation/{ablation.csv, ablation.json, ablation.png}; `ablate(run_dir)`
returns the same results as a dict.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lab.core import head_name
from lab.measures.losses import icl_positions
from lab.model.hooks import Intervention
from lab.train.restore import load_run
from lab.train.runtime import configure_compile_cache

KINDS = ("mean", "zero")
CONDITIONS = ("none", "top", "random")          # the summary conditions; single heads are L{l}H{h}


def csv_fields(result: dict) -> list[str]:
    icl = ["icl_score", "delta_icl", "icl_std"] if result.get("icl") else []
    return ["seed", "condition", "heads", "n_ablated", result["metric"], result["accuracy"], "delta_loss",
            "delta_acc", "loss_std", "acc_std", *icl]


# ----------------------------------------------------------------------------- pure functions
def head_stats(model, task, measures_cfg, params: dict, batch, rank_by=("induction",)):
    """The unablated pass of one seed: each head's z averaged over the batch, (L, 1, T, H, d_head),
    its ranking score, (L, H): the task's per-head measure `rank_by` (default its `induction` measure;
    with several, each head's max of them), and the task's main loss and accuracy."""
    L = model.n_layers
    names = tuple(f"blocks.{l}.attn.z" for l in range(L))
    logits, cache = model.apply(params, batch, cache_names=names)
    means = jnp.stack([cache[f"blocks.{l}.attn.z"].mean(axis=0, keepdims=True) for l in range(L)])
    forward = lambda b, cache_names: model.apply(params, b, cache_names=cache_names)   # noqa: E731
    measured = task.measures(model, params, batch, forward, measures_cfg, False)
    scores = jnp.max(jnp.stack([measured[k] for k in rank_by]), axis=0)
    loss, acc = task.main_scores(logits, batch)
    return means, scores, loss, acc


def evaluate_masks(model, task, params: dict, batch, masks, values, measures_cfg=None):
    """The task's main loss and accuracy (e.g. loss_repeat, acc_repeat) and its ICL score (NaN for a task
    that logs none, or without `measures_cfg`), each (N,), for N head masks (N, L, H): where
    masks[n, l, h], head h's z in layer l is replaced by values[l] (broadcastable to z, e.g.
    (1, T, H, d_head) or 0)."""
    def one(mask):
        interventions = {f"blocks.{l}.attn.z": Intervention(mask[l][None, None, :, None], values[l])
                         for l in range(model.n_layers)}
        logits, _ = model.apply(params, batch, interventions)
        icl = task.icl_score(logits, batch, measures_cfg) if measures_cfg is not None else None
        return (*task.main_scores(logits, batch), jnp.float32(jnp.nan) if icl is None else icl)

    return jax.lax.map(one, masks)   # one condition at a time: memory of one forward pass


# ----------------------------------------------------------------------------- conditions
def n_per_layer(n_heads: int, top_percent: float) -> int:
    """Heads ablated per layer for `top` and `random`: ceil(H * pct / 100), at least 1, at most H."""
    return min(n_heads, max(1, math.ceil(n_heads * top_percent / 100 - 1e-9)))


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
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0   # sample std (ddof 1) over seeds or draws


# ----------------------------------------------------------------------------- the analysis
def ablate(run_dir, kind: str = "mean", top_percent: float = 2.0, draws: int = 20, eval_size: int = 256,
           seed: int = 0, eval_seed: int = 0, rank_by=("induction",), eval_task: dict | None = None) -> dict:
    """Ablate the heads of the run in `run_dir` (see the module docstring) and return the results:
    `rows` (one per seed and condition, as written to ablation.csv), `summary` (none / top / random
    over seeds and draws), per-head `single_delta_loss` (L, H; mean over seeds), `induction_scores`
    (seeds, L, H: the ranking scores), and the settings. `seed` drives the random head draws, `eval_seed`
    the batch. `rank_by`: the per-head measures (keys of the task's measures) that pick `top`, each
    head's max of them (e.g. ("backward_match",) for a model with no induction heads to rank);
    `eval_task`: task fields replaced for the evaluation batch (e.g. {"backward_frac": 0.5}), so runs
    trained on different streams are scored on the same batch."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent={top_percent} must be in (0, 100]")
    if draws < 1 or eval_size < 1:
        raise ValueError(f"draws={draws} and eval_size={eval_size} must be >= 1")

    run = load_run(run_dir)
    cfg, task, model, step, params = run.cfg, run.task, run.model, run.step, run.params
    rank_by = tuple(rank_by)
    if not rank_by:
        raise ValueError("rank_by names no per-head measure; give at least one, e.g. ('induction',)")
    if eval_task:
        unknown = sorted(set(eval_task) - set(task.__dataclass_fields__))
        if unknown:
            raise ValueError(f"eval_task names {unknown}, which are not fields of task {task.name!r}")
        task = dataclasses.replace(task, **eval_task)
    configure_compile_cache(cfg.train)
    L, H = model.n_layers, model.n_heads
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(eval_seed), eval_size)
    stats_fn = jax.jit(partial(head_stats, model, task, cfg.measures, rank_by=rank_by))
    eval_fn = jax.jit(partial(evaluate_masks, model, task, measures_cfg=cfg.measures))
    has_icl = bool(task.logs_icl_score)
    lk, ak = task.main_metric, task.main_accuracy
    n = n_per_layer(H, top_percent)
    rng = np.random.default_rng(seed)
    singles = np.eye(L * H, dtype=bool).reshape(L * H, L, H)

    rows, scores_all, single_delta, single_delta_acc, top_heads, random_heads = [], [], [], [], {}, {}
    for i, s in enumerate(run.seeds):
        p = jax.tree.map(lambda x: x[i], params)
        means, scores, _, _ = stats_fn(p, batch)
        scores = np.asarray(scores)
        values = means if kind == "mean" else jnp.zeros_like(means)
        top = top_mask(scores, n)
        rand = random_masks(L, H, n, draws, rng)
        masks = np.concatenate([np.zeros((1, L, H), bool), singles, top[None], rand])
        loss, acc, icl = (np.asarray(x, float) for x in eval_fn(p, batch, jnp.asarray(masks), values))
        base_loss, base_acc, base_icl = loss[0], acc[0], icl[0]

        def row(condition, heads, n_ablated, l, a, c, l_std=None, a_std=None, c_std=None):
            out = {"seed": s, "condition": condition, "heads": heads, "n_ablated": int(n_ablated),
                   lk: float(l), ak: float(a), "delta_loss": float(l - base_loss),
                   "delta_acc": float(a - base_acc), "loss_std": l_std, "acc_std": a_std}
            if has_icl:
                out.update(icl_score=float(c), delta_icl=float(c - base_icl), icl_std=c_std)
            return out

        rows.append(row("none", "", 0, base_loss, base_acc, base_icl))
        for j, m in enumerate(singles, start=1):
            rows.append(row(heads_text(m), heads_text(m), 1, loss[j], acc[j], icl[j]))
        k = 1 + L * H
        rows.append(row("top", heads_text(top), top.sum(), loss[k], acc[k], icl[k]))
        r_loss, r_acc, r_icl = loss[k + 1:], acc[k + 1:], icl[k + 1:]
        rand_row = row("random", " | ".join(heads_text(m) for m in rand), n * L, r_loss.mean(), r_acc.mean(),
                       r_icl.mean(), _std(r_loss), _std(r_acc), _std(r_icl) if has_icl else None)
        rand_row["draws"] = [{"heads": heads_text(m), lk: float(a), ak: float(b),
                              **({"icl_score": float(c)} if has_icl else {})}
                             for m, a, b, c in zip(rand, r_loss, r_acc, r_icl)]
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
        if has_icl:
            ic = pooled(c, "icl_score")
            summary[c].update(icl_mean=float(np.mean(ic)), icl_std=_std(ic),
                              delta_icl_mean=float(np.mean(ic) - np.mean(pooled("none", "icl_score"))))
    return {
        "run_dir": str(Path(run_dir)), "step": step, "kind": kind, "top_percent": top_percent,
        "n_per_layer": n, "draws": draws, "eval_size": eval_size, "eval_seed": eval_seed, "seed": seed,
        "n_layers": L, "n_heads": H, "seeds": list(run.seeds), "n_outputs": int(model.n_outputs),
        "metric": lk, "accuracy": ak, "metric_label": task.main_metric_label,
        "chance_loss": float(task.chance_loss), "icl": has_icl,
        "icl_positions": list(icl_positions(task.seq_len, cfg.measures.icl_early, cfg.measures.icl_late))
        if has_icl else None,
        "induction_scores": scores_all, "rank_by": list(rank_by), "eval_task": dict(eval_task or {}),
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


def format_table(result: dict) -> str:
    """A short text report: none / top / random per seed and pooled, and the single-head deltas."""
    n = result["n_per_layer"]
    lines = [f"{result['kind']} ablation of {result['run_dir']} at step {result['step']}: "
             f"{result['eval_size']} eval sequences, seeds {result['seeds']}, {n} head(s)/layer for top and random",
             f"{'seed':>5}  {'condition':<10} {result['metric']:>16} {'Δloss':>8} {result['accuracy']:>16}"
             + (f" {'icl_score':>16}" if result.get("icl") else "") + "  heads"]
    for r in result["rows"]:
        if r["condition"] not in CONDITIONS:
            continue
        loss, acc = f"{r[result['metric']]:.4f}", f"{r[result['accuracy']]:.4f}"
        if r["loss_std"] is not None:
            loss, acc = f"{loss} ± {r['loss_std']:.4f}", f"{acc} ± {r['acc_std']:.4f}"
        icl = ""
        if result.get("icl"):
            icl = f"{r['icl_score']:.4f}" + (f" ± {r['icl_std']:.4f}" if r["icl_std"] is not None else "")
            icl = f" {icl:>16}"
        heads = f"{result['draws']} draws" if r["condition"] == "random" else r["heads"]
        lines.append(f"{r['seed']:>5}  {r['condition']:<10} {loss:>16} {r['delta_loss']:>+8.4f} {acc:>16}{icl}  {heads}")
    if len(result["seeds"]) > 1:
        for c in CONDITIONS:
            s = result["summary"][c]
            loss, acc = f"{s['loss_mean']:.4f} ± {s['loss_std']:.4f}", f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f}"
            icl = f" {s['icl_mean']:.4f} ± {s['icl_std']:.4f}" if result.get("icl") else ""
            icl = f" {icl.strip():>16}" if icl else ""
            lines.append(f"{'all':>5}  {c:<10} {loss:>16} {s['delta_loss_mean']:>+8.4f} {acc:>16}{icl}")
    delta = np.asarray(result["single_delta_loss"])
    lines.append("Δloss with one head ablated" + (" (mean over seeds)" if len(result["seeds"]) > 1 else "") + ":")
    lines.append("      " + "".join(f"{f'H{h}':>8}" for h in range(result["n_heads"])))
    for l, row in enumerate(delta):
        lines.append(f"  L{l:<3}" + "".join(f"{v:>+8.3f}" for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
