"""Figures for a run directory: losses and the phase change, per-head scores, attention
snapshots and loss by position.

Everything is read from the files the trainer writes (metrics.jsonl, summary.json,
attention.npz, config.yaml), so plots can be redrawn for a finished or a killed run without JAX.
Unknown per-seed scalars and per-head measures are picked up by shape and drawn in the
overview figures, so a new measure needs no change here.

Clamps (config.yaml `clamps:`) are shaded on the loss, per-head line and all-scalars figures;
`plot_compare` overlays several runs' curves, labelled by how their configs differ.
"""
from __future__ import annotations

import json
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.colors import PowerNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 130
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
}
STEP_LABEL = "training step"
SCORE_CMAP = "viridis"
MARK_COLOUR = "tab:red"       # transition marks; visible on both ends of viridis
MAX_ATTENTION_COLUMNS = 8
LINE_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2))]

# Known metric names; anything else of the right shape is still plotted, under its key.
LABELS = {
    "loss_repeat": "loss on repeated part",
    "loss": "overall probe loss",
    "train_loss": "training loss",
    "acc_repeat": "accuracy on repeated part",
    "icl_score": "ICL score (late − early loss)",
    "induction": "induction score",
    "prev_token": "previous-token score",
    "prev_token_corrected": "corrected previous-token score",
    "copying": "copying score",
    "lr": "learning rate",
    "loss_query": "loss at the query",
    "acc_query": "accuracy at the query",
    "r2_query": "R² at the query (vs predicting 0)",
    "gd_loss": "loss of one GD step (η*)",
    "pred_distance": "mean (ŷ − ŷ_GD)²",
    "sensitivity_cosine": "cos(∂ŷ/∂x_q, ∂ŷ_GD/∂x_q)",
    "anti_induction": "anti-induction score",
    "cla": "context-label accuracy (CLA)",
    "label_mass": "probability on in-context labels",
}


# ----------------------------------------------------------------------------- loading


def _read_records(path: Path) -> list[dict]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a killed run can leave half a line behind
                warnings.warn(f"{path}: skipping truncated last line")
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(rec, dict) or "step" not in rec:
            warnings.warn(f"{path}: skipping line {i + 1}, not a record with a 'step'")
            continue
        records.append(rec)
    return records


def load_metrics(run_dir) -> dict[str, np.ndarray]:
    """Read metrics.jsonl into arrays with the log step as the first axis.

    `step` is (N,); per-seed scalars (N, S); `loss_by_pos` (N, S, T-1); per-head measures
    (N, S, L, H); plain numbers such as `time` and `lr` (N,). A key missing from some
    records, or null, becomes NaN there; non-numeric or ragged keys are skipped.
    """
    path = Path(run_dir) / "metrics.jsonl"
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path}: no complete records")

    steps = [int(r["step"]) for r in records]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        # a resumed run may log a step twice; keep the latest record for each step
        warnings.warn(f"{path}: steps not strictly increasing; sorting, keeping the last of duplicates")
        by_step = {int(r["step"]): r for r in records}
        records = [by_step[s] for s in sorted(by_step)]

    keys = list(dict.fromkeys(k for r in records for k in r))
    out: dict[str, np.ndarray] = {"step": np.array([int(r["step"]) for r in records], dtype=np.int64)}
    for key in keys:
        if key == "step":
            continue
        arr = _stack_key(records, key)
        if arr is None:
            if not all(isinstance(r.get(key), (str, bool, dict)) or r.get(key) is None for r in records):
                warnings.warn(f"{path}: key {key!r} has no consistent numeric shape; not loaded")
            continue
        out[key] = arr
    return out


def _stack_key(records: list[dict], key: str) -> np.ndarray | None:
    values = []
    for r in records:
        v = r.get(key)
        if v is None:
            values.append(None)
            continue
        if isinstance(v, (str, bool, dict)):
            return None
        try:
            values.append(np.asarray(v, dtype=float))
        except (TypeError, ValueError):  # ragged or non-numeric
            return None
    shapes = {v.shape for v in values if v is not None}
    if len(shapes) != 1:
        return None
    shape = shapes.pop()
    return np.stack([np.full(shape, np.nan) if v is None else v for v in values])


def _n_seeds(metrics: dict[str, np.ndarray]) -> int:
    for key in ("loss", "loss_repeat", "train_loss"):   # every task logs loss and train_loss
        if key in metrics and metrics[key].ndim == 2:
            return metrics[key].shape[1]
    dims = [a.shape[1] for a in metrics.values() if a.ndim >= 2]
    return max(set(dims), key=dims.count) if dims else 1


def _load_summary(run_dir: Path) -> dict:
    """summary.json, or {} when absent or unreadable (plots then carry no phase marks)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        warnings.warn(f"{path}: not valid JSON; plotting without phase information")
        return {}


def load_config(run_dir) -> dict:
    """The run's resolved config.yaml as a dict; {} when absent or unreadable."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        warnings.warn(f"{path}: not valid YAML; plotting without config information")
        return {}
    if not isinstance(config, dict):
        warnings.warn(f"{path}: not a mapping; plotting without config information")
        return {}
    return config


def _load_attention(run_dir: Path) -> dict | None:
    path = run_dir / "attention.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        att = {k: z[k] for k in ("steps", "patterns") if k in z}
        if set(att) != {"steps", "patterns"} or att["patterns"].ndim != 5:
            warnings.warn(f"{path}: needs 'steps' and a 5-d 'patterns'; skipping attention plot")
            return None
        try:
            att["labels"] = [str(s) for s in z["labels"]]
        except (KeyError, ValueError):  # absent, or saved as an object array
            att["labels"] = [""] * len(att["steps"])
        for k in ("repeat_start", "repeat_len", "n_repeats"):
            att[k] = int(z[k].item()) if k in z else None
    return att


