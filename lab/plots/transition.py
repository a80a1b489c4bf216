"""The loss phase change of a run as summary.json reports it (`phase_transition`), reduced to what
the run figures and the comparison of runs draw (`Transition`), and what a run found in a few words
for figure titles (`finding`)."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Transition:
    """The loss phase change as summary.json reports it, reduced to what gets drawn."""

    n_detected: int
    n_seeds: int
    midpoints: list[float] = field(default_factory=list)  # per detected seed
    midpoint: float | None = None                          # mean over detected seeds
    midpoint_std: float | None = None
    onset: float | None = None
    end: float | None = None
    threshold_step: float | None = None
    reason: str = ""
    # change-point transitions per seed: [(onset, end), ...] (summary.json's "stages")
    stages: list[list[tuple[float, float]]] = field(default_factory=list)
    # per seed and transition: under way at the first logged step (the descent from initialisation,
    # not a phase change: summary.json's verdict does not count it either)
    censored: list[list[bool]] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        return self.n_detected > 0 or self.n_staged > 0

    @property
    def n_staged(self) -> int:
        """Seeds with a change-point transition after a plateau (not only the initial descent)."""
        if not self.censored:
            return sum(bool(s) for s in self.stages)
        return sum(any(not c for c in cs) for cs in self.censored)

    @property
    def centre(self) -> float | None:
        """The step to mark: sigmoid midpoint, else the threshold crossing."""
        return self.midpoint if self.midpoint is not None else self.threshold_step

    def describe(self) -> str:
        if self.n_detected == 0 and self.n_staged:
            counts = ", ".join(str(len(s)) for s in self.stages)
            return (f"no single sigmoid fits; change points find transitions in {self.n_staged}/{self.n_seeds} "
                    f"seeds (per seed: {counts})")
        if not self.detected:
            text = "no phase change detected"
            return text + ("\n" + textwrap.fill(self.reason, 45) if self.reason else "")
        seeds = f"({self.n_detected}/{self.n_seeds} seeds)"
        if any(len(s) > 1 for s in self.stages):
            seeds += "; change-point transitions per seed: " + ", ".join(str(len(s)) for s in self.stages)
        if self.midpoint is not None:
            spread = f" ± {self.midpoint_std:.0f}" if self.midpoint_std and self.n_detected > 1 else ""
            return f"phase change at step {self.midpoint:.0f}{spread} {seeds}"
        if self.threshold_step is not None:
            return f"loss below threshold at step {self.threshold_step:.0f} {seeds}"
        return f"phase change detected {seeds}"


def _mean_of(per_seed: list[dict], key: str) -> float | None:
    vals = [p[key] for p in per_seed if p.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def phase_transition(summary: dict, metric: str = "loss_repeat") -> Transition | None:
    """The phase change of `metric` in summary.json's "phase", or None when it has no entry."""
    entry = (summary.get("phase") or {}).get(metric)
    if not isinstance(entry, dict):
        return None
    per_seed = [p for p in entry.get("per_seed") or [] if isinstance(p, dict)]
    agg = entry.get("aggregate") or {}
    hits = [p for p in per_seed if p.get("detected")]

    def pick(agg_key: str, seed_key: str) -> float | None:
        # the aggregate is authoritative; per-seed means fill keys it lacks (e.g. end)
        return agg[agg_key] if agg.get(agg_key) is not None else _mean_of(hits, seed_key)

    std = agg.get("midpoint_std")
    if std is None and len(hits) > 1:
        std = float(np.std([p["midpoint"] for p in hits if p.get("midpoint") is not None] or [0.0, 0.0], ddof=1))
    reasons = [p.get("reason") for p in per_seed if p.get("reason")]
    return Transition(
        n_detected=int(agg.get("n_detected", len(hits))),
        n_seeds=int(agg.get("n_seeds", len(per_seed))),
        midpoints=[float(p["midpoint"]) for p in hits if p.get("midpoint") is not None],
        midpoint=pick("midpoint_mean", "midpoint"),
        midpoint_std=std,
        onset=pick("onset_mean", "onset"),
        end=pick("end_mean", "end"),
        threshold_step=pick("threshold_step_mean", "threshold_step"),
        reason=reasons[0] if reasons and not hits else "",
        stages=[[(t["onset"], t["end"]) for t in st.get("transitions", [])]
                for st in entry.get("stages") or [] if isinstance(st, dict)],
        censored=[[bool(t.get("censored_start")) for t in st.get("transitions", [])]
                  for st in entry.get("stages") or [] if isinstance(st, dict)],
    )


def seed_transition_step(entry: dict, seed: int) -> float | None:
    """The midpoint of one seed's phase change as summary.json's verdict counts it: its largest
    change-point transition that starts after a plateau, else a detected sigmoid's; None without one."""
    stages = entry.get("stages") or []
    st = stages[seed] if seed < len(stages) and isinstance(stages[seed], dict) else {}
    later = [t for t in st.get("transitions") or [] if not t.get("censored_start")]
    if later:
        best = max(later, key=lambda t: abs(t.get("change") or 0.0))
        step = best.get("midpoint", best.get("onset"))
        return float(step) if step is not None else None
    fits = entry.get("per_seed") or []
    fit = fits[seed] if seed < len(fits) and isinstance(fits[seed], dict) else {}
    if fit.get("detected"):
        step = fit.get("midpoint") if fit.get("midpoint") is not None else fit.get("threshold_step")
        return float(step) if step is not None else None
    return None


def finding(summary: dict, metric: str | None = None) -> str:
    """What the run found, for a figure's title: "induction phase change at step 412 ± 30 in 3/3 seeds;
    induction head formed in 3/3 seeds", or "no phase change detected in <loss>"; seeds that did not
    train are left out, as in summary.json's verdict."""
    metric = metric or summary.get("main_metric") or "loss_repeat"
    label = summary.get("main_metric_label") or metric
    what = "induction phase change" if metric == "loss_repeat" else f"phase change in {label}"
    entry = (summary.get("phase") or {}).get(metric)
    if not isinstance(entry, dict):
        return "no phase analysis (no summary.json)" if not summary else f"no phase analysis of {label}"
    n = len(entry.get("per_seed") or [])
    trained = summary.get("trained_per_seed")
    seeds = [s for s in range(n) if not (isinstance(trained, list) and s < len(trained) and not trained[s])]
    if not seeds:
        return "did not train: no phase change measured"
    steps = {s: seed_transition_step(entry, s) for s in seeds}
    hits = [s for s in seeds if steps[s] is not None]
    if hits:
        tr = phase_transition(summary, metric)
        if tr is not None and tr.midpoint is not None and tr.n_detected == len(hits):
            # every such seed has a sigmoid: its mean midpoint, the step the figures mark
            mean, std = tr.midpoint, tr.midpoint_std if len(hits) > 1 else None
        else:
            at = [steps[s] for s in hits]
            mean, std = float(np.mean(at)), float(np.std(at, ddof=1)) if len(at) > 1 else None
        at = f" at step {mean:.0f}" + (f" ± {std:.0f}" if std else "")
        text = f"{what}{at} in {len(hits)}/{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    else:
        text = f"no phase change detected in {label}" if metric != "loss_repeat" else "no phase change detected"
    formed = summary.get("induction_head_formed")
    if isinstance(formed, list) and len(formed) == n:
        k = sum(bool(formed[s]) for s in seeds)
        text += f"; induction head formed in {k}/{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    return text
