"""What every task gives the rest of the lab. A task is a frozen dataclass built from its config
node; the trainer, clamps, summary and plots talk to it only through this interface, so a new task
is one module in lab/tasks/ (found automatically) plus a config in configs/task/.

A task module defines:
  - `Config`: its structured-config dataclass (subclass of `lab.config.schema.TaskConfig`), stored in Hydra's
    ConfigStore as `schema_<name>`;
  - `Task`: a subclass of `Task` below;
  - optionally `validate(cfg)`: cross-key checks that raise `lab.core.ConfigError` with one line.

A batch is any NamedTuple with `tokens` (B, T) int32, the ids the model embeds; tasks with continuous
items add `features` (B, T, feature_dim), projected by the model and added to the token embedding.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax

from lab.measures.losses import icl_positions, icl_score, token_losses

# XLA options for a program that runs once (the probe): no LLVM optimisation, a quarter of the compile time
RUN_ONCE = {"xla_backend_optimization_level": 0}


# forward(batch, cache_names) -> (logits, cache): the model's pass with this run's eval clamps applied
Forward = Callable


class TrainedCheck(NamedTuple):
    """How summary.json decides whether a run trained at all (`Task.trained_check`)."""
    metric: str         # the logged per-seed metric judged at the last log step
    chance: float       # its value for a model that has learned nothing (the uniform prediction's loss)
    chance_text: str    # how `chance` is computed, for the verdict, e.g. "ln 64"
    bar: float          # a seed trained if its final `metric` is below this


class Task:
    """Defaults are those of a next-token task over `vocab_size` token ids."""

    name: str = ""
    # The scalar whose fall is "the" phase change of this task (summary.json, loss plot, clamped
    # loss); `chance_loss` scales its detection threshold. `main_accuracy` is its accuracy.
    main_metric: str = "loss"
    main_accuracy: str = "acc"
    main_metric_label: str = "loss"
    # Per-head (L, H) measures whose rise is detected per head: summary group -> metric key.
    # The plots show the first two (as "induction" and "previous-token" style scores).
    head_scores: dict = {"induction": "induction", "prev_token": "prev_token_corrected"}
    feature_dim: int = 0          # > 0: batches carry `features` (B, T, feature_dim)
    # Reference predictors' losses logged as scalars, drawn dotted next to the main loss: key -> label
    baselines: dict = {}
    trajectory_kind: str = "log-probability of the next token at every position"   # what trajectory_outputs holds
    # Whether its measures log Olsson et al.'s `icl_score` (next-token loss at a late position minus at
    # an early one, over every sequence); then `icl_score` computes it for any logits (lab-ablate).
    logs_icl_score: bool = False

    @classmethod
    def from_config(cls, cfg) -> "Task":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})

    # ---- what the model needs ----
    @property
    def model_vocab_size(self) -> int:
        """Token ids the model embeds."""
        raise NotImplementedError

    @property
    def n_outputs(self) -> int:
        """Width of the model's output (logits over the vocabulary unless the task says otherwise)."""
        return self.model_vocab_size

    @property
    def chance_loss(self) -> float:
        return math.log(self.n_outputs)

    @property
    def chance_text(self) -> str:
        """How `chance_loss` is computed, for messages: "ln <outputs>" by default."""
        return f"ln {self.n_outputs}"

    def trained_check(self) -> TrainedCheck:
        """Whether a run trained at all (summary.json's "trained"; a run that did not gets a verdict
        "did not train" and no phase-change claims). Default: the main metric must end 5 % of
        chance_loss below it (experiments/common.py's `trained`). A task whose main metric stays at its
        chance level until the in-context circuit forms, while the rest of the model learns (e.g. the
        loss on repeated triggers), judges a metric that falls as soon as anything is learned."""
        return TrainedCheck(self.main_metric, self.chance_loss, self.chance_text, 0.95 * self.chance_loss)

    def phase_threshold(self, phase_cfg) -> tuple[float, float]:
        """(threshold, minimum drop) for detecting the main metric's phase change. Default: fractions
        (measures.phase.loss_threshold_frac, loss_min_drop_frac) of the chance loss; a task whose
        solved loss is far from 0 (e.g. in-context Markov chains) scales between its own baselines."""
        return phase_cfg.loss_threshold_frac * self.chance_loss, phase_cfg.loss_min_drop_frac * self.chance_loss

    def head_formed(self, scores, phase_cfg) -> bool | None:
        """Whether a head formed, judged from one seed's curve of its induction score (numpy, over the
        log steps), or None to use summary.json's general rule: a detected rise (after a plateau, or an
        abrupt sigmoid) that crosses measures.phase.score_threshold. A task whose induction measure is
        zero until a head forms (a baseline-corrected score) can judge the level reached instead."""
        return None

    def phase_curve(self, values):
        """The main metric's curve (per seed, numpy) as phase detection fits it. Default: as logged;
        a task whose loss falls in two stages (e.g. to "any label in context", then to the right
        one) can cut the first stage off so the sigmoid fits the transition that matters."""
        return values

    # ---- data ----
    def sample(self, key: jax.Array, batch_size: int):
        raise NotImplementedError

    def probe(self, compiled=None):
        """The fixed batch the measures are evaluated on (same for every seed and run). `compiled(name,
        jitted)`: how its program is compiled (lab-train's program cache, lab/train/programs.py).
        The program runs once, so LLVM does not optimise it: it compiles in 0.19 s instead of 0.86 s for the
        induction task on a 2-core CPU. Integer draws are bit for bit the same; float draws may differ from
        an optimised compile in the last bit (fused multiply-adds), as they may between two XLA versions.
        Called while a program is traced, it is traced into that program."""
        key = jax.random.PRNGKey(self.probe_seed)
        if isinstance(key, jax.core.Tracer):   # compiler options are for a program of its own only
            return self.sample(key, self.probe_size)
        fn = jax.jit(lambda key: self.sample(key, self.probe_size), compiler_options=RUN_ONCE)
        return (compiled("probe", fn) if compiled else fn)(key)

    # ---- training ----
    def loss(self, logits: jax.Array, batch) -> jax.Array:
        """The training loss (scalar). Default: next-token cross-entropy at every position."""
        return token_losses(logits, batch.tokens).mean()

    def main_scores(self, logits: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
        """(main_metric, main_accuracy) of `logits` on `batch`: also the loss under an
        `apply: measure` clamp and the loss lab-ablate reports."""
        raise NotImplementedError

    def icl_score(self, logits: jax.Array, batch, measures_cfg):
        """The in-context-learning score of `logits` on `batch` as the measures log it (the mean
        next-token loss at position measures.icl_late minus at measures.icl_early), or None for a task
        that logs none (logs_icl_score false). lab-ablate reports it under each head ablation."""
        if not self.logs_icl_score:
            return None
        early, late = icl_positions(self.seq_len, measures_cfg.icl_early, measures_cfg.icl_late)
        return icl_score(token_losses(logits, batch.tokens).mean(0), early, late)

    # ---- measures ----
    def measures(self, model, params, probe, forward: Forward, measures_cfg, snapshot: bool) -> dict:
        """Every progress measure of one seed on the probe: scalars, (T-1,) curves, (L, H) per-head
        arrays, and with `snapshot` the probe-0 attention (L, H, T, T) under "attention"."""
        raise NotImplementedError

    def trajectory_outputs(self, logits: jax.Array, batch) -> jax.Array:
        """The model's outputs whose path over training essential dynamics follows (a flat vector):
        by default the log-probability of the correct next token at every position (a per-token
        loss, as in Olsson et al.'s per-token loss PCA; full logits would be V times larger)."""
        return -token_losses(logits, batch.tokens).reshape(-1)

    def induction_attention(self, batch) -> tuple[jax.Array, jax.Array]:
        """Where an ideal induction head attends: (B, T, T) weights over keys and (B, T) rows that
        have a target. The `induction` clamp value is built from this."""
        raise NotImplementedError(f"task {self.name!r} defines no ideal induction pattern")

    def copy_keys(self, batch) -> Optional[jax.Array]:
        """(B, T) bool: the keys a `perfect_copy` clamp reads its head's attention over (renormalised
        over them); None: every key."""
        return None

    def snapshot_info(self, probe) -> dict:
        """Extra fields saved with the attention snapshots of probe sequence 0 (for plot overlays)."""
        return {"tokens": probe.tokens[0]}
