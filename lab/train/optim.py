"""Optax optimisers and learning-rate schedules from the `optim` config group."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    lr, warm = cfg.lr, cfg.warmup_steps
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr) if warm == 0 else optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(total_steps, warm + 1),
                                                  end_value=lr * cfg.min_lr_ratio)
    if cfg.schedule == "warmup_rsqrt":
        # linear warmup, then lr * sqrt(warm / step) (the Transformer's inverse square root decay)
        w = max(warm, 1)
        return lambda step: lr * jnp.minimum((step + 1) / w, jnp.sqrt(w / (step + 1)))
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not known")


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    elif cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None)
        if cfg.weight_decay:
            # Reddy's per-step decay w <- (1 - wd) w - lr g, whatever the lr: added after sgd's -lr scaling
            opt = optax.chain(opt, optax.add_decayed_weights(-cfg.weight_decay))
    else:
        raise ValueError(f"optim.name={cfg.name!r} is not known")
    if cfg.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule
