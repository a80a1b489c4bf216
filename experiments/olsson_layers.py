"""Induction heads need two layers (Olsson et al. 2022, "In-context learning and induction heads").

Attention-only transformers with 1, 2 and 3 layers on token induction (repeated random segments).
Claims: the 2- and 3-layer models show a phase change in the repeated-part loss that coincides with
the rise of an induction head and of the in-context-learning score; the 1-layer model shows neither;
the previous-token head forms no later than the induction head. Two of Olsson et al.'s causal
arguments on top:
- (2) smeared keys (`experiment=olsson_smeared`, `model.smeared_keys=true`: each key mixed with the
  previous position's by a learned per-head σ(α), starting at 0.5): the 1-layer model then forms an
  induction head, shows the phase change, ends with a lower ICL score than the plain 1-layer model,
  and its induction head weights the previous key above its own (σ(α) < 0.5). Figure layers.png.
- (3) test-time ablation of the final checkpoint of the trained 2- and 3-layer models, with lab-ablate's
  functions (lab/analysis/ablation.py, which now reports the ICL score too): mean-ablating every
  induction head (score >= 0.4 on the eval batch) removes most of the ICL score, and more than
  ablating as many heads drawn at random from all heads. Figure ablation.png. lab-ablate's own
  top-vs-random (the strongest head of each layer vs one random head per layer) is drawn beside it
  and quoted in the claim's note: in these models all four layer-1 heads become induction heads, so
  one of them alone removes a few % of the ICL score (redundancy, not a refutation). That single-head
  protocol was tried first and its claims failed; ablating every induction head is Olsson et al.'s.

    python -m experiments.olsson_layers            # 5 seeds x 1500 steps per condition (4 conditions)
    python -m experiments.olsson_layers --full     # 8 seeds x 3000 steps
    python -m experiments.olsson_layers --smoke    # seconds per run: checks the script, not the claims

Default scale: 40 min measured on a 2-core CPU shared with other work (load average 5-7; training
5 + 12 + 14 min for 1, 2, 3 layers, 6.5 min for the smeared model, 2 min for the ablations); the three
plain depths took 11 min on an idle one before the smeared condition was added, so about 15 min idle.

Deviations from the paper, with reasons:
- Data: Olsson et al. trained on natural text and used repeated random tokens only as a probe; here
  the models train on repeated random tokens (task=induction), the lab's task, where the induction
  circuit is the only way to beat chance on the repeats. The ICL score is theirs (loss at token 500
  minus token 50 of 512) scaled to the sequence length (lab/measures/losses.py icl_positions).
- Smeared keys: the paper gives no initialisation for α; α = 0 (an even mix) lets Adam (which moves
  α by about lr per step) reach either end within the run. The keys are smeared after RoPE (the
  default model has learned positions, so this does not arise here). The smeared model's phase change
  comes early (onset at step 75): its keys carry the previous token from the start, so its plateau
  is short.
- Ablation: mean ablation (each head's z replaced by its mean over the 512 evaluation sequences), at
  the final checkpoint only (Olsson et al. also ablate over training); the random heads are 20 draws
  of as many heads from all layers. A seed without an induction head, or with no ICL score to remove,
  is not measured. On this task the ICL score tracks the repeat loss (see the ICL control claims).

Timings compare onsets (where each curve leaves its plateau, by change points), not midpoints:
previous-token scores rise more gradually than induction scores, so midpoints order the heads by
their widths as much as by when they start.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments.common import (CONTROL, Experiment, all_measured, ci_beyond, claim, measured_note, save_figure,
                                script_main)

ORDER = 1                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "olsson"          # configs/experiment/olsson.yaml: token induction, 2-layer attention-only
SMEARED_PRESET = "olsson_smeared"   # configs/experiment/olsson_smeared.yaml: the 1-layer model with smeared keys
DEPTHS = (1, 2, 3)
# Test-time ablation with lab-ablate's functions (lab/analysis/ablation.py): mean ablation of every
# induction head (induction score on the eval batch >= the run's threshold, 0.4) against as many heads
# drawn uniformly from all heads, ABLATE_DRAWS draws, on ABLATE_EVAL fresh sequences; beside it
# lab-ablate's own top-vs-random (the strongest head of each layer: ABLATE_PERCENT % of 4 heads).
ABLATE_PERCENT, ABLATE_DRAWS, ABLATE_EVAL = 25.0, 20, 512
# "removes the ICL score": ablating the induction heads takes back at least this fraction of it (on average)
ICL_REMOVED_FRAC = 0.5
# Olsson's "coincides": the loss bump and the induction head's rise share a window. Here: the fitted
# midpoints lie within 10 % of the run's steps of each other.
COINCIDE_FRAC = 0.10


def _icl_onsets(run) -> list:
    """Per-seed onset of the ICL score's fall (late-token minus early-token loss), by change points."""
    from lab.analysis.stages import detect_stages
    curve = run.curve("icl_score")
    out = []
    for s in range(curve.shape[1]):
        t = detect_stages(run.steps, curve[:, s], direction="decrease", min_change=0.2)["transitions"]
        out.append(max(t, key=lambda x: abs(x["change"]))["onset"] if t else None)
    return out


