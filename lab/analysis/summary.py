"""Turn a run's metric curves into `summary.json`: per seed, the transitions of the task's main loss
and of each head's induction and previous-token scores, by two detectors (a fitted sigmoid, `phase`,
and change-point stages, `stages`), their spread over seeds, each seed's outcome, which layer-0 head
each later head K-composes with, and final values."""
from __future__ import annotations

from typing import Optional

import numpy as np

from lab.analysis import phase, stages, stats
from lab.core import head_name

EVENTS = ("onset", "midpoint", "end", "width")


def _mean_std(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "std": stats.sample_std(x), "n": int(np.size(x))}


def transition(entry: dict, seed: int) -> Optional[dict]:
    """The transition a timing reads for one seed of a curve's summary entry: the largest change-point
    transition (stages) that starts after a plateau, else the sigmoid fit if it detected a phase
    change; None if neither. A transition already under way at the first logged step (the initial
    descent from initialisation, e.g. chance -> unigram) is a stage, not a phase change: it is
    kept in "stages" but not timed here. Adds "detector" (which one) and "n_transitions"."""
    found = (entry.get("stages") or [None] * (seed + 1))[seed]
    later = [t for t in found["transitions"] if not t["censored_start"]] if found else []
    if later:
        best = max(later, key=lambda t: abs(t["change"]))
        return {**{k: best[k] for k in EVENTS}, "detector": "change points",
                "n_transitions": len(found["transitions"])}
    fit = entry["per_seed"][seed]
    if fit.get("detected"):
        return {**{k: fit[k] for k in EVENTS}, "detector": "sigmoid", "n_transitions": 1}
    return None


def _stages_aggregate(entry: dict) -> dict:
    """Over seeds: transitions per seed, and the timing of each seed's largest transition."""
    n = len(entry["per_seed"])
    events = [transition(entry, s) for s in range(n)]
    out = {"n_transitions": [len(st["transitions"]) for st in entry["stages"]],
           "n_with_transition": sum(e is not None for e in events)}
    for key in EVENTS:
        d = stats.describe(e[key] for e in events if e)
        out.update({f"{key}_{part}": d[part] for part in ("mean", "std", "ci95")})
    return out


def _curve_entry(steps, curves: np.ndarray, *, direction: str, threshold, min_change: float, kw: dict,
                 stage_kw: dict, stage_frac: float, stage_curves: Optional[np.ndarray] = None,
                 per_seed: Optional[list[dict]] = None) -> dict:
    """Both detectors on every seed's curve (curves: (n_steps, n_seeds)): the sigmoid needs a change
    of min_change, a stage's transition stage_frac of it; the stages read `stage_curves` instead
    when given. `per_seed`: the sigmoid's results when already found (phase.detect_many over heads)."""
    if per_seed is None:
        per_seed = phase.detect_many(steps, curves.T, direction=direction, threshold=threshold,
                                     min_amplitude=min_change, **kw)
    stage_curves = curves if stage_curves is None else stage_curves
    entry = {"per_seed": per_seed, "aggregate": phase.aggregate(per_seed),
             "stages": stages.detect_stages_many(steps, stage_curves.T, direction=direction,
                                                 min_change=stage_frac * min_change, **stage_kw)}
    entry["stages_aggregate"] = _stages_aggregate(entry)
    return entry


def _formed(entry: dict, seed: int) -> bool:
    """A head formed in a seed: its score rose (either detector) and crossed the score threshold."""
    return transition(entry, seed) is not None and entry["per_seed"][seed]["threshold_step"] is not None


