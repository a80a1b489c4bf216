"""`lab-export RUN_DIR --to transformer_lens|safetensors [--step N] [--seed S] [--out DIR]`: a run's
parameters at one checkpoint, for other tools.

- `safetensors`: the raw parameters under the lab's names (`W_E`, `blocks.0.attn.W_Q`, `blocks.0.ln1.scale`,
  ...; the shapes of lab/model/transformer.py), one `seed_<s>.safetensors` per seed.
- `transformer_lens`: `config.json`, the keyword arguments of TransformerLens' `HookedTransformerConfig`
  that make a `HookedTransformer` compute the lab's function, and one `seed_<s>.safetensors` per seed
  holding its state dict under TransformerLens' names (`embed.W_E`, `blocks.0.attn.W_Q` as
  [n_heads, d_model, d_head], ...), zeros for the biases the lab does not have.

Both write `export.json` (the run, step, seeds, format and files) and a short README.md saying how to
load them. Models TransformerLens cannot express (linear attention, smeared keys, a ReLU readout in
place of the unembedding, continuous item inputs) are refused with one line naming the feature.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf
from safetensors.numpy import save_file

from lab.core import RunLoadError
from lab.model.transformer import LN_EPS, sinusoidal_table
from lab.rundir import checkpoint_steps, load_run_config, run_dir_problem
from lab.train.restore import load_run

FORMATS = ("transformer_lens", "safetensors")
EXPORT_VERSION = 1


def model_problem(model_cfg, feature_dim: int = 0) -> Optional[str]:
    """Why TransformerLens cannot compute this model's function (the feature, with the key that sets
    it), or None. `model_cfg` is the run's `model` section (a dict or a config)."""
    get = model_cfg.get
    if get("attention", "softmax") != "softmax":
        return (f"linear attention (model.attention={get('attention')}): TransformerLens' attention is a "
                "softmax over the scores")
    if get("readout_hidden"):
        return (f"a ReLU readout MLP in place of the unembedding (model.readout_hidden={get('readout_hidden')}): "
                "TransformerLens unembeds linearly")
    if get("smeared_keys", False):
        return ("smeared keys (model.smeared_keys=true: each key mixed with the previous position's by a learned "
                "per-head weight, Olsson et al. 2022): TransformerLens' attention has no smeared keys")
    if get("pos_embed", "learned") == "relative":
        return ("relative positions (model.pos_embed=relative: a learned key vector per offset i - j added to "
                "the scores, Shaw et al. 2018): TransformerLens has no relative-position attention")
    if get("pos_embed", "learned") not in ("learned", "sinusoidal", "rope", "none"):
        return f"positional embedding {get('pos_embed')!r} (model.pos_embed)"
    if feature_dim:
        return (f"continuous item inputs projected into the residual stream by W_F (the task's {feature_dim}-dim "
                "features): TransformerLens' input is tokens only")
    return None