def _strongest_induction_onset(run, seed: int):
    """Onset of the rise of the head with the highest final induction score in this seed."""
    scores = run.final("induction")[seed]                   # (L, H)
    l, h = np.unravel_index(np.argmax(scores), scores.shape)
    t = run.transitions(group_head=("induction", f"L{l}H{h}"))[seed]
    return (t["onset"] if t else None), f"L{l}H{h}"


def _smear_mix(run) -> np.ndarray:
    """(seeds, H) final sigma(alpha_h) of the smeared-key layer: the weight of each key's own position
    (1: unsmeared; 0: the previous position's key only)."""
    from lab.train.restore import load_run
    alpha = np.asarray(load_run(run.run_dir).params["blocks"][0]["attn"]["smear_alpha"], float)
    return 1 / (1 + np.exp(-alpha))


def _ablation(exp, run, depth: int) -> dict:
    """Test-time ablation of a trained run's final checkpoint, per seed: every induction head vs as many
    random heads (`induction`, `random`: ICL score, loss_repeat), and lab-ablate's top head per layer vs
    one random head per layer (`lab_ablate`: its whole result). A seed with no induction head has None."""
    import jax
    import jax.numpy as jnp
    from functools import partial

    from lab.analysis.ablation import ablate, evaluate_masks, head_stats, heads_text
    from lab.train.restore import load_run
    eval_size = ABLATE_EVAL if not exp.smoke else 32
    exp.say(f"layers{depth}: ablating the induction heads vs as many random heads, and lab-ablate's top "
            f"{ABLATE_PERCENT:g} % per layer")
    top = ablate(run.run_dir, kind="mean", top_percent=ABLATE_PERCENT, draws=ABLATE_DRAWS, eval_size=eval_size)
    loaded = load_run(run.run_dir)
    cfg, task, model = loaded.cfg, loaded.task, loaded.model
    L, H = model.n_layers, model.n_heads
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(0), eval_size)   # ablate()'s batch
    stats_fn = jax.jit(partial(head_stats, model, task, cfg.measures))
    eval_fn = jax.jit(partial(evaluate_masks, model, task, measures_cfg=cfg.measures))
    thr = run.summary["thresholds"].get("induction", 0.4)
    rng = np.random.default_rng(0)
    per_seed = []
    for i, s in enumerate(loaded.seeds):
        p = jax.tree.map(lambda x, i=i: x[i], loaded.params)
        means, scores, _, _ = stats_fn(p, batch)
        ind = np.asarray(scores) >= thr
        k = int(ind.sum())
        if k == 0:
            per_seed.append(None)
            continue
        rand = np.zeros((ABLATE_DRAWS, L, H), bool)
        for d in range(ABLATE_DRAWS):
            rand[d].flat[rng.choice(L * H, k, replace=False)] = True
        masks = np.concatenate([np.zeros((1, L, H), bool), ind[None], rand])
        loss, _, icl = (np.asarray(x, float) for x in eval_fn(p, batch, jnp.asarray(masks), means))
        per_seed.append({"seed": s, "heads": heads_text(ind), "n": k, "icl_none": icl[0], "icl_induction": icl[1],
                         "icl_random": icl[2:].tolist(), "loss_none": loss[0], "loss_induction": loss[1],
                         "loss_random": loss[2:].tolist(), "random_heads": [heads_text(m) for m in rand]})
    return {"per_seed": per_seed, "lab_ablate": top, "threshold": thr, "eval_size": eval_size,
            "draws": ABLATE_DRAWS, "step": top["step"], "kind": "mean"}


def _ablation_rows(result: dict) -> dict:
    """{seed value: {condition: row}} for none / top / random."""
    out = {}
    for r in result["rows"]:
        out.setdefault(r["seed"], {})[r["condition"]] = r
    return out