def _composition(metrics: dict, induction: dict, L: int, H: int, n_seeds: int, stage_kw: dict) -> dict:
    """For each head of layer >= 1: the layer-0 head it K-composes with most at the end, per seed,
    with the score at the end and at step 0 (random weights score about 1/sqrt(d_model)); for each
    seed's induction heads, when that link formed: the onset of the largest rise of that K-composition
    curve after a plateau (change points, a rise of >= 0.05)."""
    K = metrics["k_composition"]                                     # (steps, seeds, L-1, H, H)
    out = {}
    for l in range(1, L):
        for h in range(H):
            final = K[-1, :, l - 1, h]                               # (seeds, H0)
            partner = [int(np.argmax(final[s])) for s in range(n_seeds)]
            link = {"partner_per_seed": [head_name(0, p) for p in partner],
                    "k_composition_per_seed": [float(final[s, p]) for s, p in enumerate(partner)],
                    "k_composition_initial_per_seed": [float(K[0, s, l - 1, h, p]) for s, p in enumerate(partner)]}
            entry = induction.get(head_name(l, h))
            if entry is not None:
                onsets = []
                for s, p in enumerate(partner):
                    st = stages.detect_stages(metrics["step"], K[:, s, l - 1, h, p], direction="increase",
                                              min_change=0.05, **stage_kw)
                    rises = [t for t in st["transitions"] if not t["censored_start"]]
                    onsets.append(max(rises, key=lambda t: t["change"])["onset"] if _formed(entry, s) and rises
                                  else None)
                link["link_onset_per_seed"] = onsets
            out[head_name(l, h)] = link
    return out


def _outcome(formed: bool, loss_transition: bool, falls_from_start: bool) -> str:
    """One seed's outcome in words: whether its loss has a phase change (a transition after a
    plateau) and whether an attention induction head formed."""
    if loss_transition:
        return "induction head" if formed else "loss transition without an attention induction head"
    if falls_from_start:
        return ("induction head; the loss falls from the first step, with no plateau before it" if formed
                else "no induction head; the loss falls from the first step, with no plateau before it")
    return "induction head without a loss transition" if formed else "no transition"


NOT_MEASURED = "not measured: did not train"


def _trained(metrics: dict, task, n: int) -> Optional[list[bool]]:
    """Per seed, whether the run trained at all (`task.trained_check`: its metric ended below the bar);
    None when that metric was not logged."""
    check = task.trained_check()
    values = metrics.get(check.metric)
    if values is None or values.ndim != 2 or values.shape[1] != n:
        return None
    return [bool(np.isfinite(v) and v < check.bar) for v in values[-1]]


def _at_chance(metrics: dict, task, seeds: list[int]) -> str:
    """'final loss_repeat 2.491 is at chance (ln 12 = 2.485)' for the seeds (indices) that did not train."""
    check = task.trained_check()
    values = [float(metrics[check.metric][-1, s]) for s in seeds]
    margin = check.chance - check.bar
    if all(np.isfinite(v) and v <= check.chance + margin for v in values):
        where = "at chance"
    elif all(np.isfinite(v) and v > check.chance + margin for v in values):
        where = "above chance"
    else:
        where = "not below chance"
    return (f"final {check.metric} {', '.join(f'{v:.4g}' for v in values)} {'is' if len(values) == 1 else 'are'} "
            f"{where} ({check.chance_text} = {check.chance:.4g})")