# ----------------------------------------------------------------------------- phase info


@dataclass
class _Transition:
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

    @property
    def detected(self) -> bool:
        return self.n_detected > 0

    @property
    def centre(self) -> float | None:
        """The step to mark: sigmoid midpoint, else the threshold crossing."""
        return self.midpoint if self.midpoint is not None else self.threshold_step

    def describe(self) -> str:
        if not self.detected:
            text = "no phase change detected"
            return text + ("\n" + textwrap.fill(self.reason, 45) if self.reason else "")
        seeds = f"({self.n_detected}/{self.n_seeds} seeds)"
        if self.midpoint is not None:
            spread = f" ± {self.midpoint_std:.0f}" if self.midpoint_std and self.n_detected > 1 else ""
            return f"phase change at step {self.midpoint:.0f}{spread} {seeds}"
        if self.threshold_step is not None:
            return f"loss below threshold at step {self.threshold_step:.0f} {seeds}"
        return f"phase change detected {seeds}"


def _mean_of(per_seed: list[dict], key: str) -> float | None:
    vals = [p[key] for p in per_seed if p.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _transition(summary: dict, metric: str = "loss_repeat") -> _Transition | None:
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
        std = float(np.std([p["midpoint"] for p in hits if p.get("midpoint") is not None] or [0.0]))
    reasons = [p.get("reason") for p in per_seed if p.get("reason")]
    return _Transition(
        n_detected=int(agg.get("n_detected", len(hits))),
        n_seeds=int(agg.get("n_seeds", len(per_seed))),
        midpoints=[float(p["midpoint"]) for p in hits if p.get("midpoint") is not None],
        midpoint=pick("midpoint_mean", "midpoint"),
        midpoint_std=std,
        onset=pick("onset_mean", "onset"),
        end=pick("end_mean", "end"),
        threshold_step=pick("threshold_step_mean", "threshold_step"),
        reason=reasons[0] if reasons and not hits else "",
    )


# ----------------------------------------------------------------------------- clamps

# One hue per clamp, in config order: a light band (the hue at low alpha) behind the curves, and the
# full hue for its "loss under clamp" line. Green is left out: the accuracy curve is green.
CLAMP_COLOURS = ["tab:purple", "tab:olive", "tab:cyan", "tab:pink", "tab:brown", "tab:gray", "gold", "navy"]
CLAMP_ALPHA = 0.17
RAMP_SCHEDULES = ("linear", "cosine", "release")
RAMP_BANDS = 8                          # sub-bands that draw a ramp as an alpha gradient
CLAMPED_INFIX = "_clamped_"             # metrics.jsonl: loss_repeat_clamped_<name> for apply: measure
TRAINING_APPLIES = ("train", "both")    # clamps that change the weights the run learns
CLAMP_APPLIES = ("train", "eval", "both", "measure")


def _num(value, default: float | None) -> float | None:
    try:
        return default if value is None else float(value)
    except (TypeError, ValueError):
        return default


def _heads_text(heads) -> str:
    """[0] -> 'H0', [0, 2] -> 'H0,2', null -> 'all heads'; anything else as written."""
    if heads is None:
        return "all heads"
    if isinstance(heads, int) and not isinstance(heads, bool):
        return f"H{heads}"
    if isinstance(heads, (list, tuple)):
        if not heads:
            return "no heads"
        if all(isinstance(h, int) and not isinstance(h, bool) for h in heads):
            return "H" + ",".join(str(h) for h in heads)
    return str(heads)


def _steps_text(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:g}"


@dataclass
class ClampWindow:
    """One clamp of a run's config.yaml, resolved to the training steps it covers.

    `start`/`stop` are the window as configured (`stop` None: to the end of training); `end` is
    where a plot ends it (the configured stop, or the run's last logged step). `ramp` is the part
    of [start, end] in which the strength is still ramping (linear/cosine: the first ramp_steps
    after start, up; release: the last ramp_steps before end, down), or None.
    """

    name: str
    site: str
    value: str
    heads: str                  # display form: 'H0', 'all heads', 'auto → H1'
    apply: str                  # train | eval | both | measure
    start: float
    stop: float | None
    end: float
    schedule: str = "constant"
    ramp_steps: float = 0.0
    strength: float = 1.0
    colour: str = CLAMP_COLOURS[0]
    config: dict = field(default_factory=dict)   # the entry as config.yaml has it

    @property
    def trains(self) -> bool:
        """Does the clamp act on training (and so get a filled band)?"""
        return self.apply in TRAINING_APPLIES

    @property
    def eval_only(self) -> bool:
        return self.apply == "eval"

    @property
    def drawn(self) -> bool:
        """Windows drawn on the run plots: training clamps filled, eval-only ones outlined."""
        return (self.trains or self.eval_only) and self.end > self.start

    @property
    def ramp(self) -> tuple[float, float] | None:
        if self.schedule not in RAMP_SCHEDULES or self.ramp_steps <= 0 or self.end <= self.start:
            return None
        if self.schedule == "release":
            return max(self.start, self.end - self.ramp_steps), self.end
        return self.start, min(self.end, self.start + self.ramp_steps)

    def ramp_level(self, t: float) -> float:
        """Strength (as a fraction of the full strength) a fraction t of the way through the ramp."""
        if self.schedule == "cosine":
            return 0.5 * (1 - math.cos(math.pi * t))
        return 1 - t if self.schedule == "release" else t

    @property
    def value_text(self) -> str:
        """The value with what parametrises it: 'scale ×0.5', 'graft from runs/x', 'perfect_copy of L1H0'."""
        c = self.config
        if self.value == "scale" and c.get("factor") is not None:
            return f"scale ×{_num(c['factor'], 1.0):g}"
        if self.value == "graft" and c.get("source"):
            step = f" step {c['source_step']}" if c.get("source_step") is not None else ""
            return f"graft from {Path(str(c['source'])).name}{step}"
        if self.value == "perfect_copy" and c.get("copy_from"):
            return f"perfect_copy of {c['copy_from']}"
        return self.value

    @property
    def site_text(self) -> str:
        layers = self.config.get("layers")
        return self.site + (f" in layers {','.join(map(str, layers))}" if isinstance(layers, list) else "")

    def window_text(self) -> str:
        return f"{_steps_text(self.start)}–{'end' if self.stop is None else _steps_text(self.stop)}"

    def extras(self) -> list[str]:
        out = []
        if self.strength != 1:
            out.append(f"×{self.strength:g}")
        if self.ramp is not None:
            out.append(f"{self.schedule} ramp {_steps_text(self.ramp_steps)}")
        if self.apply != "both":
            out.append(f"{self.apply} only")
        return out

    def legend_label(self) -> str:
        extras = self.extras()
        return (f"clamp {self.name}: {self.value_text} on {self.site_text} {self.heads}"
                + (f" ({', '.join(extras)})" if extras else ""))

    def describe(self) -> str:
        """'prev_token (blocks.0.attn.pattern H0, 0–end)': for run labels and titles."""
        # the value is left out where the name says it: 'late_prev_token', not 'late_prev_token=prev_token'
        value = "" if self.value_text in self.name else f"={self.value_text}"
        parts = [f"{self.site_text} {self.heads}", self.window_text()] + self.extras()
        return f"{self.name}{value} ({', '.join(parts)})"


def clamp_windows(config: dict | None, last_step: float, summary: dict | None = None) -> list[ClampWindow]:
    """The clamps of a run's resolved config (`config["clamps"]`, name -> entry), in config order.

    `last_step` ends windows whose stop is null. With `heads: auto`, `summary["clamps"][name]`
    supplies the heads chosen per seed and the step they were chosen at; the window then starts
    no earlier than that step. Malformed entries are skipped with a warning.
    """
    clamps = (config or {}).get("clamps") or {}
    if not isinstance(clamps, dict):
        warnings.warn(f"config 'clamps' is a {type(clamps).__name__}, not a mapping of named clamps; ignored")
        return []
    chosen = (summary or {}).get("clamps") or {}
    out = []
    for i, (name, entry) in enumerate(clamps.items()):
        if not isinstance(entry, dict):
            warnings.warn(f"clamp {name!r} is not a mapping; not drawn")
            continue
        apply = str(entry.get("apply") or "both")
        if apply not in CLAMP_APPLIES:
            warnings.warn(f"clamp {name!r}: unknown apply {apply!r}; not drawn")
            continue
        start = _num(entry.get("start"), 0.0)
        stop = _num(entry.get("stop"), None)
        heads = _heads_text(entry.get("heads"))
        info = chosen.get(name) if isinstance(chosen.get(name), dict) else {}
        if entry.get("heads") == "auto":
            per_seed = info.get("heads_per_seed")
            if isinstance(per_seed, list) and per_seed:
                texts = list(dict.fromkeys(_heads_text(h) for h in per_seed))
                heads = "auto → " + (texts[0] if len(texts) == 1 else " | ".join(texts))
            at = _num(info.get("chosen_at_step"), None)
            if at is not None:
                start = max(start, at)   # the clamp cannot act before its heads are chosen
        out.append(ClampWindow(
            name=str(name), site=str(entry.get("site", "?")), value=str(entry.get("value", "?")), heads=heads,
            apply=apply, start=start, stop=stop, end=float(last_step) if stop is None else stop,
            schedule=str(entry.get("schedule") or "constant"), ramp_steps=_num(entry.get("ramp_steps"), 0.0),
            strength=_num(entry.get("strength"), 1.0), colour=CLAMP_COLOURS[i % len(CLAMP_COLOURS)],
            config=dict(entry)))
    return out


def _clamp_note(windows: list[ClampWindow], width: int = 90) -> str:
    """One title line: 'clamps: prev_token 0–end; ind eval only 0–500'."""
    parts = []
    for w in windows:
        if w.apply == "measure":
            parts.append(f"{w.name} (measured only)")
        elif w.apply == "both":
            parts.append(f"{w.name} {w.window_text()}")
        else:
            parts.append(f"{w.name} ({w.apply} only, {w.window_text()})")
    return textwrap.fill("clamps: " + "; ".join(parts), width) if parts else ""


def _shade_clamps(ax, windows: list[ClampWindow], x_range: tuple[float, float], label: bool = False,
                  colour: str | None = None, alpha: float = CLAMP_ALPHA, rows=None) -> None:
    """Draw each window that affects the run: a filled band for training clamps (ramps as an
    alpha gradient), a dashed outline for eval-only ones. Artists get gid 'clamp:<name>'
    ('clamp:<name>:ramp' for ramp sub-bands). `colour` overrides the clamp's own colour.
    Bands span the axes' height, or with `rows` (one (y0, y1) per window) those y ranges."""
    lo, hi = x_range
    for i, w in enumerate(windows):
        if rows is None:
            span = ax.axvspan
        else:
            y0, y1 = rows[i]
            span = lambda a, b, **kw: ax.add_patch(Rectangle((a, y0), b - a, y1 - y0, **kw))  # noqa: E731
        if not w.drawn:
            continue
        a, b = max(w.start, lo), min(w.end, hi)
        if b <= a:
            continue
        c = colour or w.colour
        text = w.legend_label() if label else None
        if w.eval_only:
            span(a, b, fill=False, ec=c, ls="--", lw=1.3, alpha=0.9, zorder=0.6, gid=f"clamp:{w.name}", label=text)
            continue
        ramp = w.ramp
        if ramp is None:
            span(a, b, color=c, alpha=alpha, lw=0, zorder=0.5, gid=f"clamp:{w.name}", label=text)
            continue
        # full-strength part, then the ramp as sub-bands whose alpha follows the strength
        r0, r1 = ramp
        for s0, s1 in ((w.start, r0), (r1, w.end)):
            s0, s1 = max(s0, lo), min(s1, hi)
            if s1 > s0:
                span(s0, s1, color=c, alpha=alpha, lw=0, zorder=0.5, gid=f"clamp:{w.name}", label=text)
                text = None
        edges = np.linspace(r0, r1, RAMP_BANDS + 1)
        for k in range(RAMP_BANDS):
            s0, s1 = max(edges[k], lo), min(edges[k + 1], hi)
            if s1 > s0:
                level = w.ramp_level((k + 0.5) / RAMP_BANDS)
                span(s0, s1, color=c, alpha=alpha * (0.12 + 0.88 * level), lw=0, zorder=0.5,
                     gid=f"clamp:{w.name}:ramp", label=text)
                text = None


def _clamp_legend(fig, windows: list[ClampWindow]) -> None:
    """A legend below the panels for the windows _shade_clamps draws (its labels are long)."""
    handles = []
    for w in windows:
        if not w.drawn:
            continue
        if w.eval_only:
            handles.append(Patch(fill=False, ec=w.colour, ls="--", lw=1.3, label=w.legend_label()))
        else:
            handles.append(Patch(color=w.colour, alpha=CLAMP_ALPHA + 0.08, lw=0, label=w.legend_label()))
    if any(w.drawn and w.ramp is not None for w in windows):
        handles.append(Patch(color="0.5", alpha=0, label="fading shade: strength ramping up or down"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncols=1, frameon=False)


# ----------------------------------------------------------------------------- run bundle


@dataclass
class _Run:
    name: str
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]  # (N, S)
    heads: dict[str, np.ndarray]    # (N, S, L, H)
    n_seeds: int
    transition: _Transition | None
    thresholds: dict
    strongest: dict[str, tuple[int, int]]
    has_summary: bool
    clamps: list[ClampWindow] = field(default_factory=list)
    main: str = "loss_repeat"        # the task's main loss (summary.json main_metric) and its accuracy
    main_acc: str = "acc_repeat"
    main_label: str = "loss on repeated part"
    baselines: dict = field(default_factory=dict)   # summary.json: reference-predictor loss key -> label

    @property
    def x_range(self) -> tuple[float, float]:
        return float(self.steps[0]), float(self.steps[-1])

    def head_names(self, key: str) -> list[str]:
        _, _, n_layers, n_heads = self.heads[key].shape
        return [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]

    def status(self) -> str:
        if self.transition is not None:
            return self.transition.describe()
        return "no phase analysis " + ("in summary.json" if self.has_summary else "(no summary.json)")

    def status_line(self) -> str:
        return self.status().splitlines()[0]

    def subtitle(self, width: int = 90) -> str:
        """The status line, and a line naming the clamps if the run has any."""
        note = _clamp_note(self.clamps, width)
        return self.status_line() + (f"\n{note}" if note else "")

    def shade_clamps(self, ax, label: bool = False) -> None:
        _shade_clamps(ax, self.clamps, self.x_range, label=label)

    def clamped(self, base: str) -> list[tuple[str, str, str]]:
        """(key, clamp name, colour) of each logged `<base>_clamped_<name>` per-seed scalar."""
        colours = {w.name: w.colour for w in self.clamps}
        prefix = f"{base}{CLAMPED_INFIX}"
        out = []
        for key in self.scalars:
            if key.startswith(prefix):
                name = key[len(prefix):]
                out.append((key, name, colours.get(name, CLAMP_COLOURS[len(out) % len(CLAMP_COLOURS)])))
        return out


def _strongest_head(summary: dict, heads: dict, summary_key: str, metric: str) -> tuple[int, int] | None:
    head = summary.get(summary_key)
    if isinstance(head, (list, tuple)) and len(head) == 2:
        return int(head[0]), int(head[1])
    if metric not in heads:
        return None
    # no summary: the head with the highest final score (mean over seeds)
    final = _seed_mean(heads[metric])[-1]
    if np.all(np.isnan(final)):
        return None
    l, h = np.unravel_index(np.nanargmax(final), final.shape)
    return int(l), int(h)


def _gather(run_dir: Path) -> _Run:
    metrics = load_metrics(run_dir)
    summary = _load_summary(run_dir)
    main = summary.get("main_metric", "loss_repeat")
    config = load_config(run_dir)
    n_seeds = _n_seeds(metrics)
    scalars = {k: v for k, v in metrics.items() if k != "step" and v.ndim == 2 and v.shape[1] == n_seeds}
    heads = {k: v for k, v in metrics.items() if v.ndim == 4 and v.shape[1] == n_seeds}
    strongest = {}
    for metric, summary_key in (("induction", "strongest_induction_head"),
                                ("prev_token", "strongest_prev_token_head")):
        head = _strongest_head(summary, heads, summary_key, metric)
        if head is not None:
            strongest[metric] = head
    return _Run(
        name=run_dir.resolve().name,
        steps=metrics["step"],
        metrics=metrics,
        scalars=scalars,
        heads=heads,
        n_seeds=n_seeds,
        transition=_transition(summary, main),
        thresholds=summary.get("thresholds") or {},
        strongest=strongest,
        has_summary=bool(summary),
        clamps=clamp_windows(config, float(metrics["step"][-1]), summary),
        main=main,
        main_acc=summary.get("main_accuracy", "acc_repeat"),
        main_label=summary.get("main_metric_label", _label(main)),
        baselines=summary.get("baselines") or {},
    )


# ----------------------------------------------------------------------------- helpers


def _seed_mean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmean(a, axis=1)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)  # constrained layout already trims; "tight" would draw twice
    plt.close(fig)
    return path


