import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import lab
from lab.core import ConfigError

LAB_TRAIN = [sys.executable, "-m", "lab"]


def test_seed_axis_equals_separate_runs(tiny_overrides):
    singles = [lab.run(lab.load_config(tiny_overrides + [f"train.seed={seed}"])) for seed in (3, 4)]
    for axis in ("map", "vmap"):
        both = lab.run(lab.load_config(tiny_overrides + ["train.seeds=2", "train.seed=3", f"train.seed_axis={axis}"]))
        assert both.trainer.seeds == [3, 4]
        for i, single in enumerate(singles):
            for key in ("train_loss", "loss_repeat", "induction"):
                np.testing.assert_allclose(both.metrics[key][:, i], single.metrics[key][:, 0], rtol=2e-5, atol=1e-6)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                         both.seed_params(i), single.seed_params(0))
        assert not np.allclose(both.metrics["train_loss"][:, 0], both.metrics["train_loss"][:, 1])


def read_tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Parse TensorBoard event files (TFRecord framing: length, crc, Event proto, crc)."""
    import struct
    from tensorboardX.proto.event_pb2 import Event
    out: dict = {}
    for f in directory.glob("events.out.tfevents.*"):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_metrics_shapes_run_with_cache_and_tensorboard(tiny_overrides, tmp_path):
    from lab.train.callbacks import Callback

    class CountLogs(Callback):
        steps: list = []

        def on_log(self, trainer, record, outputs):
            self.steps.append(record["step"])

    cfg = lab.load_config(tiny_overrides + ["train.seeds=2", "train.tensorboard=true"])
    counter = CountLogs()
    r = lab.run(cfg, tmp_path, plots=False, extra_callbacks=[counter])
    assert counter.steps == [0, 10, 20, 30, 40]
    m = r.metrics
    n_logs = 40 // 10 + 1                                   # step 0 and every log_every
    assert m["step"].tolist() == [0, 10, 20, 30, 40]
    assert m["loss_repeat"].shape == (n_logs, 2) and m["induction"].shape == (n_logs, 2, 2, 2)
    assert m["loss_by_pos"].shape == (n_logs, 2, 23)
    logits, cache = r.run_with_cache(names=["blocks.1.attn.pattern"], seed_index=1)
    assert logits.shape == (8, 24, 13) and cache["blocks.1.attn.pattern"].shape == (8, 2, 24, 24)
    assert r.summary["status"] == "completed" and len(r.summary["phase"]["loss_repeat"]["per_seed"]) == 2
    tb = read_tensorboard_scalars(tmp_path / "tensorboard" / "seed_1")
    assert [s for s, _ in tb["loss/loss_repeat"]] == [0, 10, 20, 30, 40]
    np.testing.assert_allclose([v for _, v in tb["loss/loss_repeat"]], m["loss_repeat"][:, 1], rtol=1e-6)
    assert len(tb["induction/L1H0"]) == n_logs


def test_config_errors_name_the_key(tiny_overrides):
    with pytest.raises(ConfigError, match="model.d_model=15 is not divisible by model.n_heads=2"):
        lab.run(lab.load_config(tiny_overrides + ["model.d_model=15"]))
    with pytest.raises(ConfigError, match="task.seq_len=24 cannot hold"):
        lab.run(lab.load_config(tiny_overrides + ["task.max_repeat_len=12"]))


def test_cli_mistyped_key_fails_clearly(tmp_path):
    p = subprocess.run(LAB_TRAIN + ["model.n_layer=3", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: unknown config key 'model.n_layer'; did you mean 'model.n_layers'?"
    p = subprocess.run(LAB_TRAIN + ["train.steps=many", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert p.returncode != 0 and "train.steps" in p.stderr and "Traceback" not in p.stderr


def test_cli_run_writes_outputs_then_resumes_and_replots(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    common = tiny_overrides + ["train.checkpoint_every=20", f"hydra.run.dir={run_dir}"]
    p = subprocess.run(LAB_TRAIN + common, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("metrics.jsonl", "summary.json", "config.yaml", ".hydra/config.yaml", "attention.npz",
                 "plots/loss.png", "plots/heads_heatmap.png", "plots/attention.png"):
        assert (run_dir / name).exists(), name
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
    assert sorted(int(d.name) for d in (run_dir / "checkpoints").iterdir()) == [20, 40]

    # rerunning into a finished run is refused, with the fix in the message
    p = subprocess.run(LAB_TRAIN + common, capture_output=True, text=True)
    assert p.returncode == 2 and "train.resume=true" in p.stderr

    # resuming from step 20 reproduces the uninterrupted run exactly
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "40")
    p = subprocess.run(LAB_TRAIN + common + ["train.resume=true"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    resumed = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [0, 10, 20, 30, 40]
    for a, b in zip(records, resumed):
        assert a.get("train_loss") == b.get("train_loss") and a["induction"] == b["induction"]

    for png in (run_dir / "plots").iterdir():
        png.unlink()
    p = subprocess.run([sys.executable, "-c", "from lab.app.plot import plot_main; plot_main()", str(run_dir)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run_dir / "plots" / "loss.png").stat().st_size > 10_000


def test_sigterm_saves_checkpoint_and_says_how_to_resume(tmp_path, tiny_overrides):
    import signal
    import time
    run_dir = tmp_path / "run"
    args = tiny_overrides + ["train.steps=100000", "train.log_every=5", "train.checkpoint_every=0",
                             f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(LAB_TRAIN + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "train.resume=true" in err and f"hydra.run.dir={run_dir}" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"].startswith("interrupted")
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert [int(d.name) for d in (run_dir / "checkpoints").iterdir()] == [steps[-1]]


def test_divergence_stops_the_run_and_marks_it_failed(tiny_overrides, tmp_path):
    from lab.core import TrainingDiverged
    cfg = lab.load_config(tiny_overrides + ["optim=sgd", "optim.lr=1e30"])
    with pytest.raises(TrainingDiverged, match="non-finite training loss at step"):
        lab.run(cfg, tmp_path, plots=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("failed: non-finite training loss")
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_microbatches_give_the_whole_batch_gradient(tiny_overrides):
    """Averaging the gradients of microbatches is the whole batch's gradient, batch-item clamps
    included: item 5 lies in the second microbatch of 4, so its mask needs the microbatch's offset."""
    clamp = "+clamps.c={site: blocks.0.attn.pattern, value: zero, batch: [5]}"
    batch_size = 8
    results = {}
    for name, extra in (("whole", ["train.microbatch=8", clamp]), ("micro", ["train.microbatch=4", clamp]),
                        ("unclamped", ["train.microbatch=4"])):
        trainer = lab.Trainer(lab.load_config(tiny_overrides + [f"train.batch_size={batch_size}"] + extra))
        state = jax.tree.map(lambda x: x[0], trainer.init_state())
        args = jax.tree.map(lambda x: x[0], trainer.clamp_args)
        batch = trainer.task.sample(jax.random.key(1), batch_size)
        results[name] = trainer.loss_and_grad(state["params"], batch, args, {}, 0)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    jax.tree.map(close, results["micro"], results["whole"])
    flat = {k: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)]) for k, v in results.items()}
    assert np.abs(flat["unclamped"] - flat["whole"]).max() > 100 * np.abs(flat["micro"] - flat["whole"]).max()
    with pytest.raises(ConfigError, match="train.microbatch=3 does not divide train.batch_size=8"):
        lab.Trainer(lab.load_config(tiny_overrides + ["train.batch_size=8", "train.microbatch=3"]))


