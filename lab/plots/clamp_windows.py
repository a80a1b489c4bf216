"""Clamp windows: a run's `clamps:` (config.yaml) resolved to the training steps each covers
(`ClampWindow`, `clamp_windows`), and how the figures draw them: shaded bands behind the curves
(`shade_clamps`), their legend (`clamp_legend`) and a one-line title note (`clamp_note`).

Training clamps get a filled band (a ramp as an alpha gradient), eval-only ones a dashed outline;
measure-only clamps are drawn as their logged `<metric>_clamped_<name>` curves, not as bands.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch, Rectangle

# One hue per clamp, in config order: a light band (the hue at low alpha) behind the curves, and the
# full hue for its "loss under clamp" line. Green is left out: the accuracy curve is green.
CLAMP_COLOURS = ["tab:purple", "tab:olive", "tab:cyan", "tab:pink", "tab:brown", "tab:gray", "gold", "navy"]
CLAMP_ALPHA = 0.17
RAMP_SCHEDULES = ("linear", "cosine", "release")
RAMP_BANDS = 8                          # sub-bands that draw a ramp as an alpha gradient
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


def clamp_note(windows: list[ClampWindow], width: int = 90) -> str:
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


def shade_clamps(ax, windows: list[ClampWindow], x_range: tuple[float, float], label: bool = False,
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


def clamp_legend(fig, windows: list[ClampWindow]) -> None:
    """A legend below the panels for the windows shade_clamps draws (its labels are long)."""
    handles = clamp_handles(windows)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncols=1, frameon=False)


def clamp_handles(windows: list[ClampWindow]) -> list:
    """The legend entries of the windows shade_clamps draws, for a figure that has one legend below."""
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
    return handles
