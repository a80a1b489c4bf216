"""Fabricate a run directory in the trainer's output format, for testing the plots
without training anything.

The curves are sigmoids in the step: repeated-part loss drops from chance, an induction
head rises with it, and a previous-token head rises a little earlier, as in a real run.
A run can carry clamps in its config.yaml; each `apply: measure` clamp adds the per-seed
`loss_repeat_clamped_<name>` and `acc_repeat_clamped_<name>` metrics the trainer would log.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

VOCAB = 64
LOG_EVERY = 50
N_REPEATS = 2
ABLATIONS = ("zero", "mean", "resample")   # clamp values that knock the circuit out


def clamp(site="blocks.0.attn.pattern", value="prev_token", heads=(0,), start=0, stop=None, strength=1.0,
          schedule="constant", ramp_steps=0, apply="both") -> dict:
    """One `clamps:` entry as the resolved config.yaml holds it."""
    return {"site": site, "value": value, "heads": list(heads) if isinstance(heads, (list, tuple)) else heads,
            "start": start, "stop": stop, "strength": strength, "schedule": schedule, "ramp_steps": ramp_steps,
            "apply": apply}


def _config(S, L, H, T, total, clamps, overrides) -> dict:
    """A resolved config in the shape lab-train writes (the keys the plots read, and a few more)."""
    config = {"task": {"name": "induction", "seq_len": T, "vocab_size": VOCAB, "n_repeats": N_REPEATS},
              "model": {"n_layers": L, "n_heads": H, "d_model": 64, "attn_only": True},
              "optim": {"name": "adam", "lr": 1e-3},
              "train": {"steps": total, "seeds": S, "seed": 0, "log_every": LOG_EVERY, "progress": True},
              "out_dir": ".", "clamps": clamps or {}}
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _layout(T: int) -> tuple[int, int]:
    """(repeat_start, repeat_len) of probe sequence 0: BOS, a short prefix, then the copies."""
    start = min(3, T // 4)
    return start, max(1, min(10, (T - start) // N_REPEATS))


def _phase(detected, mid, width, threshold_step, steepest):
    if not detected:
        return {"detected": False, "reason": "sigmoid fit r2 0.12 < 0.8", "threshold_step": None,
                "steepest_step": None, "onset": None, "midpoint": None, "width": None, "end": None,
                "r2": 0.12}
    spread = width * math.log(9)  # 10 % and 90 % points of the sigmoid
    return {"detected": True, "reason": "", "threshold_step": threshold_step, "steepest_step": steepest,
            "onset": mid - spread, "midpoint": mid, "width": 2 * spread, "end": mid + spread, "r2": 0.97}


def _aggregate(per_seed):
    hits = [p for p in per_seed if p["detected"]]
    agg = {"n_detected": len(hits), "n_seeds": len(per_seed)}
    for key in ("midpoint", "onset", "threshold_step"):
        vals = [p[key] for p in hits if p[key] is not None]
        agg[f"{key}_mean"] = float(np.mean(vals)) if vals else None
        agg[f"{key}_std"] = float(np.std(vals)) if vals else None
    return agg


def _attention(sig_ind, sig_prev, L, H, T, ind_head, prev_head):
    """Causal patterns: uniform attention blended into the ideal induction / prev-token target."""
    start, n = _layout(T)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    ind_target, prev_target = np.zeros((T, T)), np.zeros((T, T))
    for i in range(T):
        rel = i - start
        ind_target[i, i - n + 1 if n <= rel < N_REPEATS * n else 0] = 1.0  # else park on BOS
        prev_target[i, max(i - 1, 0)] = 1.0
    pats = np.broadcast_to(uniform, (L, H, T, T)).copy()
    pats[ind_head] = (1 - sig_ind) * uniform + sig_ind * ind_target
    pats[prev_head] = (1 - sig_prev) * uniform + sig_prev * prev_target
    return pats


LLC_CHAINS, LLC_DRAWS, LLC_BURN_IN, OUTPUT_DIM = 4, 40, 10, 24


def _development(step_values, mids, width, amp, S, rng) -> tuple[dict, dict]:
    """(llc.npz, outputs.npz) contents as the trainer writes them: the LLC grows in log-time with a
    bump over the phase change; the outputs drift along one direction, then turn a corner onto
    another as the phase change happens. One chain of one estimate blew up and one estimate did not
    settle, as the diagnostics figure has to show."""
    N, C, M = len(step_values), LLC_CHAINS, LLC_DRAWS
    u = np.log(step_values + LOG_EVERY)[:, None]                                     # (N, 1) log-time
    sig = amp * _sigmoid((step_values[:, None] - mids[None]) / width)               # (N, S)
    bump = amp * np.exp(-((step_values[:, None] - mids[None]) / (5 * width)) ** 2)
    true_llc = 2.0 + 1.0 * (u - u[0]) + 6.0 * bump + 2.0 * sig                      # (N, S)
    chains = true_llc[:, :, None] * (1 + 0.06 * rng.standard_normal((N, S, C)))
    nonfinite = np.zeros((N, S, C), bool)
    nonfinite[N // 3, 0, C - 1] = True
    chains[nonfinite] = np.nan
    nbeta = 20.0
    t = np.arange(M)
    level = (np.where(nonfinite, true_llc[:, :, None], chains) / nbeta)[..., None]   # L(w_t) - L(w*) settles here
    loss_trace = level * (1 - np.exp(-t / 4.0)) + 0.15 * np.abs(level) * rng.standard_normal((N, S, C, M))
    distance = np.sqrt(t + 1.0) * (0.05 + 0.01 * rng.random((N, S, C, 1)))
    loss_trace[nonfinite] = np.where(t < M // 2, loss_trace[nonfinite], np.nan)
    not_settled = np.zeros((N, S), bool)
    not_settled[N - 2, S - 1] = True
    with np.errstate(invalid="ignore"):
        llc = {"steps": step_values, "llc": np.nanmean(chains, 2), "llc_std": np.nanstd(chains, 2, ddof=1),
               "chains": chains, "loss_trace": loss_trace, "distance": distance,
               "init_loss": 3.0 - sig + 0.01 * rng.standard_normal((N, S)), "nonfinite": nonfinite,
               "not_settled": not_settled, "burn_in": np.array(LLC_BURN_IN), "nbeta": np.array(nbeta),
               "source": np.array("online"), "settings": np.array(json.dumps({"num_chains": C, "num_draws": M}))}
    q, _ = np.linalg.qr(rng.standard_normal((OUTPUT_DIM, OUTPUT_DIM)))
    drift = (u - u[0]) / (u[-1] - u[0])                                             # (N, 1)
    path = (drift[..., None] * q[:, 0] + 2.0 * sig[..., None] * q[:, 1] + 0.5 * bump[..., None] * q[:, 2])
    outputs = path + 0.02 * rng.standard_normal((N, S, OUTPUT_DIM))
    return llc, {"steps": step_values, "outputs": outputs.astype(np.float32), "kind": np.array("logits on the probe")}


def make_fake_run(path, seeds=2, layers=2, heads=4, T=32, steps=40, with_phase=True, with_attention=True,
                  detected=True, clamps=None, config=None, with_config=True, mid_frac=0.5, summary_clamps=None,
                  status=None, first_seed=0, with_development=False, stages_in_summary=True):
    """Write config.yaml, metrics.jsonl, summary.json and (optionally) attention.npz under `path`.

    `steps` is the number of log records (one every LOG_EVERY training steps).
    `with_phase=False` leaves phase and thresholds out of summary.json; `detected=False`
    makes flat curves and a summary that reports no phase change.
    `clamps` ({name: clamp(...)}) goes into config.yaml; `config` ({"model.n_layers": 1, ...})
    overrides other config keys; `with_config=False` writes no config.yaml (an old run).
    `mid_frac` places the phase change (fraction of the run); `summary_clamps` is written to
    summary.json as "clamps" (heads chosen for `heads: auto`).
    `with_development=True` also writes llc.npz and outputs.npz (`_development`, with save_llc /
    save_outputs) and, unless `stages_in_summary=False` or `with_phase=False`, summary.json's
    "stages" (lab.analysis.development.stage_report), as lab-train would.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    S, L, H = seeds, layers, heads
    step_values = np.arange(steps) * LOG_EVERY
    total = steps * LOG_EVERY
    chance = math.log(VOCAB)
    width = total * 0.04
    mids = total * mid_frac + rng.normal(0, total * 0.03, S)
    amp = 1.0 if detected else 0.0
    ind_head = (L - 1, min(2, H - 1))
    prev_head = (0, min(1, H - 1))  # with one layer and one head both roles fall on one head

    positions = np.arange(1, T)
    repeat_frac = np.clip((positions - 8) / T, 0, 0.6)  # share of probe sequences in a repeat there
    measured = [name for name, c in (clamps or {}).items() if c.get("apply") == "measure"]
    lines, loss_repeat_all = [], []
    for step in step_values:
        sig = amp * _sigmoid((step - mids) / width)                 # (S,)
        sig_prev = amp * _sigmoid((step - mids + 3 * width) / width)
        noise = lambda scale, *shape: rng.normal(0, scale, shape or (S,))  # noqa: E731
        loss_repeat = chance * 0.97 - (chance * 0.97 - 0.3) * sig + noise(0.03)
        loss = 0.7 * chance + 0.3 * loss_repeat + noise(0.02)
        loss_by_pos = chance * (1 - repeat_frac) + loss_repeat[:, None] * repeat_frac + noise(0.05, S, T - 1)

        induction = np.clip(0.05 + noise(0.02, S, L, H), 0, 1)
        prev = np.clip(0.1 + noise(0.03, S, L, H), 0, 1)
        induction[:, ind_head[0], ind_head[1]] = 0.05 + 0.75 * sig
        induction[:, L - 1, 0] += 0.25 * sig  # a weaker second induction head
        prev[:, prev_head[0], prev_head[1]] = 0.1 + 0.8 * sig_prev
        copying = -0.1 + noise(0.05, S, L, H)
        copying[:, ind_head[0], ind_head[1]] += 0.7 * sig
        k_comp = np.clip(0.12 + noise(0.01, S, L - 1, H, H), 0, 1)       # (S, L-1, H, H0): later head x layer-0 head
        if L > 1:
            k_comp[:, ind_head[0] - 1, ind_head[1], prev_head[1]] += 0.2 * sig

        lines.append({
            "step": int(step), "time": float(step) * 0.01, "lr": 1e-3,
            "train_loss": (loss + noise(0.05)).tolist(), "loss": loss.tolist(),
            "loss_repeat": loss_repeat.tolist(), "acc_repeat": (0.02 + 0.93 * sig).tolist(),
            "icl_score": (-(chance - loss_repeat) * 0.8).tolist(), "loss_by_pos": loss_by_pos.tolist(),
            "induction": induction.tolist(), "prev_token": prev.tolist(),
            "prev_token_corrected": (prev - 0.08).tolist(), "copying": copying.tolist(),
            **({"k_composition": k_comp.tolist()} if L > 1 else {}),
        })
        for name in measured:
            # an ablation keeps the loss near chance; an ideal pattern gets there earlier
            ablated = clamps[name].get("value") in ABLATIONS
            sig_c = sig * 0.15 if ablated else amp * _sigmoid((step - mids + 4 * width) / width)
            lines[-1][f"loss_repeat_clamped_{name}"] = (chance * 0.97 - (chance * 0.97 - 0.3) * sig_c
                                                        + noise(0.03)).tolist()
            lines[-1][f"acc_repeat_clamped_{name}"] = (0.02 + 0.93 * sig_c).tolist()
        loss_repeat_all.append(loss_repeat)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if with_config:
        (path / "config.yaml").write_text(yaml.safe_dump(_config(S, L, H, T, total, clamps, config), sort_keys=False))

    # "task" as lab-train's summary.json has it (figure titles name the task from it, config.yaml or not)
    summary = {"seeds": list(range(first_seed, first_seed + S)), "task": "induction", "n_layers": L, "n_heads": H,
               "steps": total,
               "strongest_induction_head": list(ind_head), "strongest_prev_token_head": list(prev_head),
               "chance_loss": chance}
    if with_phase:
        threshold = 2.0
        loss_repeat_all = np.array(loss_repeat_all)
        per_seed = []
        for s in range(S):
            below = np.nonzero(loss_repeat_all[:, s] < threshold)[0]
            crossed = int(step_values[below[0]]) if len(below) else None
            steepest = int(step_values[np.argmin(np.abs(step_values - mids[s]))])
            per_seed.append(_phase(detected, float(mids[s]), width, crossed, steepest))
        induction_phase = {}
        for l in range(L):
            for h in range(H):
                seeds_phase = [_phase(detected and (l, h) == ind_head, float(mids[s]), width, None, None)
                               for s in range(S)]
                induction_phase[f"L{l}H{h}"] = {"per_seed": seeds_phase, "aggregate": _aggregate(seeds_phase)}
        summary["phase"] = {"loss_repeat": {"per_seed": per_seed, "aggregate": _aggregate(per_seed)},
                            "induction": induction_phase}
        summary["thresholds"] = {"loss_repeat": threshold, "induction": 0.4}
    if with_development:
        from lab.analysis.development import stage_report
        from lab.rundir import load_llc, load_outputs, save_llc, save_outputs
        llc, outputs = _development(step_values, mids, width, amp, S, rng)
        save_llc(path, llc)
        save_outputs(path, outputs)
        if with_phase and stages_in_summary:
            summary["main_metric"] = "loss_repeat"
            summary["stages"] = stage_report(summary, load_llc(path), load_outputs(path))
    if summary_clamps is not None:
        summary["clamps"] = summary_clamps
    if status is not None:
        summary["status"] = status
    (path / "summary.json").write_text(json.dumps(summary, indent=2))

    if with_attention:
        idx = [0, max(0, int(np.searchsorted(step_values, mids[0] - 4 * width)) - 1),
               min(steps - 1, int(np.searchsorted(step_values, mids[0] + 4 * width))), steps - 1]
        snap_steps = step_values[idx]
        patterns = np.stack([
            _attention(amp * _sigmoid((s - mids[0]) / width), amp * _sigmoid((s - mids[0] + 3 * width) / width),
                       L, H, T, ind_head, prev_head)
            for s in snap_steps]).astype(np.float32)
        start, n = _layout(T)
        tokens = rng.integers(0, VOCAB, T)
        tokens[0] = VOCAB  # BOS
        for c in range(1, N_REPEATS):
            tokens[start + c * n:start + (c + 1) * n] = tokens[start:start + n]
        np.savez(path / "attention.npz", steps=snap_steps, patterns=patterns, tokens=tokens,
                 labels=np.array(["start", "before", "after", "final"]), repeat_start=start,
                 repeat_len=n, n_repeats=N_REPEATS)
    return path


