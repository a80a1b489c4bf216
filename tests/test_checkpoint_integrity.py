"""Checkpoints carry a manifest (size and SHA-256 of every file, and of the step's callback state):
a checkpoint whose files no longer match (a flipped bit orbax reads back as another number, a cut
file, damaged callback state) is skipped for the one before with one warning line; none intact is a
one-line error; a checkpoint without a manifest (an older lab's) restores unverified as before."""
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lab
from conftest import records
from lab.core import ConfigError, RunLoadError
from lab.train.checkpoint import Checkpoints, checkpoint_manifest, file_digest, manifest_problem

# checkpoints every 10 steps of 40, the newest two kept: 30 and 40
CHECKPOINTED = ["train.checkpoint_every=10", "train.keep_checkpoints=2"]


def flip_bit(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def flip_array_bit(step_dir: Path, array) -> str:
    """Flip the top exponent bit of the first number of `array` where its raw bytes are stored in
    checkpoint `step_dir` (orbax reads it back as another number without an error); the largest
    file's middle byte if orbax ever stores it otherwise. The file's path relative to `step_dir`."""
    raw = np.asarray(array).tobytes()[:16]
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    hits = [p for p in files if raw in p.read_bytes()]
    if hits:
        target = hits[-1]
        offset = target.read_bytes().index(raw) + 3      # little-endian float32: sign and exponent
    else:
        target = max(files, key=lambda p: p.stat().st_size)
        offset = target.stat().st_size // 2
    flip_bit(target, offset)
    return target.relative_to(step_dir).as_posix()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 40-step run with checkpoints at 30 and 40; each test damages a copy."""
    from conftest import TINY
    run_dir = tmp_path_factory.mktemp("integrity") / "ref"
    result = lab.run(lab.load_config(TINY + CHECKPOINTED), run_dir, plots=False)
    return run_dir, result


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the run as if killed after its last checkpoint (no summary.json): running the same
    command again continues it from its newest intact checkpoint."""
    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    return copy


def test_manifests_are_written_and_pruned_with_their_checkpoints(trained):
    run_dir, _ = trained
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["30", "40"]   # orbax's folders only
    assert sorted(p.name for p in (run_dir / "checkpoint_manifests").iterdir()) == ["30.json", "40.json"]
    assert sorted(p.name for p in (run_dir / "callback_state").iterdir()) == ["30.npz", "40.npz"]
    manifest = json.loads((run_dir / "checkpoint_manifests" / "40.json").read_text())
    files = {p.relative_to(run_dir / "checkpoints" / "40").as_posix()
             for p in (run_dir / "checkpoints" / "40").rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files
    assert manifest["callback_state"] == file_digest(run_dir / "callback_state" / "40.npz")
    ck = Checkpoints(run_dir / "checkpoints", keep=2)
    try:
        assert ck.problem(30) is None and ck.problem(40) is None
    finally:
        ck.close()


def test_flipped_bit_in_newest_checkpoint_resumes_from_the_one_before(trained, run_copy, tiny_overrides, caplog):
    ref_dir, ref = trained
    name = flip_array_bit(run_copy / "checkpoints" / "40", ref.params["W_E"])
    caplog.set_level(logging.INFO)
    resumed = lab.run(lab.load_config(tiny_overrides + CHECKPOINTED), run_copy, plots=False)
    damaged = [m for m in warnings_of(caplog) if "is damaged" in m]
    assert damaged == [f"checkpoint {run_copy / 'checkpoints'}/40 is damaged (checksum mismatch in {name}); "
                       "falling back to step 30"]
    assert "resumed from step 30" in caplog.text
    assert "absl" not in {r.name for r in caplog.records if r.levelno >= logging.WARNING}
    # steps 30 to 40 trained again: the uninterrupted run's records, metrics and parameters exactly
    assert records(run_copy) == records(ref_dir)
    np.testing.assert_array_equal(resumed.metrics["train_loss"], ref.metrics["train_loss"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(ref.params)))
    # the checkpoint saved again at 40 has a new manifest that matches it
    ck = Checkpoints(run_copy / "checkpoints", keep=2)
    try:
        assert ck.manager.all_steps() == [30, 40] and ck.problem(40) is None
    finally:
        ck.close()


def test_every_checkpoint_damaged_is_a_one_line_error(trained, run_copy, tiny_overrides, caplog):
    _, ref = trained
    for step in (30, 40):
        flip_array_bit(run_copy / "checkpoints" / str(step), ref.params["W_E"])
    with pytest.raises(ConfigError, match="no intact checkpoint in") as e:
        lab.run(lab.load_config(tiny_overrides + CHECKPOINTED), run_copy, plots=False)
    message = str(e.value)
    assert "\n" not in message
    assert "step 40: checksum mismatch in" in message and "step 30: checksum mismatch in" in message
    assert not [m for m in warnings_of(caplog) if "is damaged" in m]    # the error says it all
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["30", "40"]   # nothing deleted


def test_damaged_callback_state_skips_its_checkpoint(trained, run_copy, tiny_overrides, caplog):
    ref_dir, ref = trained
    npz = run_copy / "callback_state" / "40.npz"
    flip_bit(npz, npz.stat().st_size // 2, 0x01)
    caplog.set_level(logging.INFO)
    lab.run(lab.load_config(tiny_overrides + CHECKPOINTED), run_copy, plots=False)
    assert [m for m in warnings_of(caplog) if "is damaged" in m] == [
        f"checkpoint {run_copy / 'checkpoints'}/40 is damaged (checksum mismatch in callback_state/40.npz); "
        "falling back to step 30"]
    assert "resumed from step 30" in caplog.text
    assert records(run_copy) == records(ref_dir)
    with np.load(ref_dir / "attention.npz") as a, np.load(run_copy / "attention.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_checkpoint_without_manifest_restores_unverified(trained, run_copy, caplog):
    from lab.train.restore import load_run
    _, ref = trained
    shutil.rmtree(run_copy / "checkpoint_manifests")      # as an older lab wrote it
    caplog.set_level(logging.DEBUG, logger="lab.train.checkpoint")
    loaded = load_run(run_copy)
    assert loaded.step == 40
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(ref.params)))
    assert "has no manifest" in caplog.text and "unverified" in caplog.text
    assert not warnings_of(caplog)


def test_load_run_refuses_a_damaged_step(trained, run_copy, caplog):
    from lab.train.restore import load_run
    _, ref = trained
    name = flip_array_bit(run_copy / "checkpoints" / "40", ref.params["W_E"])
    with pytest.raises(RunLoadError, match=f"40 is damaged \\(checksum mismatch in {name}\\)") as e:
        load_run(run_copy, 40)
    assert "\n" not in str(e.value)
    assert (run_copy / "checkpoints" / "40").is_dir()      # a requested step is refused, never deleted
    assert load_run(run_copy, 30).step == 30
    assert load_run(run_copy).step == 30                   # the newest intact one
    assert [m for m in warnings_of(caplog) if "is damaged" in m] == [
        f"checkpoint {run_copy / 'checkpoints'}/40 is damaged (checksum mismatch in {name}); falling back to step 30"]


# --------------------------------------------------------------------- without training


def test_manifest_of_a_hand_made_directory(tmp_path):
    step = tmp_path / "7"
    (step / "sub" / "d").mkdir(parents=True)
    (step / "a.json").write_text('{"x": 1}')
    big = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)      # more than one 1 MiB block
    (step / "sub" / "d" / "big").write_bytes(big)
    (step / "empty").write_bytes(b"")
    cb = tmp_path / "7.npz"
    cb.write_bytes(b"callback state")
    manifest = checkpoint_manifest(step, cb)
    assert manifest["files"]["sub/d/big"]["size"] == len(big)
    assert set(manifest["files"]) == {"a.json", "sub/d/big", "empty"}
    import hashlib
    assert manifest["files"]["sub/d/big"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest_problem(manifest, step, cb) is None

    (step / "stray").write_text("not orbax's")              # files the manifest does not list are ignored
    assert manifest_problem(manifest, step, cb) is None

    flip_bit(step / "sub" / "d" / "big", 2 * (1 << 20) + 5, 0x01)      # one bit, in the third block
    assert manifest_problem(manifest, step, cb) == "checksum mismatch in sub/d/big"
    flip_bit(step / "sub" / "d" / "big", 2 * (1 << 20) + 5, 0x01)
    assert manifest_problem(manifest, step, cb) is None

    (step / "a.json").write_text('{"x"')
    assert manifest_problem(manifest, step, cb) == "size mismatch in a.json: 4 bytes, 8 expected"
    (step / "a.json").unlink()
    assert manifest_problem(manifest, step, cb) == "a.json is missing"
    (step / "a.json").write_text('{"x": 1}')

    flip_bit(cb, 0, 0x01)
    assert manifest_problem(manifest, step, cb, "callback_state/7.npz") == "checksum mismatch in callback_state/7.npz"
    cb.unlink()
    assert manifest_problem(manifest, step, cb) == "callback state is missing"
    assert manifest_problem(manifest, step) is None          # not asked to check the callback state
    assert manifest_problem({"files": {}}, step) == "its manifest lists no files"
    assert manifest_problem({"files": {"a.json": {"size": 8}}}, step).startswith("its manifest is malformed")


class _Counter:
    """A callback with state to carry over (like AttentionSnapshots)."""

    def __init__(self, n=0):
        self.n = n

    def state_dict(self):
        return {"n": np.array(self.n)}

    def load_state_dict(self, state):
        self.n = int(state["n"])


def _state(step):
    return {"w": jnp.arange(64, dtype=jnp.float32) * step, "b": jnp.full((3,), float(step))}


def _save(ck, step):
    ck.save_callback_state(step, [_Counter(step)])
    ck.save(step, _state(step))


def test_checkpoints_verify_on_restore(tmp_path, caplog):
    run = tmp_path / "run"
    ck = Checkpoints(run / "checkpoints", keep=3)
    for step in (1, 2, 3, 4):
        _save(ck, step)
    assert sorted(p.name for p in (run / "checkpoint_manifests").iterdir()) == ["2.json", "3.json", "4.json"]
    assert sorted(p.name for p in (run / "callback_state").iterdir()) == ["2.npz", "3.npz", "4.npz"]
    like = _state(0)

    step, state = ck.restore(like)
    assert step == 4 and np.array_equal(state["w"], _state(4)["w"])
    counter = _Counter()
    ck.load_callback_state(4, [counter])
    assert counter.n == 4

    # saved again at a checkpointed step (a run resumed from its final checkpoint): still intact
    _save(ck, 4)
    assert ck.problem(4) is None

    # damaged callback state: load_callback_state refuses it in one line, restore skips its checkpoint
    flip_bit(run / "callback_state" / "4.npz", 10, 0x01)
    with pytest.raises(ConfigError, match="4 is damaged \\(checksum mismatch in callback_state/4.npz\\)"):
        ck.load_callback_state(4, [_Counter()])
    # a damaged requested step is refused, not replaced by another
    with pytest.raises(FileNotFoundError, match="4 is damaged"):
        ck.restore(like, 4)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 9 "):
        ck.restore(like, 9)
    caplog.set_level(logging.INFO)
    step, state = ck.restore(like)
    assert step == 3 and np.array_equal(state["w"], _state(3)["w"])
    assert [m for m in warnings_of(caplog) if "is damaged" in m] == [
        f"checkpoint {run / 'checkpoints'}/4 is damaged (checksum mismatch in callback_state/4.npz); falling back to step 3"]
    # the damaged one is gone with its manifest and callback state, out of the way of the next save
    assert ck.manager.all_steps() == [2, 3]
    assert not (run / "checkpoint_manifests" / "4.json").exists() and not (run / "callback_state" / "4.npz").exists()
    _save(ck, 4)
    assert ck.restore(like)[0] == 4
    assert ck.restore(like, up_to=3)[0] == 3 and ck.manager.all_steps() == [2, 3, 4]
    with pytest.raises(FileNotFoundError, match="no checkpoint in .* at or before step 1$"):
        ck.restore(like, up_to=1)

    # an unreadable manifest damages its checkpoint
    (run / "checkpoint_manifests" / "4.json").write_text("{")
    assert "manifest 4.json is unreadable" in ck.problem(4)

    # none intact: one line naming each
    for step in (2, 3):
        flip_bit(next((run / "checkpoints" / str(step)).rglob("_CHECKPOINT_METADATA")), 5, 0x01)
    with pytest.raises(FileNotFoundError) as e:
        ck.restore(like)
    assert str(e.value).startswith(f"no intact checkpoint in {run / 'checkpoints'} (step 4: its manifest")
    assert "step 3: checksum mismatch in _CHECKPOINT_METADATA; step 2: checksum mismatch in" in str(e.value)
    assert "\n" not in str(e.value)
    ck.close()


def test_checkpoint_without_manifest_is_read_by_orbax_quietly(tmp_path, caplog):
    run = tmp_path / "run"
    ck = Checkpoints(run / "checkpoints", keep=3)
    for step in (1, 2):
        _save(ck, step)
    ck.close()
    shutil.rmtree(run / "checkpoint_manifests")          # an older lab's checkpoints
    caplog.set_level(logging.DEBUG, logger="lab.train.checkpoint")
    ck = Checkpoints(run / "checkpoints", keep=3)
    step, _ = ck.restore(_state(0))
    assert step == 2 and "checkpoint" in caplog.text and "has no manifest" in caplog.text
    counter = _Counter()
    ck.load_callback_state(2, [counter])
    assert counter.n == 2
    ck.close()

    # cut files orbax cannot read (it would log the cut metadata file whole): the one warning line
    for f in (run / "checkpoints" / "2").rglob("*"):
        if f.is_file() and f.stat().st_size:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    caplog.clear()
    caplog.set_level(logging.INFO)
    ck = Checkpoints(run / "checkpoints", keep=3)
    step, _ = ck.restore(_state(0))
    ck.close()
    assert step == 1
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0].name == "lab.train.checkpoint"
    assert loud[0].getMessage().startswith(f"checkpoint {run / 'checkpoints'}/2 is damaged (unreadable: ")
    assert loud[0].getMessage().endswith("; falling back to step 1")
    assert "\n" not in loud[0].getMessage()
