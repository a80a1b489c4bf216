"""Structured-config schemas: every config group has a dataclass, so Hydra rejects an unknown key or a
wrong type at startup, naming the key. The bottom layer of the config: the tasks extend `TaskConfig`
here, and `lab.config.compose` (above the tasks) stores, composes and cross-checks them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class TaskConfig:
    """Every task's config extends this; the tasks' own schemas live in their modules (lab/tasks/)."""
    name: str = MISSING
    seq_len: int = 64          # tokens per sequence, BOS included
    probe_size: int = 64       # fixed probe batch the measures are computed on
    probe_seed: int = 12345


@dataclass
class ModelConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: Optional[int] = None      # default d_model // n_heads
    attn_only: bool = True
    d_mlp: Optional[int] = None       # default 4 * d_model
    layer_norm: bool = True           # pre-LayerNorm in each block and before the unembedding
    pos_embed: str = "learned"        # learned | sinusoidal | rope | relative (Shaw et al.: learned per-offset key vectors in each layer) | none
    rope_base: float = 10000.0
    init_std: float = 0.02
    attention: str = "softmax"        # softmax | linear (von Oswald et al.'s linear self-attention: no softmax)
    attn_scale: bool = True           # scores / sqrt(d_head); Reddy (2024)'s network has no scaling
    readout_hidden: Optional[int] = None  # a ReLU MLP of this width replaces the unembedding (Reddy's classifier)
    fused_attention: bool = True      # softmax attention with a hand-written backward when no hook reads the pattern
    smeared_keys: bool = False        # Olsson et al. 2022: each key mixed with the previous position's by a learned per-head sigma(alpha_h)
    attn_mask: str = "causal"         # causal | context: every position attends to the context (all but the last position), not itself if last; von Oswald et al.'s linear self-attention
    readout_layers: int = 1           # ReLU layers of the readout MLP (with readout_hidden); Reddy's classifier has 3
    readout_init: str = "normal"      # normal: N(0, init_std²) | he: ReLU layers N(0, 2/fan_in), output N(0, 1/fan_in) (Reddy's code)


@dataclass
class OptimConfig:
    name: str = "adam"                # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0         # adamw: decoupled, times the lr (optax.adamw); sgd: w <- (1 - wd) w - lr g each step (Reddy's code); not for adam
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.0             # sgd only
    schedule: str = "constant"        # constant | warmup_cosine | warmup_rsqrt
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0         # warmup_cosine: final lr / peak lr
    grad_clip: Optional[float] = None # global-norm clipping; null disables


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    seed: int = 0                     # first seed; seeds run are seed .. seed + seeds - 1
    seeds: int = 1                    # independent seeds trained as one compiled program
    microbatch: Optional[int] = None  # sequences per gradient pass (must divide batch_size); null: automatic (see lab/train/trainer.py)
    seed_axis: str = "auto"           # vmap | map | auto (vmap on GPU/TPU; map, i.e. a loop inside the program, on CPU)
    log_every: int = 25               # steps per compiled chunk; measures are logged after each
    checkpoint_every: int = 1000      # 0 disables periodic checkpoints (the final one is always written)
    keep_checkpoints: int = 2         # the newest periodic/final checkpoints kept (for resuming); grid and transition ones are never pruned
    checkpoint_log_points: int = 0    # a grid of this many steps log-spaced in [1, steps] (Hoogland et al.), each kept for good; 0: none
    checkpoint_linear_points: int = 0  # ... plus this many evenly spaced; grid steps snap up to the next log step
    checkpoints_around_transition: int = 8  # at most this many kept for good around each transition of the main metric seen online (lab/train/schedule.py); 0: none
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False               # also log to Weights & Biases (pip install 'induction-lab[wandb]')
    wandb_mode: str = "offline"       # offline (files under the run directory; `wandb sync` uploads) | online | disabled
    wandb_project: str = "induction-lab"
    on_nonfinite: str = "stop"        # stop: a NaN/inf loss or gradient fails the run | skip: drop that update, count it
    xla_cpu_threads: str = "single"   # single | multi: XLA's CPU threading (tiny models run faster single)
    gpus_per_job: Optional[int] = None  # on a multi-GPU node: GPUs each job claims; null: 1 per multirun job, all for a single run (CUDA_VISIBLE_DEVICES, e.g. SLURM's, wins)
    compile_cache: Optional[str] = "~/.cache/induction-lab/jax"  # persistent compile cache (XLA's, and lab-train's whole programs in programs/: lab/train/programs.py); null disables both


@dataclass
class PhaseConfig:
    smooth: int = 5                   # moving-average window (log points) for threshold and steepest change
    loss_threshold_frac: float = 0.5  # repeat-loss threshold = frac * ln(vocab_size), the chance loss
    loss_min_drop_frac: float = 0.3   # a loss phase change must drop >= frac * chance loss
    score_threshold: float = 0.4      # induction / previous-token score threshold
    score_min_rise: float = 0.2       # a score phase change must rise by >= this
    min_r2: float = 0.8               # sigmoid fit quality needed to call it a phase change
    max_width_frac: float = 0.35      # 10-90 % of the transition must span < this fraction of the run
    stage_min_change_frac: float = 0.5  # a stage's transition must move >= this x the phase change's minimum
    stage_penalty: float = 10.0       # change points (stages): cost of one more bend, x noise variance x log n


@dataclass
class LLCConfig:
    """The local learning coefficient (lab/measures/llc.py): online every `every` steps, or offline with lab-llc."""
    every: int = 0                    # 0: off; else estimated at step 0 and at the first log step at or after each multiple
    chains: int = 4                   # SGLD chains per estimate (a batch axis of one program)
    draws: int = 30                   # SGLD steps per chain kept for the estimate
    burn_in: int = 15                 # SGLD steps first dropped
    step_size: float = 1e-3           # ε
    localization: float = 100.0       # γ: pull towards the estimate's centre w*
    nbeta: Optional[float] = None     # nβ; null: batch_size / log(batch_size)
    batch_size: int = 16              # sequences per SGLD step (a fresh batch each step)
    precondition: str = "none"        # none | rmsprop (pSGLD)
    alpha: float = 0.999              # rmsprop: decay of the squared-drift average
    eps: float = 0.1                  # rmsprop: floor added to its square root
    baseline: str = "paired"          # paired: L(w*) on each draw's own batch | init: on the first batch (devinterp)
    settle_tol: float = 0.2           # "not settled": the chains' loss drifts more than this x the estimate late in the draws


@dataclass
class MeasuresConfig:
    enabled: bool = True
    icl_early: Optional[int] = None   # defaults scale Olsson's tokens 50 and 500 of 512 to seq_len
    icl_late: Optional[int] = None
    attention_snapshots: bool = True  # keep probe-0 attention per log step to plot before/after
    outputs: int = 16                 # essential dynamics: the task's outputs on this many probe sequences per log step (outputs.npz); 0: off
    llc: LLCConfig = field(default_factory=LLCConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class ClampConfig:
    """One clamp ("artificial optogenetics"): fix an activation to a value for a window of steps.
    Applied as where(mask, s*value + (1-s)*x, x) with s from the strength schedule; see lab/clamps/."""
    site: str = MISSING               # hook site, globs allowed: blocks.0.attn.pattern, blocks.*.attn.z, logits
    value: str = MISSING              # prev_token | induction | zero | mean | resample | preserve | graft | perfect_copy | scale | embed | prev_token_key
    heads: Any = None                 # null: every head; a list of head indices; "auto": chosen from the measures
    layers: Optional[List[int]] = None   # keep only these layers of a glob site
    batch: Optional[List[int]] = None    # batch items touched; null: all
    queries: Optional[List[int]] = None  # query positions (positions, for sites without a key axis); negatives count from the end
    keys: Optional[List[int]] = None     # key positions (pattern and scores sites only)
    start: int = 0                    # window [start, stop) in training steps
    stop: Optional[int] = None        # null: to the end of training
    strength: float = 1.0             # peak blend s between the value (1) and the model's own activation (0)
    schedule: str = "constant"        # constant | linear | cosine (ramp up over ramp_steps) | release (ramp down to stop)
    ramp_steps: int = 0
    pattern_strength: float = 1.0     # ideal patterns: weight on the target key; the rest stays on the query itself
    factor: float = 1.0               # scale: the activation is multiplied by this
    apply: str = "both"               # train | eval (measures only) | both | measure (logged as extra metrics only)
    grad: bool = False                # mean / resample / preserve: let gradients flow through the clean pass
    source: Optional[str] = None      # graft, or heads=auto: a run directory whose checkpoint supplies the values/heads
    source_step: Optional[int] = None # that run's checkpoint step; null: its newest
    copy_from: Optional[str] = None   # perfect_copy: the head, e.g. L1H0, whose attention builds the logits; auto: per seed (as heads: auto, last layer)
    group: Optional[str] = None       # apply: measure clamps sharing a group are applied together, logged as <metric>_clamped_<group>
    auto_k: int = 1                   # heads=auto: heads chosen per seed
    auto_step: Optional[int] = None   # heads=auto without source: choose from the measures logged at this step (default: start)
    auto_measure: Optional[str] = None  # heads=auto: rank by this per-head measure (default: by value kind)


@dataclass
class Config:
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = MISSING
    measures: MeasuresConfig = MISSING
    clamps: Dict[str, Any] = field(default_factory=dict)   # named ClampConfigs (checked by validate); presets in clamp/
