"""Copy direction at toy scale, at matched tokens against a snippet-free stream (Sabry & Belz 2025,
"Induction Signatures Are Not Enough: A Matched-Compute Study of Load-Bearing Structure in
In-Context Learning", the Bi-Induct paper, arXiv 2509.22947).

Bi-Induct interleaves short directional copy snippets into a natural pretraining stream: forward copy
[S, SEP, S] (induction), backward copy [S, SEP, reverse(S)] (anti-induction, a directional control)
or a balanced mix, and compares each with natural-only training at matched compute. What the paper
reports (0.13B-1B decoder-only models on the Pile, span length L = 20):
  - Bi-Induct reliably increases induction-head activity (over natural-only training);
  - despite explicit backward-copy cues, anti-induction scores stay near zero at every scale;
  - removing the top 2 % induction heads per layer harms ICL more than removing as many random heads
    per layer, with the largest relative drop in the natural-only models ("eliciting a mechanism is
    not the same as making it load-bearing").
Their recipe (model cards of the released checkpoints, huggingface.co/MohammedSabry/biinduct-*):
AdamW (0.9, 0.999, weight decay 0.1), peak lr 1e-3, 3 % warmup then cosine decay, context 1024,
snippets at an initial mix ratio of 50 % annealed linearly to 0; 12 heads per layer at 0.13B.

Here, four streams trained on the same tokens (same model, steps x batch x seq_len 64) by the
lab's `task=copy` on a structured background, `task.background=markov`: every sequence walks its own
sparse Markov chain over 64 tokens (each token has 2 successors), so half of the stream's tokens are
predictable from the context once their predecessor has been seen, as natural text's repeats are:
  - baseline: the stream alone (task.n_snippets=0), the paper's natural-only model;
  - forward / balanced / backward: 3 snippets of 4-8 tokens per sequence written into that same
    stream, task.backward_frac 0 / 0.5 / 1 (the only difference from the baseline is the snippets).
The default 2-layer x 4-head attention-only model, Adam at lr 3e-3 (at 1e-3 the copy loss stays on its
order-blind plateau for 1500 steps). Per head, on the task's direction-balanced probe: `induction`
(attention to prev_occ + 1 on forward second copies), `anti_induction` (to prev_occ - 1 on backward
ones, baseline-corrected) and `backward_match` (to prev_occ itself on backward ones: the route a
causal 2-layer model takes to copy backwards, a duplicate-token match reading the token before it).

Ablation (`lab.analysis.ablation.ablate`, mean ablation of `blocks.{l}.attn.z`): every model is scored
on the same balanced copy probe (256 sequences of the markov stream with 3 snippets each, half of them
backward); the ICL measure is the loss and accuracy on copied tokens (`loss_copy`, `acc_copy`). The
heads ranked per layer: forward mix and baseline by the induction score; backward mix by
`backward_match` (a backward-trained model has no induction heads to rank: ranking it by induction
would pick near-noise); balanced mix by each head's max of the two (it is trained to copy both ways,
and a head doing either is a copy head). The top head per layer is compared with one random head per
layer, 20 draws, paired per seed.

Fraction ablated: the paper's "top 2 % per layer" is one head per layer at any head count below 50
(2 % of 12 heads is 0.24, so at 0.13B it was 1 of 12 = 8 % per layer). With 4 heads per layer the
smallest ablation is 1 of 4 = 25 % per layer (2 of the 8 heads); 2 % cannot be taken, so the claims,
notes and figures say "1 of 4 heads per layer (25 %)".

Deviations, and why: toy scale (a 2-layer attention-only model, 64-token sequences, 4-8-token
snippets) so five seeds per condition fit a CPU; a synthetic structured stream in place of the Pile
(no natural text at this scale); a constant snippet rate (3 per sequence) rather than 50 % annealed to
0, and Adam at a constant lr 3e-3 rather than AdamW with warmup and cosine decay (the lab's copy
recipe that trains within the budget); the ICL measure is copy loss/accuracy on held-out snippets
rather than few-shot benchmark accuracy; 1 of 4 heads per layer rather than 1 of 12.

    python -m experiments.bi_induct_copy            # 4 streams x 5 seeds x 1500 steps
    python -m experiments.bi_induct_copy --full     # 4 streams x 8 seeds x 4000 steps
`--smoke` trains the baseline and the balanced mix for 30 steps; the others' claims are then "not measured".
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json

import numpy as np

from experiments.common import (CONDITION, CONTROL, Experiment, all_measured, ci_beyond, claim, save_figure,
                                script_main, trained)

ORDER = 4                  # position in `make experiments` / `python -m experiments` and in the README's table
PRESET = "bi_induct"       # configs/experiment/bi_induct.yaml: task=copy on a markov background, lr 3e-3
# The four streams, matched in tokens: the snippet-free baseline and the three Bi-Induct mixes.
STREAMS = {"baseline": ["task.n_snippets=0"], "forward": ["task.backward_frac=0.0"],
           "balanced": ["task.backward_frac=0.5"], "backward": ["task.backward_frac=1.0"]}
MIXES = ("forward", "balanced", "backward")
# What each model's top heads are ranked by (see the docstring): each head's max over these measures.
RANK_BY = {"baseline": ("induction",), "forward": ("induction",), "balanced": ("induction", "backward_match"),
           "backward": ("backward_match",)}
RANK_TEXT = {("induction",): "induction score", ("backward_match",): "backward_match",
             ("induction", "backward_match"): "max(induction, backward_match)"}
TOP_PERCENT = 2.0          # the paper's "top 2 % per layer": rounds up to one head per layer
# ICL probes (256 held-out sequences of the markov stream with 3 snippets each), by copy direction. Each model
# is ablated on the directions it was trained to copy (the baseline on forward copies: its stream's repeats run
# forward), and every model on the forward probe, the common probe whose relative drops are compared (the
# paper's ICL probes are the same for every model).
PROBES = {"forward": {"backward_frac": 0.0, "n_snippets": 3}, "balanced": {"backward_frac": 0.5, "n_snippets": 3},
          "backward": {"backward_frac": 1.0, "n_snippets": 3}}
OWN_PROBE = {"baseline": "forward", "forward": "forward", "balanced": "balanced", "backward": "backward"}
COMMON_PROBE = "forward"
DRAWS = 20                 # random head sets per seed
DEVIATIONS = ("toy scale (2-layer x 4-head attention-only, 64-token sequences, 4-8-token snippets; the paper: 0.13B-1B "
              "on the Pile, L = 20); a synthetic markov stream for natural text (none at this scale; a uniform stream "
              "without snippets has nothing to learn); a constant snippet rate and Adam at a constant lr 3e-3 (the "
              "paper: 50 % annealed to 0, AdamW 1e-3 with warmup and cosine), the lab's copy recipe that trains in the "
              "CPU budget; copy loss/accuracy on held-out snippets for benchmark ICL; 1 of 4 heads per layer (25 %), "
              "since 2 % of 4 heads rounds up to one head (the paper's 2 % was one head per layer too)")
# Thresholds fixed from the paper's wording before any result was seen:
INDUCTION_THR = 0.4        # a head "forms" / exists to rank: the lab's head threshold (measures.phase)
NEAR_ZERO = 0.1            # "anti-induction scores remain near zero": strongest head below 0.1 (a perfect head scores 1)
ASYMMETRY = 0.3            # "strong forward/backward asymmetry": induction beats anti-induction by >= 0.3


def _ablate(exp, run, stream, probe, draws, eval_size):
    """lab.analysis.ablation.ablate on the run's checkpoint, ranked by RANK_BY[stream] (on the balanced
    probe, which has both directions' spans) and scored on PROBES[probe]; cached in the run directory as
    bi_induct_ablation_<probe>.json."""
    from lab.analysis.ablation import ablate
    path = run.run_dir / f"bi_induct_ablation_{probe}.json"
    settings = {"kind": "mean", "top_percent": TOP_PERCENT, "draws": draws, "eval_size": eval_size}
    wanted = {**settings, "rank_by": list(RANK_BY[stream]), "eval_task": PROBES[probe], "step": int(run.steps[-1])}
    if path.exists():
        cached = json.loads(path.read_text())
        if all(cached.get(k) == v for k, v in wanted.items()):
            return cached
    exp.say(f"{run.label}: ablating the top head per layer by {RANK_TEXT[RANK_BY[stream]]} vs random, {draws} draws, "
            f"on {probe} copies")
    result = ablate(run.run_dir, seed=0, eval_seed=0, rank_by=RANK_BY[stream], eval_task=PROBES[probe], **settings)
    path.write_text(json.dumps(result))
    return result


def _per_seed(result):
    """Per seed: loss_copy and acc_copy unablated (none), with the top heads, and with random heads
    (mean over draws); and the strongest ranking score."""
    out = {k: [] for k in ("none", "top", "random", "acc_none", "acc_top", "acc_random")}
    lk, ak = result["metric"], result["accuracy"]
    for r in result["rows"]:
        if r["condition"] in ("none", "top", "random"):
            out[r["condition"]].append(r[lk])
            out["acc_" + r["condition"]].append(r[ak])
    out["max_rank_score"] = [float(np.max(s)) for s in result["induction_scores"]]
    out["top_heads"] = [" ".join(result["top_heads"][str(s)]) for s in result["seeds"]]
    return out


def _heads_label(n_layer, n_heads):
    return f"{n_layer} of {n_heads} heads per layer ({100 * n_layer / n_heads:.0f} %)"


def _head_figure(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [("induction", "induction score\n(→ prev_occ+1, forward copies)"),
            ("anti_induction", "anti-induction score, corrected\n(→ prev_occ−1 minus matched offset)"),
            ("backward_match", "backward match\n(→ prev_occ, backward copies)")]
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(3.6 * len(runs), 2.2 * len(rows) + 0.8),
                             squeeze=False, layout="constrained")
    for j, (stream, run) in enumerate(runs.items()):
        for i, (key, label) in enumerate(rows):
            ax = axes[i, j]
            mean = run.final(key).mean(axis=0)                       # (L, H), mean over seeds
            im = ax.imshow(mean, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            L, H = mean.shape
            for l in range(L):
                for h in range(H):
                    ax.text(h, l, f"{mean[l, h]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if mean[l, h] < 0.6 else "black")
            ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
            ax.set_yticks(range(L), [f"L{l}" for l in range(L)])
            if i == 0:
                ax.set_title(f"{stream} ({' '.join(STREAMS[stream]).replace('task.', '')})", fontsize=9.5)
            if j == 0:
                ax.set_ylabel(label, fontsize=8.5)
    fig.colorbar(im, ax=axes, shrink=0.6, label="mean attention on the target key")
    n = next(iter(runs.values())).final("induction").shape[0]
    fig.suptitle(f"Per-head copy telemetry at the end of training (balanced probe), mean over {n} seed(s)",
                 fontsize=11)
    return save_figure(fig, path)


def _ablation_figure(abl, common, path, heads_label, chance):
    """Beside the paper's ablation figure: per training stream, the ICL measure (copy loss on the
    directions it was trained on) unablated, with the top heads and with as many random heads removed;
    and the relative drop in copy accuracy on the common forward-copy probe."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    streams = list(abl)
    xs = np.arange(len(streams))
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3), layout="constrained")
    ax = axes[0]
    for off, cond, colour, label in ((-0.27, "none", "0.65", "none"),
                                     (0, "top", "tab:red", f"top heads ({heads_label})"),
                                     (0.27, "random", "tab:blue", "random heads (same number, mean of draws)")):
        vals = [np.mean(abl[s][cond]) for s in streams]
        ax.bar(xs + off, vals, 0.27, color=colour, edgecolor="black", lw=0.6, label=label)
        for x, s in zip(xs + off, streams):
            ax.scatter(np.full(len(abl[s][cond]), x), abl[s][cond], color="black", s=10, zorder=3)
    ax.axhline(chance, ls="--", color="0.3", lw=1, label=f"chance (ln V = {chance:.2f})")
    short = {("induction",): "induction", ("backward_match",): "backward_match", ("induction", "backward_match"): "max of both"}
    ax.set_xticks(xs, [f"{s}\ntop by {short[RANK_BY[s]]}\non {OWN_PROBE[s]} copies" for s in streams], fontsize=7.5)
    ax.set_ylabel("loss on copied tokens (nats)")
    ax.set_ylim(0, chance * 1.45)
    ax.set_title("ICL measure after mean ablation (bars: mean; dots: seeds)", fontsize=10)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left", ncol=2)
    ax = axes[1]
    streams = [s for s in streams if s != "backward"]   # it does not copy forward: nothing to lose on this probe
    xs = np.arange(len(streams))
    for off, cond, colour, label in ((-0.18, "top", "tab:red", "top heads"), (0.18, "random", "tab:blue", "random heads")):
        rel = [_relative_drop(common[s], cond) for s in streams]
        ax.bar(xs + off, [np.nanmean(r) if np.isfinite(r).any() else 0.0 for r in map(np.asarray, rel)], 0.36, color=colour, alpha=0.8, edgecolor="black", lw=0.6,
               label=label)
        for x, r in zip(xs + off, rel):
            ax.scatter(np.full(len(r), x), r, color="black", s=10, zorder=3)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(xs, streams)
    ax.set_ylabel("relative drop in copy accuracy\n(acc none − acc ablated) / acc none")
    ax.set_title(f"Relative drop in {COMMON_PROBE}-copy accuracy, every model on the same probe\n"
                 "(the backward model, which does not copy forward, left out)", fontsize=9.5)
    ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Ablating the top copy heads per layer vs as many random heads, per training stream (matched tokens)",
                 fontsize=11)
    return save_figure(fig, path)


