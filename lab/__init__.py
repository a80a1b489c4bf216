"""induction-lab: train toy transformers on synthetic data and watch induction heads form.

    import lab
    cfg = lab.load_config(["model.n_layers=2", "train.steps=2000"])
    result = lab.run(cfg)                     # or lab.run(cfg, "runs/my-run") to write files
    logits, cache = result.run_with_cache(names=["blocks.*.attn.pattern"])
    run = lab.load_run("outputs/<date>/<time>", step=500)   # a run directory at one of its checkpoints

The layers and what each may import: ARCHITECTURE.md. Attributes are imported lazily, so that
`import lab` stays cheap and the command-line entry points can set XLA's flags first.
"""
__all__ = ["run", "load_config", "RunResult", "Trainer", "Model", "load_run", "LoadedRun", "Intervention",
           "export_run"]

_HOMES = {"run": "lab.app.run", "load_config": "lab.config.compose", "RunResult": "lab.train.trainer",
          "Trainer": "lab.train.trainer", "Model": "lab.model.transformer", "load_run": "lab.train.restore",
          "LoadedRun": "lab.train.restore", "Intervention": "lab.model.hooks", "export_run": "lab.app.export"}


def __getattr__(name):
    if name in _HOMES:
        import importlib
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