def _plot_seeds(ax, steps, values, label, colour, ls="-") -> None:
    """Thin line per seed, thick mean; one seed gets just the thick line."""
    if values.shape[1] > 1:
        for s in range(values.shape[1]):
            ax.plot(steps, values[:, s], color=colour, lw=0.8, alpha=0.4, ls=ls)
    ax.plot(steps, _seed_mean(values), color=colour, lw=2.2, label=label, ls=ls)


def _mark_transition(ax, tr: _Transition | None, band=True, per_seed=True, label=False) -> None:
    if tr is None or not tr.detected:
        return
    if band and tr.onset is not None and tr.end is not None:
        ax.axvspan(tr.onset, tr.end, color=MARK_COLOUR, alpha=0.1, lw=0,
                   label="transition (mean onset–end)" if label else None)
    if per_seed and len(tr.midpoints) > 1:
        for m in tr.midpoints:
            ax.axvline(m, color=MARK_COLOUR, lw=0.7, ls=":", alpha=0.8)
    if tr.centre is not None:
        ax.axvline(tr.centre, color=MARK_COLOUR, lw=1.5, ls="--",
                   label="mean transition midpoint" if label else None)


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between log steps, so uneven logging keeps true x positions."""
    s = steps.astype(float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _label(key: str) -> str:
    base, infix, name = key.partition(CLAMPED_INFIX)
    if infix and base in LABELS:
        return f"{LABELS[base]} under clamp {name}"
    return LABELS.get(key, key.replace("_", " "))


# ----------------------------------------------------------------------------- figures


def _plot_loss(run: _Run, path: Path) -> Path:
    fig, (ax, ax_acc) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, layout="constrained",
                                     height_ratios=[3, 2])
    seeds_note = f"thin: {run.n_seeds} seeds, thick: mean" if run.n_seeds > 1 else "1 seed"
    for key, colour, label in ((run.main, "C0", run.main_label), ("loss", "C1", _label("loss"))):
        same = key == "loss" and run.main in run.scalars and np.allclose(run.scalars[key], run.scalars[run.main],
                                                                         equal_nan=True)
        if key in run.scalars and not same:   # tasks scored only at the query log loss = the main loss
            _plot_seeds(ax, run.steps, run.scalars[key], label, colour)
    for key, name, colour in run.clamped(run.main):
        _plot_seeds(ax, run.steps, run.scalars[key], f"loss under clamp {name}", colour, ls="--")
    for i, (key, label) in enumerate(run.baselines.items()):   # e.g. in-context unigram / bigram predictors
        if key in run.scalars:
            _plot_seeds(ax, run.steps, run.scalars[key], label, f"C{4 + i}", ls=":")
    run.shade_clamps(ax)
    if run.thresholds.get(run.main) is not None:
        ax.axhline(run.thresholds[run.main], color="0.3", ls="--", lw=1,
                   label=f"detection threshold ({run.thresholds[run.main]:g})")
    _mark_transition(ax, run.transition, label=True)
    ax.set_ylabel("loss")
    ax.set_title(f"Probe loss ({seeds_note})")
    ax.grid(alpha=0.3)
    # the phase verdict heads the legend, so loc="best" keeps both clear of the curves
    legend = ax.legend(loc="best", title=run.status(), title_fontproperties={"weight": "bold", "size": 10},
                       alignment="left")
    legend.get_frame().set_edgecolor("0.5")

    # accuracy and ICL score have different units: twin y axes, each label coloured like its
    # line, which stands in for a legend that could not avoid the curves of both axes
    drawn = []
    if run.main_acc in run.scalars:
        _plot_seeds(ax_acc, run.steps, run.scalars[run.main_acc], None, "C2")
        ax_acc.set_ylabel("accuracy", color="C2")
        ax_acc.tick_params(axis="y", colors="C2")
        if np.nanmin(run.scalars[run.main_acc]) >= 0:   # an R² can be negative: leave its axis free
            ax_acc.set_ylim(-0.02, 1.02)
        what = LABELS.get(run.main_acc) if run.main_acc not in ("acc_repeat", "acc") else None
        what = what or (run.main_label.replace("loss", "accuracy", 1) if "loss" in run.main_label else run.main_acc)
        drawn.append(f"{what} (green, left axis)")
        clamped = run.clamped(run.main_acc)
        for key, name, colour in clamped:
            _plot_seeds(ax_acc, run.steps, run.scalars[key], None, colour, ls="--")
        if clamped:
            drawn[-1] = drawn[-1][:-1] + "; dashed: under clamp)"
    if "icl_score" in run.scalars:
        ax_icl = ax_acc.twinx()
        _plot_seeds(ax_icl, run.steps, run.scalars["icl_score"], None, "C3")
        ax_icl.set_ylabel(_label("icl_score"), color="C3")
        ax_icl.tick_params(axis="y", colors="C3")
        drawn.append("ICL score (red, right axis)")
    _mark_transition(ax_acc, run.transition, per_seed=False)
    run.shade_clamps(ax_acc)
    title = " and ".join(drawn) if drawn else f"{run.main_acc} / icl_score not logged"
    ax_acc.set_title(title[0].upper() + title[1:])
    ax_acc.set_xlabel(STEP_LABEL)
    ax_acc.grid(alpha=0.3)
    _clamp_legend(fig, run.clamps)
    note = _clamp_note(run.clamps)
    what = "the induction phase change" if run.main == "loss_repeat" else f"the phase change in {run.main_label}"
    fig.suptitle(f"{run.name}: loss and {what}" + (f"\n{note}" if note else ""))
    return _save(fig, path)


def _row_ticks(ax, names: list[str], n_heads: int, bold: str | None, line_colour: str) -> None:
    rows = len(names)
    every = max(1, math.ceil(rows / 40))  # keep labels legible for wide models
    idx = list(range(0, rows, every))
    ax.set_yticks([i + 0.5 for i in idx])
    ax.set_yticklabels([names[i] for i in idx], fontsize=9 if rows <= 16 else 7)
    for tick, i in zip(ax.get_yticklabels(), idx):
        if names[i] == bold:
            tick.set_fontweight("bold")
    for boundary in range(n_heads, rows, n_heads):  # separate layers
        ax.axhline(boundary, color=line_colour, lw=1.5)
    ax.set_ylim(rows, 0)


def _heatmaps(run: _Run, keys: list[str], path: Path, title: str, shared_unit: bool) -> Path:
    names = run.head_names(keys[0])
    n_heads = run.heads[keys[0]].shape[3]
    panel_h = float(np.clip(0.22 * len(names) + 1.0, 2.2, 6.5))
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, panel_h * len(keys) + 0.8), sharex=True,
                             layout="constrained", squeeze=False)
    edges = _step_edges(run.steps)
    mesh = None
    for ax, key in zip(axes[:, 0], keys):
        data = _seed_mean(run.heads[key]).reshape(len(run.steps), -1).T  # (heads, steps)
        vmin, vmax, cmap = 0.0, 1.0, SCORE_CMAP
        lo, hi = (np.nanmin(data), np.nanmax(data)) if np.isfinite(data).any() else (0.0, 1.0)
        if not shared_unit and lo < 0:  # signed measure: centre the colour scale on zero
            lim = max(abs(lo), abs(hi), 1e-9)
            vmin, vmax, cmap = -lim, lim, "RdBu_r"
        elif not shared_unit and hi > 1:
            vmin, vmax = lo, hi
        diverging = cmap != SCORE_CMAP  # white and red would vanish on its pale middle and red end
        mesh = ax.pcolormesh(edges, np.arange(len(names) + 1), data, vmin=vmin, vmax=vmax,
                             cmap=cmap, shading="flat")
        strongest = run.strongest.get(key)
        _row_ticks(ax, names, n_heads, f"L{strongest[0]}H{strongest[1]}" if strongest else None,
                   "0.3" if diverging else "white")
        if run.transition and run.transition.detected and run.transition.centre is not None:
            ax.axvline(run.transition.centre, color="black" if diverging else MARK_COLOUR, lw=1.8, ls="--")
        ax.set_title(f"{_label(key)} (mean over seeds)")
        ax.set_ylabel("head")
        if not shared_unit:
            fig.colorbar(mesh, ax=ax, label="score", pad=0.01)
    if shared_unit:
        fig.colorbar(mesh, ax=axes[:, 0], label="score (mean over seeds)", pad=0.01, shrink=0.9)
    axes[-1, 0].set_xlabel(STEP_LABEL)
    subtitle = run.status_line()
    if run.transition and run.transition.detected:
        subtitle += "  (dashed line: loss transition midpoint)"
    if run.clamps:
        subtitle += "\n" + _clamp_note(run.clamps)
    fig.suptitle(f"{run.name}: {title}\n{subtitle}", fontsize=12)
    return _save(fig, path)


def _head_styles(n_layers: int, n_heads: int):
    cmap = plt.get_cmap("tab10" if n_heads <= 10 else "tab20")
    colours = [cmap(h % cmap.N) for h in range(n_heads)]
    styles = [LINE_STYLES[l % len(LINE_STYLES)] for l in range(n_layers)]
    return colours, styles


def _plot_head_lines(run: _Run, keys: list[str], path: Path) -> Path:
    _, _, n_layers, n_heads = run.heads[keys[0]].shape
    colours, styles = _head_styles(n_layers, n_heads)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 3.6 * len(keys) + 0.8), sharex=True,
                             layout="constrained", squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        mean = _seed_mean(run.heads[key])  # (N, L, H)
        strongest = run.strongest.get(key)
        for l in range(n_layers):
            for h in range(n_heads):
                top = strongest == (l, h)
                ax.plot(run.steps, mean[:, l, h], color=colours[h], ls=styles[l], lw=2.6 if top else 1.3,
                        zorder=3 if top else 2)
        if strongest is not None:
            l, h = strongest
            ax.annotate(f"L{l}H{h}", (run.steps[-1], mean[-1, l, h]), xytext=(0, 4), textcoords="offset points",
                        ha="right", va="bottom", fontsize=9, fontweight="bold", color=colours[h])
        if run.thresholds.get(key) is not None:
            ax.axhline(run.thresholds[key], color="0.3", ls="--", lw=1)
        _mark_transition(ax, run.transition, per_seed=False)
        run.shade_clamps(ax)
        lo = min(0.0, float(np.nanmin(mean))) if np.isfinite(mean).any() else 0.0
        hi = max(1.0, float(np.nanmax(mean))) if np.isfinite(mean).any() else 1.0
        ax.set_ylim(lo - 0.03, hi + 0.03)
        ax.set_ylabel("score")
        ax.set_title(f"{_label(key)} per head (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(STEP_LABEL)

    # colour encodes the head index and line style the layer, so the legend stays L + H long
    handles = [Line2D([], [], color=colours[h], lw=2, label=f"head {h}") for h in range(n_heads)]
    handles += [Line2D([], [], color="0.2", ls=styles[l], lw=1.5, label=f"layer {l}") for l in range(n_layers)]
    if any(run.thresholds.get(key) is not None for key in keys):
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1, label="detection threshold"))
    if run.transition and run.transition.detected:
        handles.append(Line2D([], [], color=MARK_COLOUR, ls="--", lw=1.5, label="loss transition midpoint"))
        if run.transition.onset is not None and run.transition.end is not None:
            handles.append(Patch(color=MARK_COLOUR, alpha=0.15, label="loss transition onset–end"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    _clamp_legend(fig, run.clamps)
    fig.suptitle(f"{run.name}: per-head scores over training (bold: strongest head)\n{run.subtitle(65)}",
                 fontsize=12)
    return _save(fig, path)


def _snapshot_columns(att: dict) -> list[int]:
    """Snapshots to show: all if few, else the labelled ones, else evenly spaced."""
    k = len(att["steps"])
    if k <= MAX_ATTENTION_COLUMNS:
        return list(range(k))
    labelled = [i for i, lab in enumerate(att["labels"]) if lab]
    if 0 < len(labelled) <= MAX_ATTENTION_COLUMNS:
        return labelled
    return sorted(set(np.linspace(0, k - 1, MAX_ATTENTION_COLUMNS).round().astype(int).tolist()))


def _outline_repeats(ax, att: dict) -> None:
    """Box, for each later copy, the keys an ideal induction head attends to (previous
    occurrence + 1): the induction stripe runs along each box's diagonal."""
    start, n, reps = att["repeat_start"], att["repeat_len"], att["n_repeats"]
    if None in (start, n, reps):
        return
    for r in range(1, reps):
        q0, k0 = start + r * n, start + (r - 1) * n + 1
        ax.add_patch(Rectangle((k0 - 0.5, q0 - 0.5), n, n, fill=False, ec="cyan", lw=1.0, ls="--"))