def _figure_ablation(results: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.4 * len(results), 4.0), squeeze=False)
    for ax, (depth, res) in zip(axes[0], results.items()):
        rows = _ablation_rows(res["lab_ablate"])
        labels = ["nothing\nablated", "every\ninduction head", "as many\nrandom heads",
                  "top head\nper layer", "random head\nper layer"]
        per = []
        for i, (s, r) in enumerate(rows.items()):
            e = res["per_seed"][i]
            per.append([r["none"]["icl_score"], e["icl_induction"] if e else np.nan,
                        np.mean(e["icl_random"]) if e else np.nan, r["top"]["icl_score"], r["random"]["icl_score"]])
        per = np.asarray(per, float)
        for row in per:
            ax.plot(range(len(labels)), row, color="grey", lw=0.8, alpha=0.6, marker="o", ms=3)
        counts = np.isfinite(per).sum(axis=0)                 # a condition no seed measured stays blank
        mean = np.where(counts > 0, np.nansum(per, axis=0) / np.maximum(counts, 1), np.nan)
        ax.plot(range(len(labels)), mean, color="black", lw=2, marker="s", label="mean over seeds")
        ax.axvspan(2.5, 4.5, color="tab:blue", alpha=0.06, lw=0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{depth}-layer: {res['kind']} ablation at step {res['step']}")
        ax.set_ylabel("ICL score (late − early token loss)")
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Test-time ablation: ICL score with every induction head ablated vs as many random "
                                  "heads (left), and lab-ablate's top head per layer (shaded; grey: one seed)")