def test_train_log_follows_the_run(tmp_path, tiny_overrides):
    """train.log holds one line per log step (seed means, as the progress bar shows them) and ends with
    the status and verdict, so `tail -f` follows a run and the file tells how it ended."""
    import numpy as np
    r = lab.run(lab.load_config(tiny_overrides), tmp_path, plots=False)
    lines = (tmp_path / "train.log").read_text().splitlines()
    progress = [l.split(" - ", 1)[1] for l in lines if "[lab.progress]" in l and " - step " in l]
    assert [int(p.split()[1].split("/")[0]) for p in progress] == [rec["step"] for rec in r.trainer.records]
    last = r.trainer.records[-1]
    assert f"rep_loss={np.mean(last['loss_repeat']):.4g}" in progress[-1]
    assert lines[-1].endswith(f"- completed: {r.summary['verdict']}")


def test_an_intervention_set_at_step_0_reaches_the_first_chunk(tiny_overrides):
    """The first chunk compiles and runs on a thread beside the step-0 measures (issue 28), from the
    clamp arrays and interventions of that moment. A step-0 callback that changes them must still train
    the first chunk with the new ones: such a run equals one whose intervention was set before training,
    and differs from one without it."""
    import jax.numpy as jnp

    from lab.model.hooks import Intervention
    from lab.train.callbacks import Callback
    from lab.train.trainer import Trainer

    cfg = lab.load_config(tiny_overrides + ["train.steps=20"])
    zero_layer_0 = lambda: {"blocks.0.attn.pattern": Intervention(jnp.ones((), bool), jnp.zeros(()))}

    class SetAtStepZero(Callback):
        def on_log(self, trainer, record, outputs):
            if record["step"] == 0:
                trainer.interventions = zero_layer_0()

    late = Trainer(cfg, callbacks=[SetAtStepZero()]).fit()
    early = Trainer(cfg)
    early.interventions = zero_layer_0()
    early.fit()
    plain = Trainer(cfg).fit()
    losses = lambda t: [r["train_loss"] for r in t.records if r["step"] > 0]
    assert len(losses(late)) == 2
    assert losses(late) == losses(early)
    assert losses(late)[0] != losses(plain)[0]
