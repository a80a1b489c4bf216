"""Turn a run's metric curves into `summary.json`: detected phase changes per seed (the task's main
loss, e.g. the repeat loss, and each head's induction and previous-token scores), their spread over
seeds, and final values."""
from __future__ import annotations

import numpy as np

from lab.analysis import phase
from lab.core import head_name


def _mean_std(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def summarize(metrics: dict, cfg, task, seeds: list[int], status: str = "completed") -> dict:
    steps = metrics["step"]
    chance_loss, main = task.chance_loss, task.main_metric
    threshold, min_drop = task.phase_threshold(cfg.measures.phase)
    head_scores = {g: k for g, k in task.head_scores.items() if k in metrics}
    pc = cfg.measures.phase
    kw = dict(min_r2=pc.min_r2, max_width_frac=pc.max_width_frac, smooth_window=pc.smooth)
    summary = {"status": status, "seeds": seeds, "steps": int(steps[-1]) if len(steps) else 0,
               "n_layers": cfg.model.n_layers, "n_heads": cfg.model.n_heads,
               "task": task.name, "main_metric": main, "main_accuracy": task.main_accuracy,
               "main_metric_label": task.main_metric_label,
               "thresholds": {main: threshold,
                              **{g: pc.score_threshold for g in head_scores}},
               "chance_loss": chance_loss, "baselines": dict(getattr(task, "baselines", {})),
               "phase": {}, "final": {}}
    if main not in metrics or len(steps) < 2:
        return summary
    per_seed = [phase.detect(steps, task.phase_curve(metrics[main][:, s]), direction="decrease",
                             threshold=threshold, min_amplitude=min_drop, **kw) for s in range(len(seeds))]
    summary["phase"][main] = {"per_seed": per_seed, "aggregate": phase.aggregate(per_seed)}
    L, H = cfg.model.n_layers, cfg.model.n_heads
    for group, key in head_scores.items():
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
    final_heads = {g: metrics[k][-1].mean(0) for g, k in head_scores.items()}     # (L, H), mean over seeds
    for g, scores in final_heads.items():
        summary["final"][f"{g}_per_head"] = {head_name(l, h): float(scores[l, h]) for l in range(L) for h in range(H)}
        summary[f"strongest_{g}_head"] = [int(i) for i in np.unravel_index(np.argmax(scores), (L, H))]
    loss_agg = summary["phase"][main]["aggregate"]
    summary["verdict"] = (f"phase change in {task.main_metric_label} in {loss_agg['n_detected']}/{len(seeds)} seeds"
                          + (f", midpoint step {loss_agg['midpoint_mean']:.0f} ± {loss_agg['midpoint_std']:.0f}"
                             if loss_agg["n_detected"] else ""))
    if "induction" in head_scores:
        formed = [[n for n, d in summary["phase"]["induction"].items() if d["per_seed"][s]["detected"]]
                  for s in range(len(seeds))]
        summary["induction_heads_per_seed"] = formed
        summary["induction_head_formed"] = [bool(h) for h in formed]
        summary["verdict"] += f"; induction head formed in {sum(summary['induction_head_formed'])}/{len(seeds)} seeds"
    return summary