def _figure(exp, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 6.4), sharex=True, squeeze=False)
    for j, (label, run) in enumerate(runs.items()):
        steps = run.steps
        ax = axes[0, j]
        ax.plot(steps, run.curve("loss_repeat"), color="tab:blue", alpha=0.7, lw=1.2)
        ax.plot(steps, run.curve("icl_score"), color="tab:purple", alpha=0.7, lw=1.2, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        for m in run.onsets():
            if m is not None:
                ax.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax.set_title(f"{label}-layer attention-only" if isinstance(label, int) else label)
        ax.set_ylabel("loss on repeat (—), ICL score (- -)" if j == 0 else "")
        ax2 = axes[1, j]
        ind = run.curve("induction").max(axis=(2, 3))       # strongest head per seed
        prev = run.curve("prev_token_corrected").max(axis=(2, 3))
        ax2.plot(steps, ind, color="tab:green", lw=1.2, alpha=0.8)
        ax2.plot(steps, prev, color="tab:orange", lw=1.2, alpha=0.8, ls="--")
        ax2.axhline(run.summary["thresholds"].get("induction", 0.4), color="grey", lw=0.6, ls=":")
        for m in run.onsets():
            if m is not None:
                ax2.axvline(m, color="tab:red", lw=0.8, alpha=0.6)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("training step")
        ax2.set_ylabel("max over heads: induction (—),\nprev-token corrected (- -)" if j == 0 else "")
    return save_figure(fig, path, "Induction heads need two layers, or smeared keys: loss, ICL score and head "
                                  "scores per seed (red: onset of each seed's loss transition)")


def main(argv=None):
    exp = Experiment("olsson_layers", "Induction heads need two layers", "Olsson et al. 2022", argv)
    seeds = exp.seeds(1, 5, 8)
    steps = exp.pick(30, 1500, 3000)
    runs = {}
    for depth in DEPTHS:
        control = ["model=attn_only_1l"] if depth == 1 else []     # the preset's model is attn_only_2l
        runs[depth] = exp.run(f"layers{depth}", [f"experiment={PRESET}", *control, f"model.n_layers={depth}",
                                                 f"train.seeds={seeds}", f"train.steps={steps}"])
    smeared = exp.run("smeared1", [f"experiment={SMEARED_PRESET}", f"train.seeds={seeds}", f"train.steps={steps}"])
    tol = COINCIDE_FRAC * steps
    claims = []
    for depth in (2, 3):
        run = runs[depth]
        names = run.summary["seeds"]
        loss_on = run.onsets()
        outcomes = run.summary.get("outcome_per_seed", [])
        claims.append(claim(
            f"phase_change_{depth}l", f"A {depth}-layer attention-only model shows a phase change in the repeated-part loss.",
            "seeds with a transition in loss_repeat (change points or sigmoid)",
            [m is not None for m in loss_on], "every seed", all(m is not None for m in loss_on),
            paper="a bump in the loss curve of every multi-layer model",
            note="; ".join(f"seed {names[i]}: {r['reason']}" for i, r in
                           enumerate(run.summary["phase"]["loss_repeat"]["stages"]) if loss_on[i] is None)))
        formed = [bool(f) if loss_on[i] is not None else None
                  for i, f in enumerate(run.summary.get("induction_head_formed", []))]
        claims.append(claim(
            f"induction_head_{depth}l",
            f"In the {depth}-layer model every seed whose loss has a transition forms an attention induction head.",
            "seeds with a head whose induction score (attention to the tokens after every earlier occurrence) "
            "rose and crossed the threshold, among seeds with a loss transition", formed,
            f"every such seed (threshold {run.summary['thresholds'].get('induction', 0.4)})",
            all_measured(formed, bool),
            paper="the loss bump is the formation of induction heads",
            note="; ".join(f"seed {names[i]}: {o}" for i, o in enumerate(outcomes) if o != "induction head")))
        ind = [_strongest_induction_onset(run, s)[0] for s in range(seeds)]
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_on, ind)]
        claims.append(claim(
            f"coincides_induction_{depth}l",
            f"In the {depth}-layer model the loss phase change coincides with the rise of the strongest induction head.",
            "|loss onset − strongest induction head's onset| (steps)", gaps,
            f"<= {tol:.0f} steps (10 % of the run) in every seed with both", all_measured(gaps, lambda g: g <= tol),
            note=measured_note(gaps)))
        icl = _icl_onsets(run)
        gaps = [abs(a - b) if a is not None and b is not None else None for a, b in zip(loss_on, icl)]
        claims.append(claim(
            f"coincides_icl_{depth}l",
            f"In the {depth}-layer model the in-context-learning score falls at the loss phase change.",
            "|loss onset − ICL-score onset| (steps)", gaps, f"<= {tol:.0f} steps in every seed with both",
            all_measured(gaps, lambda g: g <= tol), kind=CONTROL,
            note="a control on this task: the late position is a repeat target in every sequence and the early "
                 "one almost never, so the ICL score is the repeat loss minus a constant and must fall with it"))
        order = []
        for s in range(seeds):
            prev, _ = run.first_formed_onset("prev_token", s)
            ind_s, _ = run.first_formed_onset("induction", s, min_layer=1)
            order.append(prev - ind_s if prev is not None and ind_s is not None else None)
        log_every = run.cfg.train.log_every
        claims.append(claim(
            f"prev_before_induction_{depth}l",
            f"In the {depth}-layer model the previous-token head forms no later than the induction head.",
            "onset of the first previous-token head − onset of the first induction head (steps; change-point "
            "onsets, where each score starts to rise)", order,
            f"95 % CI of the mean at most +{log_every} (one log interval)",
            ci_beyond(order, log_every, "below", strict=False),
            paper="previous-token heads form during the same phase change as the induction heads they feed",
            note="; ".join(filter(None, [measured_note(order), "per seed: " + ", ".join(
                "n/a" if o is None else f"{o:+.0f}" for o in order)]))))
        comp = run.summary.get("composition") or {}
        prev_final = run.final("prev_token_corrected")                  # (seeds, L, H)
        links = []
        for s in range(seeds):
            _, head = _strongest_induction_onset(run, s)
            if head not in comp or not run.summary["induction_head_formed"][s]:
                links.append(None)
                continue
            partner = comp[head]["partner_per_seed"][s]                  # "L0H<h>"
            links.append(partner == f"L0H{int(np.argmax(prev_final[s, 0]))}")
        claims.append(claim(
            f"k_composition_{depth}l",
            f"In the {depth}-layer model the strongest induction head K-composes most with the strongest "
            "layer-0 previous-token head.",
            "seeds (with an induction head) whose strongest induction head's largest K-composition score is with "
            "the layer-0 head of highest previous-token score", links, "every such seed", all_measured(links, bool),
            paper="Elhage et al. 2021: the induction circuit is a previous-token head K-composing with an induction head",
            note=measured_note(links)))
    one = runs[1]
    max_ind = one.final("induction").max(axis=(1, 2))
    thr = one.summary["thresholds"].get("induction", 0.4)
    one_on = one.onsets()
    claims.append(claim(
        "no_phase_change_1l", "A 1-layer attention-only model shows no phase change in the repeated-part loss.",
        "seeds with a transition in loss_repeat", [m is not None for m in one_on],
        "no seed", all(m is None for m in one_on), kind=CONTROL,
        note="architecture: one layer has no earlier layer to K-compose with, so no induction head and no bump"))
    claims.append(claim(
        "no_induction_head_1l", "A 1-layer attention-only model forms no induction head.",
        "final induction score of its strongest head", max_ind, f"< {thr} in every seed",
        bool(np.all(max_ind < thr)), kind=CONTROL,
        paper="induction heads need a previous-token head in an earlier layer (K-composition)",
        note="architecture (see above)"))
    claims += _smeared_claims(smeared, one, seeds, runs[2])
    ablations = {depth: _ablation(exp, runs[depth], depth) for depth in (2, 3)}
    for depth, res in ablations.items():
        claims += _ablation_claims(runs[depth], res, depth)
    figs = [_figure(exp, {1: one, "1-layer attention-only, smeared keys": smeared, 2: runs[2], 3: runs[3]},
                    exp.figure_path("layers.png")),
            _figure_ablation(ablations, exp.figure_path("ablation.png"))]
    exp.finish(claims, figs, extra={
        "final_loss_repeat": {**{d: runs[d].final("loss_repeat").tolist() for d in DEPTHS},
                              "smeared1": smeared.final("loss_repeat").tolist()},
        "final_icl_score": {**{d: runs[d].final("icl_score").tolist() for d in DEPTHS},
                            "smeared1": smeared.final("icl_score").tolist()},
        "smear_mix_final": _smear_mix(smeared).tolist(),
        "ablation": {d: {"per_seed": r["per_seed"], "threshold": r["threshold"], "eval_size": r["eval_size"],
                         "step": r["step"], "lab_ablate": {k: r["lab_ablate"][k] for k in (
                             "summary", "top_heads", "kind", "n_per_layer", "draws", "icl_positions")}}
                     for d, r in ablations.items()}})