def summarize(metrics: dict, cfg, task, seeds: list[int], status: str = "completed") -> dict:
    steps = metrics["step"]
    chance_loss, main = task.chance_loss, task.main_metric
    threshold, min_drop = task.phase_threshold(cfg.measures.phase)
    head_scores = {g: k for g, k in task.head_scores.items() if k in metrics}
    pc = cfg.measures.phase
    kw = dict(min_r2=pc.min_r2, max_width_frac=pc.max_width_frac, smooth_window=pc.smooth)
    stage_kw = dict(max_width_frac=pc.max_width_frac, smooth_window=pc.smooth, penalty=pc.stage_penalty)
    frac = pc.stage_min_change_frac
    n = len(seeds)
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
    # the sigmoid fits the task's phase curve (which may cut an early stage off); stages see the whole curve
    main_entry = _curve_entry(steps, np.stack([task.phase_curve(metrics[main][:, s]) for s in range(n)], 1),
                              direction="decrease", threshold=threshold, min_change=min_drop, kw=kw, stage_kw=stage_kw,
                              stage_frac=frac, stage_curves=metrics[main])
    summary["phase"][main] = main_entry
    L, H = cfg.model.n_layers, cfg.model.n_heads
    for group, key in head_scores.items():
        # every head's and seed's sigmoid fit at once: (L, H, S) curves
        scores = metrics[key]                                                    # (steps, S, L, H)
        fits = phase.detect_many(steps, scores.transpose(2, 3, 1, 0).reshape(L * H * n, -1), direction="increase",
                                 threshold=pc.score_threshold, min_amplitude=pc.score_min_rise, **kw)
        summary["phase"][group] = {
            head_name(l, h): _curve_entry(steps, scores[:, :, l, h], direction="increase",
                                          threshold=pc.score_threshold, min_change=pc.score_min_rise, kw=kw,
                                          stage_kw=stage_kw, stage_frac=frac,
                                          per_seed=fits[(l * H + h) * n:(l * H + h + 1) * n])
            for l in range(L) for h in range(H)}
    for k, v in metrics.items():
        if k in ("step", "time", "lr") or v.ndim != 2:
            continue
        summary["final"][k] = _mean_std(v[-1])
    final_heads = {g: metrics[k][-1].mean(0) for g, k in head_scores.items()}     # (L, H), mean over seeds
    for g, scores in final_heads.items():
        summary["final"][f"{g}_per_head"] = {head_name(l, h): float(scores[l, h]) for l in range(L) for h in range(H)}
        summary[f"strongest_{g}_head"] = [int(i) for i in np.unravel_index(np.argmax(scores), (L, H))]
    # a seed whose loss never left chance did not train: its phase change, stages and heads are not measured
    trained = _trained(metrics, task, n)
    if trained is not None:
        summary["trained"], summary["trained_per_seed"] = all(trained), trained
    measured = [s for s in range(n) if trained is None or trained[s]]
    loss_events = [transition(main_entry, s) for s in range(n)]
    n_loss = sum(loss_events[s] is not None for s in measured)
    onsets = stats.describe(loss_events[s]["onset"] for s in measured if loss_events[s])
    verdict = (f"transition in {task.main_metric_label} in {n_loss}/{len(measured)} seeds"
               + (f", onset step {onsets['mean']:.0f}" + (f" ± {onsets['std']:.0f} (sample std)"
                                                           if onsets["std"] is not None else "")
                  if n_loss else ""))
    stage_counts = [main_entry["stages_aggregate"]["n_transitions"][s] for s in measured]
    if any(c > 1 for c in stage_counts):
        verdict += f"; stages per seed: {', '.join(str(c + 1) for c in stage_counts)}"
    if "induction" in head_scores:
        ind = summary["phase"]["induction"]
        later = [(l, h) for l in range(min(1, L - 1), L) for h in range(H)]   # layer 0 only if L = 1

        def formed_in(l, h, s):   # the task's own rule (Task.head_formed), else the general one
            own = task.head_formed(metrics[head_scores["induction"]][:, s, l, h], pc)
            return _formed(ind[head_name(l, h)], s) if own is None else own
        formed = [[head_name(l, h) for l, h in later if formed_in(l, h, s)] for s in range(n)]
        summary["induction_heads_per_seed"] = formed
        summary["induction_head_formed"] = [bool(h) for h in formed]
        early = [bool(st["transitions"]) for st in main_entry["stages"]]   # only a fall from the first step
        summary["outcome_per_seed"] = [_outcome(bool(formed[s]), loss_events[s] is not None, early[s])
                                       if s in measured else NOT_MEASURED for s in range(n)]
        verdict += f"; induction head formed in {sum(bool(formed[s]) for s in measured)}/{len(measured)} seeds"
        odd = [f"seed {seeds[s]}: {summary['outcome_per_seed'][s]}" for s in measured
               if summary["outcome_per_seed"][s] not in ("induction head", "no transition")
               and not summary["outcome_per_seed"][s].startswith("no induction head")]
        if odd:
            verdict += " (" + "; ".join(odd) + ")"
        if "k_composition" in metrics and L >= 2:
            summary["composition"] = _composition(metrics, ind, L, H, n, stage_kw)
    if len(measured) < n:
        untrained = [s for s in range(n) if s not in measured]
        claims = "phase change, stages" + (" and induction heads" if "induction" in head_scores else "")
        if not measured:
            verdict = f"did not train: {_at_chance(metrics, task, untrained)}; {claims} not measured"
        else:
            many = len(untrained) > 1
            verdict = (f"seed{'s' * many} {', '.join(str(seeds[s]) for s in untrained)} did not train: "
                       f"{_at_chance(metrics, task, untrained)}, so {'their' if many else 'its'} {claims} are not "
                       f"measured; in the {len(measured)} that trained: {verdict}")
    summary["verdict"] = verdict
    return summary