def flat_params(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """One seed's parameters as {dotted lab name: float32 array}, e.g. `blocks.0.attn.W_Q`."""
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        elif value is not None:
            out[name] = np.ascontiguousarray(np.asarray(value, np.float32))
    return out


def transformer_lens_config(model, task, name: str) -> dict:
    """`HookedTransformerConfig(**this)` builds a HookedTransformer computing the lab model's function."""
    c = model.cfg
    d_head = c.d_head or c.d_model // c.n_heads
    out = {
        "model_name": name,
        "n_layers": c.n_layers, "d_model": c.d_model, "d_head": d_head, "n_heads": c.n_heads,
        "d_mlp": None if c.attn_only else (c.d_mlp or 4 * c.d_model),
        "d_vocab": model.vocab_size, "d_vocab_out": model.n_outputs, "n_ctx": model.seq_len,
        "act_fn": "gelu_new",                     # jax.nn.gelu's default: the tanh approximation
        "attn_only": bool(c.attn_only),
        "normalization_type": "LN" if c.layer_norm else None, "eps": LN_EPS,
        "use_attn_scale": bool(c.attn_scale),     # scores / sqrt(d_head), TransformerLens' default attn_scale
        "attention_dir": "causal",
        "positional_embedding_type": "rotary" if c.pos_embed == "rope" else "standard",
        "default_prepend_bos": False,             # the lab's tokens carry the task's own BOS (if any)
        "init_weights": False,                    # every weight comes from the state dict
    }
    if c.pos_embed == "rope":   # the lab rotates adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/d_head)
        out.update(rotary_dim=d_head, rotary_base=c.rope_base, rotary_adjacent_pairs=True)
    return out


def transformer_lens_state_dict(model, params: dict) -> dict[str, np.ndarray]:
    """One seed's parameters under TransformerLens' names and shapes (HookedTransformer.state_dict())."""
    c, p = model.cfg, params
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))   # noqa: E731
    D, H = c.d_model, c.n_heads
    E = c.d_head or D // H
    sd = {"embed.W_E": f32(p["W_E"])}
    if c.pos_embed == "learned":
        sd["pos_embed.W_pos"] = f32(p["W_pos"])
    elif c.pos_embed == "sinusoidal":
        sd["pos_embed.W_pos"] = f32(sinusoidal_table(model.seq_len, D))
    elif c.pos_embed == "none":
        sd["pos_embed.W_pos"] = np.zeros((model.seq_len, D), np.float32)
    for l in range(c.n_layers):
        b, pre = p["blocks"][l], f"blocks.{l}."
        if c.layer_norm:
            sd[pre + "ln1.w"], sd[pre + "ln1.b"] = f32(b["ln1"]["scale"]), f32(b["ln1"]["bias"])
        for x in "QKV":   # the lab's (d_model, head, d_head) -> (head, d_model, d_head)
            sd[pre + f"attn.W_{x}"] = f32(np.transpose(np.asarray(b["attn"][f"W_{x}"]), (1, 0, 2)))
            sd[pre + f"attn.b_{x}"] = np.zeros((H, E), np.float32)
        sd[pre + "attn.W_O"] = f32(b["attn"]["W_O"])    # (head, d_head, d_model) in both
        sd[pre + "attn.b_O"] = np.zeros(D, np.float32)
        if not c.attn_only:
            if c.layer_norm:
                sd[pre + "ln2.w"], sd[pre + "ln2.b"] = f32(b["ln2"]["scale"]), f32(b["ln2"]["bias"])
            for k in ("W_in", "b_in", "W_out", "b_out"):
                sd[pre + f"mlp.{k}"] = f32(b["mlp"][k])
    if c.layer_norm:
        sd["ln_final.w"], sd["ln_final.b"] = f32(p["ln_final"]["scale"]), f32(p["ln_final"]["bias"])
    sd["unembed.W_U"] = f32(p["W_U"])
    sd["unembed.b_U"] = np.zeros(model.n_outputs, np.float32)
    return sd


def bos_token(task) -> Optional[int]:
    """The task's BOS id, where it has one: the tasks put BOS at position 0 as the last id of the vocabulary."""
    return task.model_vocab_size - 1 if getattr(task, "bos", False) else None


_README = """# Step {step} of {run_dir}

Written by `lab-export --to {to}` from induction-lab. `export.json` names the run, step and seeds.
Tokens are the lab's ids (vocabulary {d_vocab}{bos}); no BOS is prepended for you.
{how}
"""

_HOW = {
    "safetensors": """The lab's raw parameters under the lab's names, one file per seed:

```python
from safetensors.numpy import load_file
params = load_file("seed_{seed}.safetensors")   # {{"W_E": ..., "blocks.0.attn.W_Q": (d_model, head, d_head), ...}}
```
""",
    "transformer_lens": """A TransformerLens (3.x) HookedTransformer: config.json, and a state dict per seed:

```python
import json
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
model = HookedTransformer(HookedTransformerConfig(**json.load(open("config.json"))))
model.load_state_dict(load_file("seed_{seed}.safetensors"), strict=False)   # strict=False: buffers (mask, IGNORE)
model.eval()
logits, cache = model.run_with_cache(tokens)   # tokens: a (batch, pos) LongTensor of the lab's ids
```

Do not fold or centre the weights on load (`from_pretrained`'s fold_ln etc. do not apply): they are
the lab's weights as they are.
""",
}


