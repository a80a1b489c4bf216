"""Turn a run's metric curves into `summary.json`: detected phase changes per seed (repeat loss,
each head's induction and previous-token scores), their spread over seeds, and final values."""
from __future__ import annotations

import math

import numpy as np

from lab import phase

HEAD_SCORES = {"induction": "induction", "prev_token": "prev_token_corrected"}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _mean_std(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def summarize(metrics: dict, cfg, chance_loss: float, seeds: list[int], status: str = "completed") -> dict:
    steps = metrics["step"]
    pc = cfg.measures.phase
    kw = dict(min_r2=pc.min_r2, max_width_frac=pc.max_width_frac, smooth_window=pc.smooth)
    summary = {"status": status, "seeds": seeds, "steps": int(steps[-1]) if len(steps) else 0,
               "n_layers": cfg.model.n_layers, "n_heads": cfg.model.n_heads,
               "thresholds": {"loss_repeat": pc.loss_threshold_frac * chance_loss,
                              "induction": pc.score_threshold, "prev_token": pc.score_threshold},
               "chance_loss": chance_loss, "phase": {}, "final": {}}
    if "loss_repeat" not in metrics or len(steps) < 2:
        return summary
    per_seed = [phase.detect(steps, metrics["loss_repeat"][:, s], direction="decrease",
                             threshold=pc.loss_threshold_frac * chance_loss,
                             min_amplitude=pc.loss_min_drop_frac * chance_loss, **kw) for s in range(len(seeds))]
    summary["phase"]["loss_repeat"] = {"per_seed": per_seed, "aggregate": phase.aggregate(per_seed)}
    L, H = cfg.model.n_layers, cfg.model.n_heads
    for group, key in HEAD_SCORES.items():
        summary["phase"][group] = {}
        for l in range(L):
            for h in range(H):
                runs = [phase.detect(steps, metrics[key][:, s, l, h], direction="increase",
                                     threshold=pc.score_threshold, min_amplitude=pc.score_min_rise, **kw)
                        for s in range(len(seeds))]
                summary["phase"][group][head_name(l, h)] = {"per_seed": runs, "aggregate": phase.aggregate(runs)}
    for k, v in metrics.items():
        if k in ("step", "time", "lr") or v.ndim != 2:
            continue
        summary["final"][k] = _mean_std(v[-1])
    final_heads = {g: metrics[k][-1].mean(0) for g, k in HEAD_SCORES.items()}     # (L, H), mean over seeds
    for g, scores in final_heads.items():
        summary["final"][f"{g}_per_head"] = {head_name(l, h): float(scores[l, h]) for l in range(L) for h in range(H)}
    summary["strongest_induction_head"] = [int(i) for i in np.unravel_index(np.argmax(final_heads["induction"]), (L, H))]
    summary["strongest_prev_token_head"] = [int(i) for i in np.unravel_index(np.argmax(final_heads["prev_token"]), (L, H))]
    formed = []
    for s in range(len(seeds)):
        heads = [n for n, d in summary["phase"]["induction"].items() if d["per_seed"][s]["detected"]]
        formed.append(heads)
    summary["induction_heads_per_seed"] = formed
    summary["induction_head_formed"] = [bool(h) for h in formed]
    loss_agg = summary["phase"]["loss_repeat"]["aggregate"]
    summary["verdict"] = (f"phase change in repeated-token loss in {loss_agg['n_detected']}/{len(seeds)} seeds"
                          + (f", midpoint step {loss_agg['midpoint_mean']:.0f} ± {loss_agg['midpoint_std']:.0f}"
                             if loss_agg["n_detected"] else "")
                          + f"; induction head formed in {sum(summary['induction_head_formed'])}/{len(seeds)} seeds")
    return summary


def chance_loss_of(task) -> float:
    return getattr(task, "chance_loss", math.nan)