def _plot_attention(run: _Run, att: dict, path: Path) -> Path | None:
    _, n_layers, n_heads, _, _ = att["patterns"].shape
    rows = []
    for key, name in (("induction", "strongest induction head"), ("prev_token", "strongest prev-token head")):
        head = run.strongest.get(key)
        if head is None or not (0 <= head[0] < n_layers and 0 <= head[1] < n_heads):
            warnings.warn(f"attention plot: no valid {name} ({head}); row left out")
            continue
        rows.append((name, head))
    if not rows:
        return None
    cols = _snapshot_columns(att)
    size = 2.7
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(size * len(cols) + 1.4, size * len(rows) + 1.0),
                             sharex=True, sharey=True, layout="constrained", squeeze=False)
    # square-root scale: before the phase change weights are spread thin, and a linear scale
    # would show them as uniformly dark; linear attention has signed, unbounded weights instead
    signed = float(np.nanmin(att["patterns"])) < -1e-6
    if signed:
        top = float(np.nanmax(np.abs(att["patterns"]))) or 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top)
    else:
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = None
    for r, (name, (l, h)) in enumerate(rows):
        for c, k in enumerate(cols):
            ax = axes[r, c]
            image = ax.imshow(att["patterns"][k, l, h], norm=norm, cmap="RdBu_r" if signed else SCORE_CMAP,
                              interpolation="nearest")
            _outline_repeats(ax, att)
    for c, k in enumerate(cols):
        label = att["labels"][k] if k < len(att["labels"]) else ""
        step = f"step {int(att['steps'][k])}"
        axes[0, c].set_title(f"{label} ({step})" if label else step, fontsize=10)
        axes[-1, c].set_xlabel("key position", fontsize=10)
    for r, (name, (l, h)) in enumerate(rows):
        axes[r, 0].set_ylabel(f"{name} L{l}H{h}\nquery position", fontsize=10)
    # shared axes: one locator serves every panel; positions are whole tokens
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(6, integer=True))
    axes[0, 0].yaxis.set_major_locator(MaxNLocator(6, integer=True))
    for ax in axes.flat:
        ax.tick_params(labelsize=8)
    if signed:
        fig.colorbar(image, ax=axes, label="attention score (linear attention, signed)", shrink=0.85, pad=0.01)
    else:
        fig.colorbar(image, ax=axes, label="attention weight (square-root scale)", shrink=0.85, pad=0.01,
                     ticks=[0, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0], format="%g")
    note = "; cyan boxes: ideal induction targets on each box's diagonal" if att["repeat_len"] else ""
    fig.suptitle(f"{run.name}: attention on probe sequence 0 (seed 0){note}", fontsize=11)
    return _save(fig, path)