def export_run(run_dir, to: str, step: Optional[int] = None, seed: Optional[int] = None, out=None) -> list[Path]:
    """Export a run directory's checkpoint (`step`, default the newest) as `to` (one of FORMATS), every
    seed or seed *value* `seed`, into `out` (default RUN_DIR/export/<to>-step<N>); returns the files
    written. Raises RunLoadError for a run, step, seed or model it cannot export."""

    if to not in FORMATS:
        raise RunLoadError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    run = load_run(run_dir, step)
    seeds = run.seeds if seed is None else [run.seeds[run.seed_index(seed)]]
    if to == "transformer_lens":
        problem = model_problem(run.cfg.model, getattr(run.task, "feature_dim", 0))
        if problem:
            raise RunLoadError(f"cannot export {run_dir} to TransformerLens: it has {problem}; "
                               "--to safetensors exports the raw parameters")
    out = Path(out) if out is not None else run_dir / "export" / f"{to}-step{run.step}"
    out.mkdir(parents=True, exist_ok=True)
    name = f"induction-lab {run_dir.resolve().name} step {run.step}"
    written = []
    files = {}
    for s in seeds:
        params = run.seed_params(run.seed_index(s))
        tensors = flat_params(params) if to == "safetensors" else transformer_lens_state_dict(run.model, params)
        path = out / f"seed_{s}.safetensors"
        save_file(tensors, str(path), metadata={"run_dir": str(run_dir.resolve()), "step": str(run.step),
                                                "seed": str(s), "format": to, "names": "lab" if to == "safetensors"
                                                else "transformer_lens"})
        written.append(path)
        files[str(s)] = path.name
    record = {"export_version": EXPORT_VERSION, "format": to, "run_dir": str(run_dir.resolve()), "step": run.step,
              "seeds": seeds, "files": files, "task": run.cfg.task.name, "bos_token": bos_token(run.task),
              "d_vocab": run.model.vocab_size, "seq_len": run.model.seq_len}
    if to == "transformer_lens":
        config = transformer_lens_config(run.model, run.task, name)
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        written.append(out / "config.json")
        record["config"] = "config.json"
    record["lab_model"] = OmegaConf.to_container(run.cfg.model, resolve=True)
    (out / "export.json").write_text(json.dumps(record, indent=1) + "\n")
    bos = record["bos_token"]
    (out / "README.md").write_text(_README.format(
        step=run.step, run_dir=run_dir.resolve(), to=to, d_vocab=run.model.vocab_size,
        bos=f", BOS = {bos} at position 0" if bos is not None else "",
        how=_HOW[to].format(seed=seeds[0])))
    return written + [out / "export.json", out / "README.md"]


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-export",
        description="Export a run's parameters at one checkpoint: the raw parameters (safetensors) or a "
                    "TransformerLens HookedTransformer (config.json + state dict).")
    parser.add_argument("run_dir", type=Path, help="a run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--seed", type=int, default=None, help="seed value to export (default: every seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default RUN_DIR/export/<format>-step<N>)")
    args = parser.parse_args(argv)

    problem = run_dir_problem(args.run_dir)   # before JAX starts: quick, clean refusals
    if problem:
        _fail(problem, 2)
    try:
        config = load_run_config(args.run_dir, strict=True)
    except RunLoadError as e:
        _fail(str(e), 2)
    steps = checkpoint_steps(args.run_dir)
    if args.step is not None and args.step not in steps:
        _fail(f"no checkpoint at step {args.step} in {args.run_dir / 'checkpoints'}; available steps: "
              f"{', '.join(map(str, steps))} (--step one of them, or leave it out for the newest)", 2)
    train = config["train"]
    seeds = list(range(train.get("seed", 0), train.get("seed", 0) + train.get("seeds", 1)))
    if args.seed is not None and args.seed not in seeds:
        _fail(f"the run has no seed {args.seed}; its seeds are {', '.join(map(str, seeds))} "
              "(--seed one of them, or leave it out for all)", 2)
    if args.to == "transformer_lens":
        problem = model_problem(config["model"])
        if problem:
            _fail(f"cannot export {args.run_dir} to TransformerLens: it has {problem}; "
                  "--to safetensors exports the raw parameters", 2)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        _fail(f"cannot write the export to {args.out}: it is a file, not a directory; choose another --out", 2)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        paths = export_run(args.run_dir, args.to, args.step, args.seed, args.out)
    except RunLoadError as e:
        _fail(str(e), 2)
    except OSError as e:   # an unwritable --out, a full disk
        _fail(f"cannot write the export: {e.strerror or e} ({getattr(e, 'filename', '') or args.out}); "
              "choose another --out or free some space", 1)
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