def _relative_drop(a, cond):
    none, abl = np.asarray(a["acc_none"], float), np.asarray(a[f"acc_{cond}"], float)
    return ((none - abl) / np.where(none > 0, none, np.nan)).tolist()


def _curve_figure(runs, path, bag_loss, chance):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(3.9 * len(runs), 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (stream, run) in zip(axes[0], runs.items()):
        for key, colour, ls, label in (("loss_copy_forward", "tab:green", "-", "forward copies"),
                                       ("loss_copy_backward", "tab:purple", "--", "backward copies"),
                                       ("loss_background", "tab:orange", ":", "stream (fresh tokens)")):
            ax.plot(run.steps, run.curve(key), color=colour, ls=ls, lw=1.0, alpha=0.8)
            ax.plot([], [], color=colour, ls=ls, label=label)
        ax.axhline(bag_loss, color="grey", ls="-.", lw=0.8, label="order-blind plateau E[ln n]")
        ax.axhline(chance, color="0.3", ls="--", lw=0.8, label=f"chance ln V = {chance:.2f}")
        ax.set_title(f"trained on {stream}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(0, chance * 1.08)
    axes[0, 0].set_ylabel("loss on the balanced probe (nats)")
    axes[0, 0].legend(fontsize=7.5, frameon=False, loc="lower left")
    fig.suptitle("Copy loss per direction and the stream's own loss during training (one line per seed)", fontsize=11)
    return save_figure(fig, path)


def main(argv=None):
    exp = Experiment("bi_induct_copy", "Copy direction at toy scale", "Sabry & Belz 2025 (Bi-Induct)", argv)
    seeds = exp.seeds(1, 5, 8)
    steps = exp.pick(30, 1500, 4000)
    streams = exp.pick(["baseline", "balanced"], list(STREAMS))      # smoke: two compiles of the training step
    draws, eval_size = exp.pick(4, DRAWS), exp.pick(32, 256)
    runs = {}
    for stream in streams:
        runs[stream] = exp.run(stream, [f"experiment={PRESET}", *STREAMS[stream], f"train.seeds={seeds}",
                                        f"train.steps={steps}"])
    raw = {s: _ablate(exp, run, s, OWN_PROBE[s], draws, eval_size) for s, run in runs.items()}
    abl = {s: _per_seed(r) for s, r in raw.items()}                       # each model on its own directions
    common = {s: _per_seed(_ablate(exp, run, s, COMMON_PROBE, draws, eval_size)) if OWN_PROBE[s] != COMMON_PROBE
              else abl[s] for s, run in runs.items()}                     # every model on the forward probe
    chance = next(iter(raw.values()))["chance_loss"]
    first = next(iter(runs.values()))
    n_heads = first.cfg.model.n_heads
    from lab.analysis.ablation import n_per_layer
    n_layer = n_per_layer(n_heads, TOP_PERCENT)
    heads_label = _heads_label(n_layer, n_heads)
    t = first.cfg.task
    bag = float(np.mean(np.log(np.arange(t.min_len, t.max_len + 1))))   # the order-blind plateau E[ln n]

    def fmt(xs):
        return ", ".join("n/a" if x is None or not np.isfinite(x) else f"{x:.2f}" for x in xs)

    def only_trained(stream, values):
        """Per seed: the value, or None for a seed that did not train (its claim is not measured there)."""
        return [v if ok else None for v, ok in zip(values, did_train(stream))]

    def max_head(stream, key):
        return only_trained(stream, runs[stream].final(key).max(axis=(1, 2)).tolist()) if stream in runs else [None]

    def last_layer(stream, key):
        return only_trained(stream, runs[stream].final(key)[:, -1].max(axis=-1).tolist()) if stream in runs else [None]

    def untrained(stream):
        if stream not in runs:
            return "stream not run in this mode"
        return "" if any(did_train(stream)) else f"no seed of the {stream} stream trained (loss not below chance)"

    def did_train(stream):
        """Per seed: the run trained (its own trained check: loss_copy, or the stream's loss for the baseline)."""
        r = runs[stream]
        check = r.summary.get("trained_check", {}).get("metric") or ("loss_background" if stream == "baseline"
                                                                     else "loss_copy")
        return trained(r.final(check), r.summary["chance_loss"])

    def strongest(stream, key):
        out = []
        for v in runs[stream].final(key):
            l, h = np.unravel_index(np.argmax(v), v.shape)
            out.append(f"L{l}H{h} {v[l, h]:.2f}")
        return "; ".join(out)

    claims = []
    # 1. Induction signatures: forward and balanced snippets form induction heads, above the baseline's.
    for mix in ("forward", "balanced"):
        ind = max_head(mix, "induction")
        note = ""
        if mix in runs:
            note = (f"strongest induction head per seed: {strongest(mix, 'induction')}; final loss_copy per seed "
                    f"{fmt(runs[mix].final('loss_copy'))} (order-blind plateau E[ln n] = {bag:.2f}, chance {chance:.2f})")
            stuck = [s for s, x in enumerate(ind) if x is not None and x < INDUCTION_THR]
            if stuck:
                note += (f". Seed(s) {stuck} formed no induction head within {steps} steps: the plateau before the copy "
                         "circuit varies in length by seed; this is a statement about this many steps")
        claims.append(claim(
            f"induction_head_{mix}", f"Training with {mix} copy snippets forms an induction head.",
            "final induction score of the strongest head, per seed", ind, f">= {INDUCTION_THR} in every seed",
            all_measured(ind, lambda x: x >= INDUCTION_THR), not_measured=untrained(mix),
            paper="Bi-Induct (forward and balanced) reliably increases induction-head activity, 0.13B-1B", note=note))
    for mix in ("forward", "balanced"):
        if mix in runs and "baseline" in runs:
            diff = [None if a is None or b is None else a - b
                    for a, b in zip(max_head(mix, "induction"), max_head("baseline", "induction"))]
            note = (f"strongest induction score per seed: {mix} {fmt(max_head(mix, 'induction'))}; baseline (same "
                    f"tokens, no snippets) {fmt(max_head('baseline', 'induction'))}. Seeds are independent trainings "
                    "paired by index; the interval of the mean difference is that of two independent means")
        else:
            diff, note = [None], "stream not run in this mode"
        claims.append(claim(
            f"snippets_raise_induction_{mix}",
            f"At matched tokens, training with {mix} snippets gives a stronger induction head than the snippet-free stream.",
            f"max induction score ({mix}) − max induction score (baseline), per seed", diff,
            "95 % CI of the mean difference above 0", ci_beyond(diff, 0.0, "above"),
            not_measured=untrained(mix) or untrained("baseline"),
            paper="Bi-Induct reliably increases induction-head activity relative to natural-only training", note=note))
    # 2. Anti-induction stays near zero.
    for mix in ("backward", "balanced"):
        anti = last_layer(mix, "anti_induction")
        note, not_measured = "stream not run in this mode", untrained(mix)
        if mix in runs:
            r = runs[mix]
            note = (f"baseline-corrected score (attention to prev_occ−1 minus attention to a matched random offset), "
                    f"last layer; layer 0: {fmt(r.final('anti_induction')[:, 0].max(axis=-1).tolist())} (a layer-0 head "
                    f"cannot match content, so its score is positional). Raw last-layer score: "
                    f"{fmt(r.final('anti_induction_raw')[:, -1].max(axis=-1).tolist())}. The causal route to a backward "
                    f"copy, attention to prev_occ itself (backward_match, last layer): {fmt(last_layer(mix, 'backward_match'))}. "
                    f"Final loss on backward copies per seed {fmt(r.final('loss_copy_backward').tolist())} vs "
                    f"order-blind plateau {bag:.2f}")
        claims.append(claim(
            f"anti_induction_near_zero_{mix}",
            f"Despite backward-copy cues, anti-induction scores stay near zero when training on the {mix} mix.",
            "final baseline-corrected anti-induction score of the strongest last-layer head, per seed", anti,
            f"< {NEAR_ZERO} in every seed", all_measured(anti, lambda x: x < NEAR_ZERO),
            paper="anti-induction scores remain near zero across scales despite explicit backward-copy cues",
            note=note, not_measured=not_measured))
    gap = [None if a is None or b is None else a - b
           for a, b in zip(max_head("balanced", "induction"), last_layer("balanced", "anti_induction"))]
    claims.append(claim(
        "asymmetry_balanced",
        "With forward and backward snippets equally frequent, the strongest induction head far outscores the "
        "strongest anti-induction head.",
        "max induction − max last-layer corrected anti-induction score (balanced mix), per seed", gap,
        f">= {ASYMMETRY} in every seed", all_measured(gap, lambda x: x >= ASYMMETRY),
        not_measured=untrained("balanced"), paper="a strong forward/backward asymmetry"))
    # 3. Ablation: top heads per layer vs as many random heads, on the common ICL probe.
    usable = {}
    for stream in STREAMS:
        rank = RANK_TEXT[RANK_BY[stream]]
        text = (f"In the model trained on the {stream} stream, ablating the top head per layer by {rank} "
                f"({heads_label}) raises the copy loss more than ablating as many random heads per layer.")
        quantity = (f"loss_copy(top) − mean loss_copy(random), {heads_label}, mean ablation, on {OWN_PROBE[stream]} "
                    "copies, per seed")
        paper = ("removing the top 2 % induction heads per layer harms ICL more than matched random ablations "
                 "(at 0.13B: 1 of 12 heads per layer)")
        threshold = "95 % CI of the mean paired difference above 0 (seeds that trained, with a head to rank)"
        if stream not in abl:
            claims.append(claim(f"ablation_top_vs_random_{stream}", text, quantity, [None], threshold, None,
                                paper=paper, not_measured="stream not run in this mode"))
            continue
        a = abl[stream]
        diff = (np.asarray(a["top"]) - np.asarray(a["random"])).tolist()
        ok_train, score = did_train(stream), a["max_rank_score"]
        weak = [s for s, (tr, x) in enumerate(zip(ok_train, score)) if not tr or x < INDUCTION_THR]
        usable[stream] = [s for s in range(len(diff)) if s not in weak]
        diff = [None if s in weak else d for s, d in enumerate(diff)]
        note = (f"top heads per seed: {'; '.join(a['top_heads'])} (by {rank}; strongest {fmt(score)}); loss_copy on the "
                f"{OWN_PROBE[stream]} probe per seed: none {fmt(a['none'])}, top {fmt(a['top'])}, random (mean of {draws} draws) "
                f"{fmt(a['random'])}")
        if weak:
            note += (f". Seed(s) {weak} left out: not trained, or no head with {rank} >= {INDUCTION_THR} to rank "
                     "(its 'top' head would be picked by a near-noise score)")
        claims.append(claim(
            f"ablation_top_vs_random_{stream}", text, quantity, diff, threshold, ci_beyond(diff, 0.0, "above"),
            not_measured="" if usable[stream] else "no seed trained with a head to rank", paper=paper, note=note))
    # 4. The relative drop is largest in the snippet-free (natural-only) model.
    for mix in MIXES:
        if mix == "backward" and mix in common:   # it does not copy forward: no forward ICL to lose
            claims.append(claim(
                f"relative_drop_largest_in_baseline_vs_{mix}",
                "Ablating the top heads per layer costs the snippet-free model a larger relative share of its copy "
                f"accuracy than the model trained on the {mix} mix.",
                f"relative acc_copy drop on {COMMON_PROBE} copies (baseline) − the same ({mix})", [None],
                "95 % CI of the mean difference above 0", None,
                not_measured=f"the backward-trained model does not copy forward (acc_copy on forward copies "
                             f"{fmt(common[mix]['acc_none'])}, loss {fmt(common[mix]['none'])} nats), so it has no "
                             "forward ICL to lose; its own direction's ablation is the claim above",
                paper="the largest relative drop occurs in the natural-only models"))
            continue
        if mix in common and "baseline" in common:
            base_rel, mix_rel = _relative_drop(common["baseline"], "top"), _relative_drop(common[mix], "top")
            diff = [b - m if s in usable["baseline"] and s in usable[mix] else None
                    for s, (b, m) in enumerate(zip(base_rel, mix_rel))]
            note = (f"on the common {COMMON_PROBE}-copy probe; relative drop in acc_copy with the top heads ablated, per "
                    f"seed: baseline {fmt(base_rel)} (acc none {fmt(common['baseline']['acc_none'])}); {mix} "
                    f"{fmt(mix_rel)} (acc none {fmt(common[mix]['acc_none'])}); random heads: baseline "
                    f"{fmt(_relative_drop(common['baseline'], 'random'))}, {mix} "
                    f"{fmt(_relative_drop(common[mix], 'random'))}. loss_copy on forward copies, none -> top: baseline "
                    f"{fmt(common['baseline']['none'])} -> {fmt(common['baseline']['top'])}; {mix} {fmt(common[mix]['none'])} "
                    f"-> {fmt(common[mix]['top'])}. Independent trainings paired by seed index")
            nm = "" if any(d is not None for d in diff) else "no seed pair where both models trained with a head to rank"
        else:
            diff, note, nm = [None], "stream not run in this mode", "stream not run in this mode"
        claims.append(claim(
            f"relative_drop_largest_in_baseline_vs_{mix}",
            f"Ablating the top heads per layer costs the snippet-free model a larger relative share of its copy "
            f"accuracy than the model trained on the {mix} mix.",
            f"relative acc_copy drop on {COMMON_PROBE} copies (baseline) − the same ({mix}), top {heads_label}, per seed",
            diff, "95 % CI of the mean difference above 0", ci_beyond(diff, 0.0, "above"), not_measured=nm,
            paper="the largest relative drop occurs in the natural-only models: natural-only training makes the "
                  "induction circuitry centralized and load-bearing, Bi-Induct distributed and redundant", note=note))
    # 5. A control: every stream saw the same number of tokens.
    tokens = [int(r.cfg.train.steps) * int(r.cfg.train.batch_size) * int(r.cfg.task.seq_len) for r in runs.values()]
    claims.append(claim(
        "matched_tokens", "Every stream is trained on the same number of tokens (steps x batch x seq_len).",
        "training tokens per stream", tokens, "all equal", len(set(tokens)) == 1, kind=CONTROL, unit=CONDITION,
        note=f"streams {', '.join(runs)}: the configs differ only in the snippets (n_snippets, backward_frac)"))

    figs = [_head_figure(runs, exp.figure_path("head_scores.png")),
            _ablation_figure(abl, common, exp.figure_path("ablation.png"), heads_label, chance),
            _curve_figure(runs, exp.figure_path("copy_loss.png"), bag, chance)]
    extra = {"final": {s: {k: run.final(k).tolist() for k in
                           ("loss", "loss_copy", "acc_copy", "loss_copy_forward", "loss_copy_backward", "loss_background")}
                       for s, run in runs.items()},
             "max_head": {s: {k: run.final(k).max(axis=(1, 2)).tolist() for k in
                              ("induction", "induction_recent", "anti_induction", "anti_induction_raw",
                               "backward_match", "prev_token_corrected")}
                          for s, run in runs.items()},
             "ablation": abl, "ablation_common_probe": common, "rank_by": {s: list(RANK_BY[s]) for s in runs},
             "own_probe": {s: OWN_PROBE[s] for s in runs}, "probes": PROBES, "deviations": DEVIATIONS,
             "heads_ablated": heads_label, "bag_loss": bag, "n_per_layer": n_layer, "steps": steps, "seeds": seeds,
             "lr": float(first.cfg.optim.lr)}
    exp.finish(claims, figs, extra=extra)


if __name__ == "__main__":
    script_main(lambda: main())