def _position_steps(run: _Run) -> list[tuple[int, str]]:
    """Log indices to draw: first, around the transition, last (evenly spread if none)."""
    steps = run.steps
    nearest = lambda s: int(np.argmin(np.abs(steps - s)))  # noqa: E731
    tr = run.transition
    picks = [(0, "first")]
    if tr and tr.detected and tr.centre is not None:
        for s, what in ((tr.onset, "onset"), (tr.centre, "midpoint"), (tr.end, "end")):
            if s is not None:
                picks.append((nearest(s), what))
    else:
        picks += [(nearest(steps[0] + f * (steps[-1] - steps[0])), "") for f in (0.25, 0.5, 0.75)]
    picks.append((len(steps) - 1, "last"))
    seen, out = set(), []
    for i, what in picks:
        if i not in seen:
            seen.add(i)
            out.append((i, what))
    return sorted(out)


def _plot_loss_by_position(run: _Run, path: Path) -> Path | None:
    lbp = run.metrics.get("loss_by_pos")
    if lbp is None:
        return None   # the task logs no per-position loss (e.g. classification: only the query is scored)
    if lbp.ndim != 3:
        warnings.warn("loss_by_pos missing or not [S][T-1] per record; skipping loss_by_position.png")
        return None
    mean = _seed_mean(lbp)  # (N, T-1)
    positions = np.arange(1, mean.shape[1] + 1)  # entry i is the loss on predicting token i+1
    picks = _position_steps(run)
    colours = plt.get_cmap("plasma")(np.linspace(0.05, 0.85, len(picks)))
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for colour, (i, what) in zip(colours, picks):
        label = f"step {int(run.steps[i])}" + (f" ({what})" if what else "")
        ax.plot(positions, mean[i], color=colour, lw=1.8, label=label)
    ax.set_xlabel("position of predicted token")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"{run.name}: probe loss by position (mean over seeds)\n{run.subtitle()}", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(title="training step", loc="best")
    return _save(fig, path)


