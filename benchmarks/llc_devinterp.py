"""The lab's LLC estimator against devinterp's (Timaeus, PyTorch) on CPU: same weights, loss, batches
and sampler settings; prints both estimates with their spread over chains, and the seconds per
estimate of each (steady state; compile / warm-up apart).

    .venv/bin/python benchmarks/llc_devinterp.py [--peer-python /tmp/divenv/bin/python] [--json out.json]
    .venv/bin/python benchmarks/llc_devinterp.py --run-dir outputs/.../ --step 1500   # a run's checkpoint as w*

The peer runs in its own environment (torch and devinterp are not the lab's dependencies):

    python3 -m venv /tmp/divenv && /tmp/divenv/bin/pip install torch && /tmp/divenv/bin/pip install devinterp

(tested with torch==2.14.1 (PyPI's default wheel, +cu130, run on CPU) and devinterp==2.0.1;
`--index-url https://download.pytorch.org/whl/cpu` gives the smaller CPU build where that index is
reachable). Without it the lab's numbers are printed and
the script exits 0.

What is compared. w*: the default config trained `--train-steps` steps (500; the induction transition
starts near step 275), seed 0, or a run's checkpoint. The lab: `lab.train.llc_chains.program` / `run`,
as `lab-llc` runs it (one XLA device per core, `configure_xla_threads`; chains split over the devices,
`lax.map` on each; batches in microbatches), with chains 4, burn_in 15, draws 30, step_size 1e-3,
localization 100, nβ = 16 / log 16, batch 16, baseline "init". Its batches are drawn inside the
program by `task.sample` from the keys of `llc.run_chain` (chain key -> (noise, data) -> one key per
step); this script draws the same batches from the same keys and exports them (chains x steps x 16
sequences) with the weights to an .npz; benchmarks/devinterp_side.py feeds chain c's batches, in
order, to devinterp as chain c. The SGLD noise differs (JAX's and torch's generators), so the two
estimates agree only in distribution: the check is whether the lab's mean lies within devinterp's
spread over chains (sample std, ddof 1), and the difference in standard errors.

devinterp 2.0.1's conventions (read from its source: slt/sampling.py `sample`, slt/sampler.py
`sample_single_chain`, slt/llc.py `compute_llc`, optim/sgmcmc.py `SGMCMC.sgld`):
- update: w <- w - (lr/2) (nβ ∇L_batch(w) + γ (w - w0)) + sqrt(lr) N(0, σ²), σ = noise_level = 1; the
  lab's `llc.sgld` with precondition "none" is the same rule (lr = step_size ε, γ = localization).
  ∇L_batch is the gradient of the mean per-token cross-entropy over the batch, as the lab's loss.
- loss per step: the batch loss at w *before* that step's update (forward, backward, step), as the
  lab's `delta`. Burn-in steps: num_burnin_steps; draws: num_draws (num_steps_bw_draws = 1 here).
- init loss: the loss at w0 averaged over `num_init_loss_batches` (default 32) batches from the
  chain's data loader, starting with the batch its first step uses, then averaged over all chains of
  the call. With num_init_loss_batches=1 and one chain per call it is the loss at w* on that chain's
  first batch: the lab's baseline="init". (The lab's default, "paired", subtracts L(w*) on each
  draw's own batch.)
- llc (`compute_llc`, what devinterp reports): nβ (mean loss over *every* step, burn-in included, and
  every sequence and position - init loss); llc_std over chains with ddof 0. The lab drops burn-in and
  uses ddof 1. Both are printed: "draws only" (the lab's convention, computed from devinterp's stored
  per-step losses) is the one compared; "as shipped" is devinterp's own number.
- data: a Hugging Face `datasets.Dataset` with an "input_ids" column, through a torch DataLoader
  (batch_size, drop_last, shuffle with a generator seeded by init_seed, cycled). Every chain sees the
  same batches unless match_sampling_input_ids_across_chains=False (then its own shuffle), so chains
  are run one per call here, shuffle=False, to give each its own batches as in the lab.
- per estimate devinterp also writes every step's per-token losses and input ids to a zarr store
  and reads them back through xarray; that I/O is part of its time (the sampling loop alone is
  printed apart). `sample_single_chain` runs gc.collect() before and after every chain: ~0.18 s a
  call in a process that has imported devinterp (transformers, datasets, xarray), about half of its
  time per estimate here (printed apart too).

Timing: after the lab's first (compiling; no persistent compile cache) estimate and devinterp's
warm-up estimate, `--rounds` rounds of one lab estimate, one devinterp estimate and one bare torch
loop over the same chains (devinterp's SGMCMC.sgld without its data loader, callbacks and store: the
floor for torch here), alternated because a shared machine's speed drifts; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lab  # noqa: E402  (cheap: attributes load lazily; JAX's backend has not started)

SETTINGS = dict(chains=4, burn_in=15, draws=30, step_size=1e-3, localization=100.0, nbeta=16 / math.log(16),
                batch_size=16, baseline="init")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", default="/tmp/divenv/bin/python", help="a Python with torch and devinterp")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--npz", metavar="PATH", help="where to write the exported weights and batches (default: a temp file)")
    p.add_argument("--run-dir", help="take w* from this run's checkpoint instead of training")
    p.add_argument("--step", type=int, default=None, help="with --run-dir: the checkpoint step (default: newest)")
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--rounds", type=int, default=6,
                   help="timed rounds (one lab estimate, one devinterp estimate, one bare torch loop each) after "
                        "the lab's compiling estimate and devinterp's warm-up estimate")
    p.add_argument("--threads", type=int, default=2, help="torch threads for devinterp (the machine's cores)")
    p.add_argument("--chains", type=int, default=SETTINGS["chains"])
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the trained model (not with --run-dir)")
    return p.parse_args()


def centre(args):
    """(cfg, task, model, params with a one-seed leading axis, seed, step) of w*, and a line on it."""
    import jax
    if args.run_dir:
        from lab.train.restore import load_run
        r = load_run(args.run_dir, args.step)
        return r.cfg, r.task, r.model, jax.tree.map(lambda x: x[:1], r.params), r.seeds[0], r.step, \
            f"checkpoint of {args.run_dir} at step {r.step}"
    cfg = lab.load_config(list(args.overrides) + [f"train.steps={args.train_steps}", "train.seeds=1",
                                                  "train.progress=false", "train.tensorboard=false",
                                                  "train.compile_cache=null"])
    t = time.perf_counter()
    res = lab.run(cfg, plots=False)
    fin = res.summary.get("final", {})
    heads = fin.get("induction_per_head") or {}
    line = (f"default config trained {args.train_steps} steps in {time.perf_counter() - t:.0f} s: "
            f"{res.summary.get('verdict', '?')}; final loss on repeats "
            f"{(fin.get('loss_repeat') or {}).get('mean', float('nan')):.3f}, max induction score {max(heads.values(), default=float('nan')):.2f}")
    return cfg, res.trainer.task, res.model, jax.device_get(res.params), cfg.train.seed, args.train_steps, line


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def main() -> None:
    args = parse_args()
    from omegaconf import OmegaConf
    from lab.train.runtime import configure_xla_threads
    saved = OmegaConf.load(Path(args.run_dir) / "config.yaml") if args.run_dir else lab.load_config(list(args.overrides))
    configure_xla_threads(saved.train)   # as lab-train and lab-llc: one single-threaded XLA device per core

    import jax
    import jax.numpy as jnp
    import numpy as np
    from lab.measures import llc
    from lab.train import llc_chains
    from lab.train.runtime import batch_axis_mode

    cfg, task, model, params, seed, step, origin = centre(args)
    s = llc.Settings(**{**SETTINGS, "chains": args.chains})
    print(f"w*: {origin}")
    print(f"JAX {jax.__version__}: {jax.device_count()} XLA {jax.default_backend()} device(s); settings {s.to_json()}")

    # -- the lab's estimator, as lab-llc runs it
    loss = lambda p, batch, extra, shared: task.loss(model.apply(p, batch)[0], batch)
    draw = lambda k: task.sample(k, s.batch_size)
    parts = llc_chains.parts_for(task, model, s.batch_size)
    fn = llc_chains.program(loss, draw, s, s.chains, parts, batch_axis_mode())
    extra = jnp.zeros(1)
    t = time.perf_counter()
    out = {k: v[0] for k, v in llc_chains.run(fn, params, extra, [seed], [step], s).items()}   # the one step
    first_s = time.perf_counter() - t
    delta = out["delta"][0]                                  # (chains, steps)
    lab_res = {"llc": float(out["llc"][0]), "llc_std": float(out["llc_std"][0]), "chains": out["chains"][0].tolist(),
               "all_steps_llc": float(s.nbeta_value * delta.mean()),
               "all_steps_chains": (s.nbeta_value * delta.mean(1)).tolist(),
               "not_settled": bool(out["not_settled"][0]), "first_s": first_s,
               "devices": jax.device_count(), "microbatches": parts}

    def timed_lab() -> float:
        t = time.perf_counter()
        again = llc_chains.run(fn, params, extra, [seed], [step], s)
        seconds = time.perf_counter() - t
        assert np.array_equal(again["delta"][0], out["delta"]), "the lab's estimate is not reproducible"
        return seconds

    # -- the same batches, drawn outside the program from run_chain's keys, and the export
    keys = llc_chains.chain_keys([seed], step, s.chains)
    data_keys = jax.vmap(lambda k: jax.random.split(jax.random.split(k)[1], s.steps))(keys)        # (chains, steps)
    batches = jax.jit(jax.vmap(jax.vmap(draw)))(data_keys)
    tokens = np.asarray(batches.tokens)                                                           # (chains, steps, B, T)
    p0 = jax.tree.map(lambda x: jnp.asarray(x[0]), params)
    first = jax.tree.map(lambda x: x[:, 0], batches)
    init_here = np.asarray(jax.jit(jax.vmap(lambda b: loss(p0, b, None, None)))(first))
    init_diff = float(np.abs(init_here - out["init_loss"][0]).max())
    grad = jax.jit(jax.grad(lambda p: loss(p, jax.tree.map(lambda x: x[0], first), None, None)))(p0)
    m = cfg.model
    config = {"attn_only": m.attn_only, "layer_norm": m.layer_norm, "pos_embed": m.pos_embed, "attention": m.attention,
              "attn_scale": m.attn_scale, "readout_hidden": m.readout_hidden, "n_layers": m.n_layers,
              "n_heads": m.n_heads, "d_model": m.d_model, "d_head": m.d_head or m.d_model // m.n_heads,
              "vocab": model.vocab_size, "n_outputs": model.n_outputs, "seq_len": model.seq_len}
    settings = {"step_size": s.step_size, "localization": s.localization, "nbeta": s.nbeta_value, "burn_in": s.burn_in,
                "draws": s.draws, "batch_size": s.batch_size, "chains": s.chains}
    npz = Path(args.npz) if args.npz else Path(tempfile.mkdtemp(prefix="llc-devinterp-")) / "llc_devinterp.npz"
    np.savez(npz, tokens=tokens, lab_init_loss=np.asarray(out["init_loss"][0]), config=json.dumps(config),
             settings=json.dumps(settings),
             **{f"param/{k}": np.asarray(v) for k, v in flat(jax.device_get(p0)).items()},
             **{f"grad/{k}": np.asarray(v) for k, v in flat(jax.device_get(grad)).items()})
    print(f"exported weights and {s.chains} x {s.steps} batches of {s.batch_size} to {npz}; the lab's loss at w* on "
          f"each chain's first batch, recomputed from the exported batches: max |diff| {init_diff:.1e}")

    # -- devinterp, in its own environment; the two timed in alternating rounds (a shared VM's speed drifts)
    peer, lab_times = None, []
    if not Path(args.peer_python).exists():
        print(f"\nno devinterp side: {args.peer_python} does not exist; create it with\n"
              "  python3 -m venv /tmp/divenv && /tmp/divenv/bin/pip install torch && /tmp/divenv/bin/pip install devinterp")
    else:
        peer = run_peer(args, npz, timed_lab, lab_times)
    while len(lab_times) < args.rounds:
        lab_times.append(timed_lab())
    lab_res["repeat_seconds"] = lab_times
    lab_res["steady_s"] = statistics.median(lab_times)
    lab_res["compile_s"] = max(first_s - lab_res["steady_s"], 0.0)   # fresh: no persistent compile cache here
    report(lab_res, peer, s, init_diff)
    if args.json:
        Path(args.json).write_text(json.dumps({"w_star": origin, "settings": json.loads(s.to_json()), "lab": lab_res,
                                               "devinterp": peer, "lab_init_loss_recomputed_max_diff": init_diff},
                                              indent=1))
        print(f"numbers written to {args.json}")


def run_peer(args, npz: Path, timed_lab, lab_times: list):
    """benchmarks/devinterp_side.py --serve in the peer's Python: its check and warm-up, then
    `args.rounds` rounds of (lab estimate, devinterp estimate, bare torch loop). None if it failed."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([args.peer_python, str(HERE / "devinterp_side.py"), str(npz), "--serve", "--threads",
                             str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})

    def ask(cmd=None) -> dict:
        if cmd:
            proc.stdin.write(cmd + "\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            log.seek(0)
            raise RuntimeError(f"devinterp side exited ({proc.returncode}):\n{log.read()[-3000:]}")
        return json.loads(line)

    try:
        peer = ask()
        runs, bare = [], []
        for _ in range(args.rounds):
            lab_times.append(timed_lab())
            runs.append(ask("estimate"))
            bare.append(ask("bare"))
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait(timeout=60)
    except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
        proc.kill()
        print(f"\ndevinterp side failed: {e}")
        return None
    steady = statistics.median(r["seconds"] for r in runs)
    return {**peer, "estimate": runs[0], "repeat_seconds": [r["seconds"] for r in runs],
            "repeat_loop_seconds": [r["loop_seconds"] for r in runs],
            "repeat_gc_seconds": [r["gc_seconds"] for r in runs], "steady_s": steady,
            "warmup_s": max(peer["first_s"] - steady, 0.0),
            "bare_loop": {**bare[0], "seconds": [b["seconds"] for b in bare]},
            # torch's 2-thread reductions may round differently from run to run (~1e-6 here)
            "deterministic": all(max(abs(a - b) for a, b in zip(r["chains"], runs[0]["chains"])) < 1e-3
                                 for r in runs + [peer["first"]])}


def report(lab_res: dict, peer, s, init_diff: float) -> None:
    import numpy as np
    rows = [("lab (JAX)", lab_res["llc"], lab_res["llc_std"], lab_res["steady_s"], lab_res["compile_s"])]
    if peer:
        e = peer["estimate"]
        rows.append(("devinterp (torch)", e["llc"], e["llc_std"], peer["steady_s"], peer["warmup_s"]))
    print(f"\nLLC at w*, {s.chains} chains x ({s.burn_in} burn-in + {s.draws} draws), baseline L(w*) on each chain's "
          f"first batch, burn-in dropped; chain std ddof 1")
    print(f"{'estimator':<20}{'LLC mean':>10}{'chain std':>11}{'s/estimate':>12}{'compile/warm-up s':>19}")
    for name, mean, std, sec, warm in rows:
        print(f"{name:<20}{mean:>10.2f}{std:>11.2f}{sec:>12.3f}{warm:>19.2f}")
    print(f"per chain: lab {_fmt(lab_res['chains'])}" + (f"; devinterp {_fmt(peer['estimate']['chains'])}" if peer else ""))
    print(f"lab: {lab_res['devices']} XLA devices, {lab_res['microbatches']} microbatches per SGLD batch; "
          f"timed estimates {_fmt(lab_res['repeat_seconds'], 3)} s")
    if not peer:
        return
    e, c, b = peer["estimate"], peer["check"], peer["bare_loop"]
    print(f"devinterp {peer['versions']['devinterp']}, torch {peer['versions']['torch']}, {peer['torch_threads']} threads: "
          f"timed estimates {_fmt(peer['repeat_seconds'], 3)} s, of which the SGLD loop "
          f"{_fmt(peer['repeat_loop_seconds'], 3)} s, and in that the gc.collect() before and after each chain "
          f"{_fmt(peer['repeat_gc_seconds'], 3)} s; import {peer['import_s']:.1f} s"
          + ("" if peer["deterministic"] else "; NOT reproducible between its estimates"))
    print(f"loss at w* (each chain's first batch): torch {_fmt(c['loss_torch'], 6)} vs lab {_fmt(c['loss_lab'], 6)}, "
          f"max |diff| {c['loss_max_abs_diff']:.1e}; gradient max rel diff {c['grad_max_rel_diff']:.1e} ({c['grad_worst_param']})")
    diff = lab_res["llc"] - e["llc"]
    se = math.sqrt(lab_res["llc_std"] ** 2 / s.chains + e["llc_std"] ** 2 / s.chains)
    inside = abs(diff) <= e["llc_std"]
    print(f"agreement: lab - devinterp = {diff:+.2f} ({diff / e['llc']:+.1%}); "
          + ("the lab's mean is within devinterp's chain spread" if inside else
             f"the lab's mean is outside devinterp's chain spread by {abs(diff) - e['llc_std']:.2f} "
             f"({abs(diff) / e['llc_std']:.1f} chain std)")
          + f"; {abs(diff) / se:.1f} standard errors of the difference")
    lab_t, di_t, bare_t = (np.array(x) for x in (lab_res["repeat_seconds"], peer["repeat_seconds"], b["seconds"]))
    loop_t = np.array(peer["repeat_loop_seconds"])
    per_round = di_t / lab_t
    print(f"speed over {len(di_t)} alternating rounds: lab {e_ratio(np.median(di_t), np.median(lab_t))} faster per "
          f"estimate by medians, {e_ratio(di_t.min(), lab_t.min())} by fastest rounds, per-round ratios "
          f"{np.median(per_round):.1f}x median ({per_round.min():.1f}-{per_round.max():.1f}x) (target >= 5x); against "
          f"devinterp's SGLD loop alone (no init-loss pass, zarr read-back) {e_ratio(np.median(loop_t), np.median(lab_t))}")
    print(f"a bare torch loop over the same chains around devinterp's SGMCMC.sgld (no data loader, callbacks or zarr): "
          f"{np.median(bare_t):.3f} s per estimate (fastest {bare_t.min():.3f}; lab "
          f"{e_ratio(np.median(bare_t), np.median(lab_t))} faster), LLC {b['llc']:.2f}, per chain {_fmt(b['chains'])}")
    print(f"devinterp as shipped (compute_llc: burn-in steps included, std ddof 0): {e['shipped_llc']:.2f} ± "
          f"{e['shipped_std_ddof0']:.2f}; the lab's chains averaged the same way: {lab_res['all_steps_llc']:.2f}")


def e_ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


def _fmt(xs, digits: int = 2) -> str:
    return "[" + ", ".join(f"{x:.{digits}f}" for x in xs) + "]"


if __name__ == "__main__":
    main()
