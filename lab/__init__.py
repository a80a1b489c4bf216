"""induction-lab: train toy transformers on synthetic data and watch induction heads form.

    import lab
    cfg = lab.load_config(["model.n_layers=2", "train.steps=2000"])
    result = lab.run(cfg)                     # or lab.run(cfg, "runs/my-run") to write files
    logits, cache = result.run_with_cache(names=["blocks.*.attn.pattern"])

The layers and what each may import: ARCHITECTURE.md. Attributes are imported lazily, so that
`import lab` stays cheap and the command-line entry points can set XLA's flags first.
"""
__all__ = ["run", "load_config", "RunResult", "Trainer", "Model"]

_HOMES = {"run": "lab.app.run", "load_config": "lab.config.compose", "RunResult": "lab.train.trainer",
          "Trainer": "lab.train.trainer", "Model": "lab.model.transformer"}


def __getattr__(name):
    if name in _HOMES:
        import importlib
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