def _plot_all_scalars(run: _Run, path: Path) -> Path | None:
    """Every per-seed scalar (and lr) in small multiples, so new metrics show up unasked."""
    panels = list(run.scalars.items())
    if "lr" in run.metrics and run.metrics["lr"].ndim == 1:
        panels.append(("lr", run.metrics["lr"][:, None]))
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.6), sharex=True,
                             layout="constrained", squeeze=False)
    for ax, (key, values) in zip(axes.flat, panels):
        _plot_seeds(ax, run.steps, values, _label(key), "C0")
        _mark_transition(ax, run.transition, band=False, per_seed=False)
        run.shade_clamps(ax)
        ax.set_title(_label(key), fontsize=11)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(panels)]):
        if i + ncols >= len(panels):  # lowest visible panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(STEP_LABEL)
    _clamp_legend(fig, run.clamps)
    fig.suptitle(f"{run.name}: all logged scalars (thin: seeds, thick: mean)\n{run.subtitle()}", fontsize=12)
    return _save(fig, path)


FIGURES = ("loss", "heads_heatmap", "heads_lines", "attention", "loss_by_position", "all_scalars",
           "heads_all_measures")


def plot_run(run_dir, out_dir=None, figures=None) -> list[Path]:
    """Draw the figures the run directory supports into `out_dir` (default `<run_dir>/plots`)
    as `<name>.png` and return the paths written.

    `figures` picks a subset of FIGURES (default: all); ones whose data is missing
    (e.g. attention without attention.npz) are skipped.
    """
    wanted = set(FIGURES if figures is None else figures)
    if wanted - set(FIGURES):
        raise ValueError(f"unknown figures {sorted(wanted - set(FIGURES))}; choose from {FIGURES}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    run = _gather(run_dir)
    attention = _load_attention(run_dir) if "attention" in wanted else None
    main_heads = [k for k in ("induction", "prev_token") if k in run.heads]
    if not main_heads and wanted & {"heads_heatmap", "heads_lines"}:
        warnings.warn("no induction/prev_token measures logged; skipping per-head figures")

    jobs = [  # (name, has the data, draw function)
        ("loss", True, lambda p: _plot_loss(run, p)),
        ("heads_heatmap", bool(main_heads),
         lambda p: _heatmaps(run, main_heads, p, "per-head scores over training", shared_unit=True)),
        ("heads_lines", bool(main_heads), lambda p: _plot_head_lines(run, main_heads, p)),
        ("attention", attention is not None, lambda p: _plot_attention(run, attention, p)),
        ("loss_by_position", True, lambda p: _plot_loss_by_position(run, p)),
        ("all_scalars", True, lambda p: _plot_all_scalars(run, p)),
        ("heads_all_measures", bool(run.heads),
         lambda p: _heatmaps(run, list(run.heads), p, "every per-head measure", shared_unit=False)),
    ]
    written = []
    with plt.rc_context(STYLE):
        for name, available, draw in jobs:
            if name in wanted and available:
                path = draw(out / f"{name}.png")
                if path is not None:  # None: the data turned out unusable (a warning says why)
                    written.append(path)
    return written
