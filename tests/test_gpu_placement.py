"""GPU placement on a multi-GPU node (lab/train/runtime.py: place_on_gpus), checked on CPU with fake
GPU counts: each job of a multirun claims a GPU of its own, an allocation (CUDA_VISIBLE_DEVICES, as
SLURM sets it) is kept, a single run sees every GPU, and a claim ends with its process."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lab.train import runtime


@pytest.fixture(autouse=True)
def backend_not_started(monkeypatch):
    # the test process may have started JAX's CPU backend already; placement is about a fresh job
    monkeypatch.setattr(runtime, "_backend_started", lambda: False)
    yield
    runtime.release_gpus()


def train(gpus_per_job=None):
    return SimpleNamespace(gpus_per_job=gpus_per_job)


def test_jobs_of_a_multirun_each_claim_their_own_gpu(tmp_path):
    envs = [{} for _ in range(4)]
    chosen = [runtime.place_on_gpus(train(), job, env, n_gpus=4, lock_dir=tmp_path) for job, env in enumerate(envs)]
    assert chosen == [[0], [1], [2], [3]]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"]
    assert all("XLA_PYTHON_CLIENT_PREALLOCATE" not in e for e in envs)


def test_a_job_whose_gpu_is_taken_moves_to_a_free_one(tmp_path):
    first, second = {}, {}
    assert runtime.place_on_gpus(train(), 5, first, n_gpus=4, lock_dir=tmp_path) == [1]      # 5 mod 4
    assert runtime.place_on_gpus(train(), 1, second, n_gpus=4, lock_dir=tmp_path) == [2]     # 1 is taken


def test_more_jobs_than_gpus_share_without_preallocating(tmp_path):
    for job in range(2):
        runtime.place_on_gpus(train(), job, {}, n_gpus=2, lock_dir=tmp_path)
    env = {}
    assert runtime.place_on_gpus(train(), 2, env, n_gpus=2, lock_dir=tmp_path) == [0]
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_several_gpus_per_job(tmp_path):
    a, b = {}, {}
    assert runtime.place_on_gpus(train(2), 0, a, n_gpus=4, lock_dir=tmp_path) == [0, 1]
    assert runtime.place_on_gpus(train(2), 1, b, n_gpus=4, lock_dir=tmp_path) == [2, 3]
    assert b["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_an_allocation_is_kept_and_a_single_run_sees_every_gpu(tmp_path):
    slurm = {"CUDA_VISIBLE_DEVICES": "3", "SLURM_JOB_ID": "7"}
    assert runtime.place_on_gpus(train(), 0, slurm, n_gpus=4, lock_dir=tmp_path) is None
    assert slurm["CUDA_VISIBLE_DEVICES"] == "3"
    single = {}
    assert runtime.place_on_gpus(train(), None, single, n_gpus=4, lock_dir=tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in single
    assert runtime.place_on_gpus(train(2), None, single, n_gpus=4, lock_dir=tmp_path) == [0, 1]
    for n in (0, 1):   # no GPU, or one: nothing to place
        assert runtime.place_on_gpus(train(), 0, {}, n_gpus=n, lock_dir=tmp_path) is None


def test_a_claim_ends_with_its_process(tmp_path):
    code = ("import sys; from types import SimpleNamespace as S; from pathlib import Path; from lab.train import runtime; "
            "runtime._backend_started = lambda: False; "
            "print(runtime.place_on_gpus(S(gpus_per_job=None), 0, {}, n_gpus=2, lock_dir=Path(sys.argv[1])))")
    for _ in range(2):   # the second process gets GPU 0 again: the first one's lock died with it
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[0]"
