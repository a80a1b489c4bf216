"""The devinterp side of benchmarks/llc_devinterp.py: runs in a separate environment with PyTorch and
devinterp (not the lab's), reads the .npz that llc_devinterp.py wrote (the lab's weights at w*, every
chain's SGLD batches, the settings, and the lab's loss and gradient at w* for a check), rebuilds the
same attention-only transformer in torch, checks that it reproduces the lab's loss and gradient at w*,
estimates the LLC with devinterp on the same batches, and prints one JSON object on stdout.

    /tmp/divenv/bin/python benchmarks/devinterp_side.py FILE.npz [--repeats 3] [--threads 2] [--serve]

Tested with torch 2.14.1 (PyPI's default wheel, 2.14.1+cu130, run on CPU: the CPU-only index was
unreachable here) and devinterp 2.0.1 (`pip install torch==2.14.1 devinterp==2.0.1`); devinterp 2.x
replaced 1.x's `estimate_learning_coeff_with_summary` with `devinterp.slt.llc.llc` / `sample`. Each chain is one `devinterp.slt.llc.llc()` call with
num_chains=1 on a dataset holding that chain's batches in order (shuffle=False): devinterp's
`sample()` gives every chain the same batches (match_sampling_input_ids_across_chains) or its own
shuffle, never a given batch per chain and step, while the lab's chains each draw their own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")   # devinterp draws a progress bar per chain

t_import = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


class LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.scale, self.bias, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.bias, self.eps)


class Attention(nn.Module):
    """W_Q, W_K, W_V (d_model, heads, d_head) and W_O (heads, d_head, d_model), no biases, causal
    softmax attention scaled by 1/sqrt(d_head): the lab's layout (lab/model/transformer.py)."""

    def __init__(self, D: int, H: int, E: int):
        super().__init__()
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.zeros(D, H, E)) for _ in range(3))
        self.W_O = nn.Parameter(torch.zeros(H, E, D))

    def forward(self, x):
        q, k, v = (torch.einsum("btd,dhe->bhte", x, w) for w in (self.W_Q, self.W_K, self.W_V))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # scale 1/sqrt(d_head)
        return torch.einsum("bhte,hed->btd", z, self.W_O)


class Block(nn.Module):
    def __init__(self, D: int, H: int, E: int):
        super().__init__()
        self.ln1, self.attn = LayerNorm(D), Attention(D, H, E)

    def forward(self, x):
        return x + self.attn(self.ln1(x))


class Transformer(nn.Module):
    """Attention-only, pre-LayerNorm, learned positions; parameter names as the lab's flattened
    parameter dict (W_E, W_pos, blocks.<l>.ln1.scale, blocks.<l>.attn.W_Q, ..., ln_final.bias, W_U)."""

    def __init__(self, V: int, T: int, D: int, H: int, E: int, L: int, V_out: int):
        super().__init__()
        self.W_E, self.W_pos = nn.Parameter(torch.zeros(V, D)), nn.Parameter(torch.zeros(T, D))
        self.blocks = nn.ModuleList(Block(D, H, E) for _ in range(L))
        self.ln_final = LayerNorm(D)
        self.W_U = nn.Parameter(torch.zeros(D, V_out))

    def forward(self, tokens):
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x) @ self.W_U