def _trained(run) -> list:
    return list(run.summary.get("trained_per_seed") or [True] * len(run.summary["seeds"]))


def _smeared_claims(sm, one, seeds: int, two=None) -> list:
    """Olsson et al.'s argument 2: one layer with smeared keys forms an induction head and a phase change."""
    ok, names = _trained(sm), sm.summary["seeds"]
    untrained = "" if any(ok) else ("no seed of the smeared-key model trained (final loss_repeat not 5 % below "
                                    "chance): a run that did not train refutes nothing")
    skipped = "; ".join(f"seed {names[i]} did not train (not measured)" for i in range(seeds) if not ok[i])
    on = sm.onsets()
    has_on = [m is not None if ok[i] else None for i, m in enumerate(on)]
    stages = sm.summary["phase"]["loss_repeat"]["stages"]
    out = [claim(
        "phase_change_smeared_1l",
        "A 1-layer attention-only model with smeared keys shows a phase change in the repeated-part loss.",
        "seeds with a transition in loss_repeat (change points or sigmoid), among seeds that trained", has_on,
        "every such seed", all_measured(has_on, bool), not_measured=untrained,
        paper="Olsson et al. 2022 (argument 2): with smeared keys a 1-layer model gets the phase change that "
              "otherwise needs two layers",
        note="; ".join(filter(None, [skipped] + [f"seed {names[i]}: {stages[i]['reason']}" for i in range(seeds)
                                                  if has_on[i] is False] + [
            "onset per seed (steps): " + ", ".join("n/a" if m is None else f"{m:.0f}" for m in on)
            + ("; the 2-layer model's: " + ", ".join("n/a" if m is None else f"{m:.0f}" for m in two.onsets())
               if two is not None else "")
            + " (σ(α) starts at 0.5, so the smeared model's plateau is short)"])))]
    formed = [bool(f) if ok[i] else None for i, f in enumerate(sm.summary.get("induction_head_formed", []))]
    out.append(claim(
        "induction_head_smeared_1l", "A 1-layer attention-only model with smeared keys forms an induction head.",
        "seeds with a head whose induction score rose and crossed the threshold, among seeds that trained", formed,
        f"every such seed (threshold {sm.summary['thresholds'].get('induction', 0.4)})", all_measured(formed, bool),
        not_measured=untrained, paper="the plain 1-layer model cannot (no previous-token head to K-compose with); "
                                      "smearing gives each key its previous token",
        note=skipped))
    diff = [float(a - b) if ok[i] else None for i, (a, b) in enumerate(zip(sm.final("icl_score"), one.final("icl_score")))]
    out.append(claim(
        "icl_smeared_vs_plain_1l",
        "The smeared-key 1-layer model ends with a lower (more in-context) ICL score than the plain 1-layer model.",
        "final ICL score, smeared − plain 1-layer model (same seed values; nats)", diff, "95 % CI of the mean below 0",
        ci_beyond(diff, 0.0, "below"), not_measured=untrained,
        note="final ICL score smeared " + ", ".join(f"{v:.2f}" for v in sm.final("icl_score"))
             + "; plain " + ", ".join(f"{v:.2f}" for v in one.final("icl_score"))))
    mix = _smear_mix(sm)                                       # (seeds, H)
    ind = sm.final("induction")[:, 0]                          # (seeds, H): the one layer
    head_mix = [float(mix[i, int(np.argmax(ind[i]))]) if formed[i] else None for i in range(seeds)]
    out.append(claim(
        "smeared_head_reads_previous_key",
        "The smeared-key model's induction head weights the previous position's key above its own: its σ(α) "
        "falls below the 0.5 it starts at.",
        "final σ(α_h) of the strongest induction head (weight of the key's own position)", head_mix,
        "95 % CI of the mean below 0.5", ci_beyond(head_mix, 0.5, "below"), not_measured=untrained,
        paper="the mechanism smearing offers: the key at j carries token j−1, which the query matches",
        note="σ(α) per seed and head: " + "; ".join(" ".join(f"{m:.2f}" for m in row) for row in mix)
             + ". " + measured_note(head_mix)))
    return out


