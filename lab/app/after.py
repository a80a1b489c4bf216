"""What a run does once it stops training: its summary (phase and stage fits, statistics), the
stage-boundary report, the attention snapshots and the figures.

`lab.app.run` imports this module on a background thread while the run's first programs compile
(`lab.app.run.AfterTraining`): it brings scipy, ruptures and matplotlib, seconds of imports that the first
training step need not wait for. The second deliberate function-local import of the lab's own code
(ARCHITECTURE.md)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import jax

from lab.analysis.development import stage_report
from lab.analysis.summary import summarize
from lab.core import set_stop_phase, stop_requests
from lab.plots.parallel import draw_run_figures
from lab.rundir import load_llc, load_outputs, records_to_arrays, write_text_atomic

log = logging.getLogger("lab.app.run")


def stages_of_run(summary: dict, run_dir: Path) -> dict:
    """The stage-boundary report (lab/analysis/development.py) from the summary and the run's
    llc.npz and outputs.npz; a failure here is logged and noted, never losing the summary."""
    try:
        return stage_report(summary, load_llc(run_dir), load_outputs(run_dir))
    except Exception as e:   # an analysis bug must not cost the run its summary.json
        log.warning("stage report failed (%s: %s); summary.json is written without it", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}



def after_training(cfg, trainer, run_dir: Optional[Path], snapshots, log_lines, plots: bool) -> tuple[dict, bool]:
    """The summary, stage report, attention snapshots and plots of a run that stopped training, each
    announced as it starts. A stop signal during them (lab-train counts signals: lab.core.request_stop)
    is answered within POLL_S seconds: the summary is still written, the plots are skipped. Returns the
    summary and whether a signal during this analysis cut it short."""
    set_stop_phase("analysis")
    before = len(stop_requests())      # signals that stopped training: the plots are drawn all the same

    def stopped() -> bool:             # a second signal (in all), or a new one after training finished
        return len(stop_requests()) >= 2 or len(stop_requests()) > before

    if trainer.records:
        log.info("summary: phase changes and stages of %s and %d per-head curves", trainer.task.main_metric,
                 len(trainer.task.head_scores) * cfg.model.n_layers * cfg.model.n_heads * len(trainer.seeds))
    summary = summarize(records_to_arrays(trainer.records), cfg, trainer.task,
                        trainer.seeds, trainer.status) if trainer.records else {"status": trainer.status}
    if trainer.clamps:
        summary["clamps"] = trainer.clamps.describe()
    if cfg.train.on_nonfinite == "skip":
        summary["skipped_updates"] = [int(sum(r["skipped_updates"][i] for r in trainer.records
                                              if "skipped_updates" in r)) for i in range(len(trainer.seeds))]
    if run_dir is None:
        return summary, False
    if trainer.records and not stopped():
        summary["stages"] = stages_of_run(summary, run_dir)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    log_lines.note(f"{summary['status']}: {summary.get('verdict', '')}".rstrip(": "), console=False)
    # the probe fetched first: slicing device arrays would compile a program per slice (0.2 s)
    snapshots.save(run_dir / "attention.npz", summary, trainer.task.snapshot_info(jax.device_get(trainer.probe)))
    if not (plots and trainer.records):
        return summary, False
    if stopped():
        log.warning("plots skipped (stop signal); draw them with: lab-plot %s", run_dir)
        return summary, len(stop_requests()) > before
    log.info("drawing the figures into %s", run_dir / "plots")
    _, finished = draw_run_figures(run_dir, should_stop=stopped)
    if not finished:
        log.warning("plots cut short (stop signal); draw them with: lab-plot %s", run_dir)
    return summary, len(stop_requests()) > before
