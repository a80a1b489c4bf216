"""induction-lab: train toy transformers on synthetic data and watch induction heads form.

    import lab
    cfg = lab.load_config(["model.n_layers=2", "train.steps=2000"])
    result = lab.run(cfg)                     # or lab.run(cfg, "runs/my-run") to write files
    logits, cache = result.run_with_cache(names=["blocks.*.attn.pattern"])

Attributes are imported lazily so that `lab.cli` can set XLA flags before JAX starts.
"""
__all__ = ["run", "load_config", "RunResult", "Trainer", "Model"]


def __getattr__(name):
    if name in ("run", "load_config"):
        from lab import runner as _run
        return getattr(_run, name)
    if name in ("RunResult", "Trainer"):
        from lab import train
        return getattr(train, name)
    if name == "Model":
        from lab.model import Model
        return Model
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
