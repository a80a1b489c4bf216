"""Run by tests/test_export.py in .venv-peers (torch + TransformerLens; `make setup-peers`), never by
pytest itself: loads a `lab-export --to transformer_lens` directory into a HookedTransformer, runs it on
the tokens the lab ran, and prints one JSON line: for the logits and every cached site the lab wrote
(under TransformerLens' names), the largest absolute difference and the largest absolute value.

    python tests/tl_peer_check.py EXPORT_DIR SEED LAB.npz
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig


def main(export_dir: str, seed: str, lab_npz: str) -> None:
    export_dir = Path(export_dir)
    cfg = HookedTransformerConfig(**json.loads((export_dir / "config.json").read_text()), device="cpu")
    model = HookedTransformer(cfg)
    state = load_file(str(export_dir / f"seed_{seed}.safetensors"))
    result = model.load_state_dict(state, strict=False)
    model.eval()
    model.set_use_attn_result(True)   # hook_result: the per-head outputs
    lab = np.load(lab_npz)
    tokens = torch.from_numpy(lab["tokens"].astype(np.int64))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    out = {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys),
           "buffers": sorted(n for n, _ in model.named_buffers()), "sites": {}}
    for name in lab.files:
        if name == "tokens":
            continue
        ours = logits.numpy() if name == "logits" else cache[name].numpy() if name in cache.cache_dict else None
        if ours is None:
            out["sites"][name] = None
            continue
        theirs = np.broadcast_to(lab[name], ours.shape)
        if name.endswith("hook_attn_scores"):   # masked entries: -inf in TransformerLens, -1e30 in the lab
            keep = np.isfinite(ours) & (theirs > -1e29)
            assert np.array_equal(np.isfinite(ours), theirs > -1e29), "the causal masks differ"
            ours, theirs = ours[keep], theirs[keep]
        out["sites"][name] = {"err": float(np.abs(ours - theirs).max()), "scale": float(np.abs(theirs).max())}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
