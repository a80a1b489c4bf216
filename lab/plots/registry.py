"""Figure registries: each figure's name, caption and drawing function in one place, so that adding a
run or sweep figure is one decorated function (lab/plots/run.py `@run_figure`, lab/plots/sweep.py
`@sweep_figure`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Figure:
    """A registered figure: `draw(subject, path)` writes `<name>.png` and returns its path, or None
    when the subject (a run, a sweep) lacks what it shows; `caption` says in one sentence what it shows;
    `cost` is its drawing time relative to the others' (seconds on the default run, 2 cores), so that
    figures drawn side by side (lab/plots/parallel.py) start with the slowest and finish together."""

    name: str
    caption: str
    draw: Callable[..., Path | None]
    cost: float = 0.5


def figure_decorator(registry: dict, kind: str) -> Callable:
    """The decorator `@<kind>_figure(name, caption, cost=...)` that adds figures to `registry` (name ->
    Figure), in the order they are defined."""
    def figure(name: str, caption: str, cost: float = 0.5):
        def register(draw: Callable) -> Callable:
            if name in registry:
                raise ValueError(f"{kind} figure {name!r} is registered twice")
            registry[name] = Figure(name, caption, draw, cost)
            return draw
        return register
    return figure
