"""Loggers beside metrics.jsonl: TensorBoard's hparams (each run, and so each job of a sweep, writes its
overrides, seed and final metrics for the HPARAMS tab; read back from the event files) and the optional
Weights & Biases logger (offline, files under $WANDB_DIR; a one-line error without the package)."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
import lab
from lab.core import ConfigError
from lab.train import callbacks
from lab.train.callbacks import override_hparams

HPARAMS = TINY[:-1] + ["train.tensorboard=true", "train.seeds=2", "train.seed=5", "optim.lr=0.003"]
OVERRIDES = ["optim.lr=0.003", "task.vocab_size=12", "clamp=none", "hydra.run.dir=/x"]


def _events(path: Path):
    """The Event protos of one TensorBoard event file (TFRecord framing: length, its crc, data, its crc)."""
    from tensorboardX.proto import event_pb2
    data = path.read_bytes()
    at = 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12:at + 12 + n])
        yield event
        at += 12 + n + 4


def _read_hparams(directory: Path) -> tuple[dict, dict]:
    """(hyper-parameters of the session, {scalar tag: value}) from a directory written by add_hparams."""
    from tensorboardX.proto import plugin_hparams_pb2
    hparams, scalars = {}, {}
    for f in directory.glob("events.out.tfevents.*"):
        for event in _events(f):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_hparams_pb2.HParamsPluginData()
                    data.ParseFromString(v.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        for k, value in data.session_start_info.hparams.items():
                            kind = value.WhichOneof("kind")
                            hparams[k] = getattr(value, kind)
                elif v.HasField("simple_value") or v.HasField("tensor"):
                    scalars[v.tag] = v.simple_value
    return hparams, scalars


def test_override_hparams_types_and_leaves_hydra_out():
    assert override_hparams(OVERRIDES + ["+x=[1, 2]", "~y", "train.wandb=true"]) == {
        "optim.lr": 0.003, "task.vocab_size": 12, "clamp": "none", "x": "[1, 2]", "train.wandb": True}
    assert override_hparams(None) == {}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One tiny two-seed run with TensorBoard and (when installed) W&B offline, with a job's overrides file."""
    root = tmp_path_factory.mktemp("loggers")
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in OVERRIDES))
    extra = []
    try:
        import wandb  # noqa: F401
        extra = ["train.wandb=true"]
    except ImportError:
        pass
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_DIR", str(root / "wandb_dir"))
    mp.setenv("WANDB_SILENT", "true")
    try:
        result = lab.run(lab.load_config(HPARAMS + extra), run_dir, plots=False)
    finally:
        mp.undo()
    return result, root, bool(extra)


def test_each_seed_writes_its_hparams_and_final_metrics(logged):
    result, root, _ = logged
    for i, seed in enumerate((5, 6)):
        hparams, scalars = _read_hparams(root / "run" / "tensorboard" / f"seed_{seed}" / "hparams")
        assert hparams == {"optim.lr": 0.003, "task.vocab_size": 12, "clamp": "none", "train.seed": seed}
        final = result.summary["final"]["loss_repeat"]
        assert scalars["final/loss_repeat"] == pytest.approx(float(result.metrics["loss_repeat"][-1, i]), rel=1e-6)
        assert final["n"] == 2


def _wandb_records(path: Path) -> list:
    """The Record protos of an offline run's .wandb file (LevelDB log framing after a 7-byte header:
    32 KiB blocks of chunks with a crc, a length and a kind: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, block, at, records, part = path.read_bytes(), 32768, 7, [], b""
    while at + 7 <= len(data):
        left = block - at % block
        _, n, kind = struct.unpack("<IHB", data[at:at + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (n == 0 and kind == 0):       # the rest of a block is padding
            at += left
            continue
        part += data[at + 7:at + 7 + n]
        at += 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_wandb_offline_run_holds_the_logged_keys(logged):
    result, root, enabled = logged
    if not enabled:
        pytest.skip("wandb is not installed (pip install 'induction-lab[wandb]')")
    runs = list((root / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((root / "wandb_dir").rglob("*"))[:20]
    assert not (root / "run" / "wandb").exists()                      # $WANDB_DIR wins over the run directory
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    deadline = time.monotonic() + 60                                   # wandb-core writes the file after finish()
    while not any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(files[0])):
        assert time.monotonic() < deadline, "the offline run never recorded its exit"
        time.sleep(0.5)
    records = _wandb_records(files[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    keys = set().union(*history)
    for key in ("lr", "seed_5/loss_repeat", "seed_6/loss_repeat", "seed_5/induction/L1H0"):
        assert key in keys, sorted(keys)[:20]
    last = max(history, key=lambda h: h.get("_step", -1))
    assert last["seed_6/loss_repeat"] == pytest.approx(float(result.metrics["loss_repeat"][-1, 1]), rel=1e-5)
    config = {u.key or "/".join(u.nested_key): u.value_json for r in records if r.HasField("run")
              for u in r.run.config.update}
    assert json.loads(config["optim.lr"]) == 0.003


def test_wandb_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)        # import wandb raises ImportError
    with pytest.raises(ConfigError) as e:
        lab.run(lab.load_config(TINY + ["train.wandb=true"]), tmp_path / "run")
    assert str(e.value) == callbacks.WANDB_MISSING and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()                 # refused before anything was written
    with pytest.raises(ConfigError, match="train.wandb_mode='cloud': choose one of offline, online, disabled"):
        lab.run(lab.load_config(TINY + ["train.wandb=true", "train.wandb_mode=cloud"]))