def build(npz) -> Transformer:
    cfg = json.loads(str(npz["config"]))
    if not (cfg["attn_only"] and cfg["layer_norm"] and cfg["pos_embed"] == "learned" and cfg["attention"] == "softmax"
            and cfg["attn_scale"] and not cfg["readout_hidden"]):
        sys.exit(f"devinterp_side.py rebuilds only the attention-only, pre-LN, learned-position softmax model; got {cfg}")
    model = Transformer(cfg["vocab"], cfg["seq_len"], cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["n_layers"],
                        cfg["n_outputs"])
    names = dict(model.named_parameters())
    stored = {k[len("param/"):]: npz[k] for k in npz.files if k.startswith("param/")}
    if set(stored) != set(names):
        sys.exit(f"parameter names differ: lab only {sorted(set(stored) - set(names))}, "
                 f"torch only {sorted(set(names) - set(stored))}")
    with torch.no_grad():
        for name, p in names.items():
            if tuple(p.shape) != stored[name].shape:
                sys.exit(f"{name}: lab shape {stored[name].shape}, torch {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.asarray(stored[name], np.float32)))
    return model


def token_loss(model, input_ids):
    """(batch, seq-1) next-token cross-entropy, as devinterp's default loss and the lab's task.loss."""
    logits = model(input_ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                           reduction="none").reshape(input_ids.shape[0], -1)


def check_against_lab(model, npz) -> dict:
    """The torch model's loss at w* on each chain's first batch and its gradient on chain 0's,
    against the lab's (computed in JAX by llc_devinterp.py)."""
    tokens = torch.from_numpy(npz["tokens"].astype(np.int64))
    with torch.no_grad():
        losses = np.array([float(token_loss(model, tokens[c, 0]).mean()) for c in range(tokens.shape[0])])
    model.zero_grad()
    token_loss(model, tokens[0, 0]).mean().backward()
    rel = {}
    for name, p in model.named_parameters():
        g_lab = npz[f"grad/{name}"]
        rel[name] = float(np.abs(p.grad.numpy() - g_lab).max() / max(np.abs(g_lab).max(), 1e-12))
    model.zero_grad(set_to_none=True)
    lab = npz["lab_init_loss"]
    return {"loss_torch": losses.tolist(), "loss_lab": lab.tolist(), "loss_max_abs_diff": float(np.abs(losses - lab).max()),
            "grad_max_rel_diff": max(rel.values()), "grad_worst_param": max(rel, key=rel.get)}


def estimate(model, datasets, s: dict, seed: int, workdir: str, tag: str) -> dict:
    """One LLC estimate: one devinterp `llc()` call per chain (num_chains=1) on that chain's batches
    in order. Returns the shipped estimate (compute_llc: every step, burn-in included, std ddof 0),
    the burn-in-dropped estimate (the lab's convention) from the same stored losses, per chain, and
    the time in the sampling loop (sample_single_chain) against the whole call."""
    from devinterp.slt import sampler, sampling
    from devinterp.slt.llc import llc

    spent = {"loop": 0.0, "gc": 0.0}

    def timer(fn, key):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return timed

    inner, gc_inner = sampling.sample_single_chain, sampler._gc_and_empty_cache
    # the SGLD loop alone (to tell it from the init-loss pass and the zarr read-back), and within it
    # the gc.collect() that sample_single_chain runs before and after every chain
    sampling.sample_single_chain = timer(inner, "loop")
    sampler._gc_and_empty_cache = timer(gc_inner, "gc")
    shipped, draws_only, step0 = [], [], []
    t0 = time.perf_counter()
    try:
        for c, ds in enumerate(datasets):
            out = llc(model, ds, {}, lr=s["step_size"], n_beta=s["nbeta"], num_chains=1, num_draws=s["draws"],
                      batch_size=s["batch_size"], num_burnin_steps=s["burn_in"], num_init_loss_batches=1,
                      init_seed=seed + c, localization=s["localization"], shuffle=False, device="cpu",
                      output_path=os.path.join(workdir, f"{tag}-chain{c}.zarr"))
            trace = out["loss_trace"].values[0]           # (steps,) mean loss per SGLD step, at w before the step
            init = float(out["init_loss"].values)
            shipped.append(float(out["llc_per_chain"].values[0]))
            draws_only.append(s["nbeta"] * (float(trace[s["burn_in"]:].mean()) - init))
            step0.append(float(trace[0]) - init)
    finally:
        sampling.sample_single_chain, sampler._gc_and_empty_cache = inner, gc_inner
    seconds = time.perf_counter() - t0
    return {"chains": draws_only, "llc": float(np.mean(draws_only)), "llc_std": float(np.std(draws_only, ddof=1)),
            "shipped_chains": shipped, "shipped_llc": float(np.mean(shipped)),
            "shipped_std_ddof0": float(np.std(shipped)), "shipped_std": float(np.std(shipped, ddof=1)),
            "step0_minus_init_max": float(np.abs(step0).max()), "seconds": seconds, "loop_seconds": spent["loop"],
            "gc_seconds": spent["gc"]}


def bare_loop(model, tokens: np.ndarray, s: dict, seed: int) -> dict:
    """The same chains in a plain torch loop around devinterp's optimizer (SGMCMC.sgld), without its
    data loader, init-loss pass, callbacks and zarr store: the floor for torch here. Same seeds and
    order of random draws as `sample_single_chain`, so its chains should match `estimate`'s closely."""
    from copy import deepcopy

    from devinterp.optim import SGMCMC
    x = torch.from_numpy(tokens)
    chains = []
    t0 = time.perf_counter()
    for c in range(x.shape[0]):
        m = deepcopy(model)
        torch.manual_seed(seed + c)
        opt = SGMCMC.sgld(m.parameters(), lr=s["step_size"], nbeta=s["nbeta"], localization=s["localization"])
        losses = []
        for t in range(x.shape[1]):
            loss = token_loss(m, x[c, t]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        losses = torch.stack(losses).numpy()
        chains.append(s["nbeta"] * (float(losses[s["burn_in"]:].mean()) - float(losses[0])))
    return {"chains": chains, "llc": float(np.mean(chains)), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("npz")
    p.add_argument("--repeats", type=int, default=3, help="timed estimates after one warm-up estimate")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=100, help="chain c uses torch seed SEED + c (devinterp's init_seed)")
    p.add_argument("--serve", action="store_true",
                   help="after the check and the warm-up estimate, print one JSON line, then answer each stdin line "
                        "'estimate' or 'bare' with one JSON line ('quit' ends): llc_devinterp.py times the two "
                        "estimators in alternating rounds this way")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import devinterp  # noqa: F401  (imports transformers, datasets, xarray, zarr)
    from datasets import Dataset
    import_s = time.perf_counter() - t_import

    npz = np.load(args.npz)
    s = json.loads(str(npz["settings"]))
    model = build(npz)
    check = check_against_lab(model, npz)
    tokens = npz["tokens"].astype(np.int64)                 # (chains, steps, batch, seq)
    C, S, B, T = tokens.shape
    datasets = [Dataset.from_dict({"input_ids": tokens[c].reshape(S * B, T)}).with_format("torch") for c in range(C)]
    head = {"versions": {"torch": torch.__version__, "devinterp": _version("devinterp"), "python": sys.version.split()[0]},
            "torch_threads": torch.get_num_threads(), "import_s": import_s, "check": check}

    workdir = tempfile.mkdtemp(prefix="devinterp-llc-")
    try:
        t = time.perf_counter()
        first = estimate(model, datasets, s, args.seed, workdir, "warmup")
        head["first_s"] = time.perf_counter() - t
        if args.serve:
            print(json.dumps({**head, "first": first}), flush=True)
            for n, line in enumerate(sys.stdin):
                cmd = line.strip()
                if cmd == "estimate":
                    print(json.dumps(estimate(model, datasets, s, args.seed, workdir, f"r{n}")), flush=True)
                elif cmd == "bare":
                    print(json.dumps(bare_loop(model, tokens, s, args.seed)), flush=True)
                elif cmd == "quit":
                    break
                else:
                    print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
            return
        runs = [estimate(model, datasets, s, args.seed, workdir, f"r{r}") for r in range(args.repeats)]
        bare = [bare_loop(model, tokens, s, args.seed) for _ in range(2)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    steady = statistics.median(r["seconds"] for r in runs)
    print(json.dumps({
        **head, "estimate": runs[0], "repeat_seconds": [r["seconds"] for r in runs],
        "repeat_loop_seconds": [r["loop_seconds"] for r in runs], "steady_s": steady,
        "warmup_s": max(head["first_s"] - steady, 0.0),
        "bare_loop": {**bare[-1], "seconds": [b["seconds"] for b in bare]},
        # torch's 2-thread reductions may round differently from run to run (~1e-6 here)
        "deterministic": all(math.isclose(r["llc"], first["llc"], rel_tol=0, abs_tol=1e-3) for r in runs),
    }))


def _version(name: str):
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