def _ablation_claims(run, res: dict, depth: int) -> list:
    """Olsson et al.'s argument 3: ablating the induction heads at test time removes the ICL score."""
    ok = _trained(run)
    removed, excess, why, heads = [], [], [], []
    for i, e in enumerate(res["per_seed"]):
        name = run.summary["seeds"][i]
        if not ok[i] or e is None or e["icl_none"] >= 0:
            removed.append(None)
            excess.append(None)
            why.append(f"seed {name}: " + ("did not train" if not ok[i] else "no induction head" if e is None
                                           else f"no ICL score to remove ({e['icl_none']:+.2f})"))
            continue
        removed.append((e["icl_induction"] - e["icl_none"]) / -e["icl_none"])
        excess.append(e["icl_induction"] - float(np.mean(e["icl_random"])))
        heads.append(f"seed {name}: {e['heads']}")
    lab = res["lab_ablate"]
    rows = _ablation_rows(lab)
    top_frac = [r["top"]["delta_icl"] / -r["none"]["icl_score"] for r in rows.values() if r["none"]["icl_score"] < 0]
    setting = (f"{res['kind']} ablation of the final checkpoint on {res['eval_size']} fresh sequences; induction heads "
               f"(score >= {res['threshold']} on that batch): " + "; ".join(heads))
    untrained = "" if any(ok) else f"no seed of the {depth}-layer model trained"
    return [
        claim(f"ablation_removes_icl_{depth}l",
              f"Ablating every induction head of the {depth}-layer model at test time removes most of its ICL score.",
              "fraction of the unablated ICL score removed ((ICL ablated − ICL) / −ICL)", removed,
              f"95 % CI of the mean above {ICL_REMOVED_FRAC}", ci_beyond(removed, ICL_REMOVED_FRAC, "above"),
              not_measured=untrained, paper="Olsson et al. 2022 (argument 3): knocking out induction heads at test "
                                            "time greatly reduces in-context learning",
              note="; ".join(filter(None, [setting, measured_note(removed), "; ".join(why),
                                           "lab-ablate's top head per layer alone (1 of 4) removes "
                                           + ", ".join(f"{f:.2f}" for f in top_frac)
                                           + " of it: the layer-1 heads are redundant induction heads"]))),
        claim(f"ablation_induction_vs_random_{depth}l",
              f"In the {depth}-layer model ablating the induction heads raises the ICL score more than ablating as "
              "many random heads.",
              "ICL(induction heads ablated) − mean ICL(as many heads drawn from all heads ablated) (nats)", excess,
              "95 % CI of the mean above 0", ci_beyond(excess, 0.0, "above"), not_measured=untrained,
              note="; ".join(filter(None, [f"{res['draws']} random draws per seed", measured_note(excess)])))]


if __name__ == "__main__":
    script_main(lambda: main())