# ----------------------------------------------------------------------------- multirun jobs

JOB_KINDS = ("completed", "config_error", "nan", "killed")


def _log_line(level: str, message: str, logger: str = "lab") -> str:
    return f"[2026-11-24 02:50:01,234][{logger}][{level}] - {message}\n"


def _override_value(text: str):
    value = yaml.safe_load(text)
    return value if isinstance(value, (int, float, str, bool)) or value is None else text


def make_fake_job(path, overrides, kind="completed", seeds=2, first_seed=0, error=None, **run_kwargs):
    """One job directory of a Hydra multirun, as `lab-train -m` leaves it: `.hydra/overrides.yaml`
    (the job's `overrides`, strings such as "task.vocab_size=12"), `.hydra/config.yaml`, `train.log`
    and, depending on `kind`:

    - completed: the run's files (make_fake_run, with `run_kwargs`), summary status "completed";
    - config_error: nothing else; train.log ends with the ERROR line lab-train logs (`error` is its text);
    - nan: a run cut short whose summary.json status is "failed: non-finite training loss ...";
    - killed: metrics.jsonl with a half-written last line, a checkpoints/ directory, no summary.json.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"kind must be one of {JOB_KINDS}, not {kind!r}")
    path = Path(path)
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    config = {k.lstrip("+"): _override_value(v) for k, v in (o.split("=", 1) for o in overrides)
              if "." in k}   # group choices such as train=tiny select files; the fake has none
    config.setdefault("train.seed", first_seed)
    config["train.seeds"] = seeds
    (path / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump(_config(seeds, 2, 4, 32, 2000, None, config), sort_keys=False))
    log = _log_line("INFO", "compile cache: /tmp/cache")
    if kind == "config_error":
        error = error or "model.d_model=16 is not divisible by model.n_heads=3"
        (path / "train.log").write_text(log + _log_line("ERROR", f"config error: {error} [{path}]"))
        return path
    status = {"completed": "completed", "killed": None,
              "nan": error or f"failed: non-finite training loss at step 170 (seed {first_seed})"}[kind]
    if kind == "nan":
        run_kwargs.setdefault("steps", 6)
    make_fake_run(path, seeds=seeds, config=config, status=status, first_seed=first_seed, **run_kwargs)
    if kind == "nan":
        log += _log_line("ERROR", f"training failed: {status}; lower optim.lr or set optim.grad_clip [{path}]")
    if kind == "killed":
        (path / "summary.json").unlink()
        (path / "checkpoints" / "200").mkdir(parents=True)
        with open(path / "metrics.jsonl", "a") as f:
            f.write('{"step": 99999, "loss_rep')
    (path / "train.log").write_text(log)
    return path
