"""The benchmark script still runs against the current trainer (its figures are not asserted)."""
import subprocess
import sys
from pathlib import Path

from conftest import HANG_S, TINY

ROOT = Path(__file__).resolve().parent.parent


def test_bench_script_runs_on_a_tiny_model():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--no-phase", "--chunks", "1",
                        *TINY, "clamp=perfect_prev_token", "--seeds", "1", "2"],
                       capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "seed-steps/s" in p.stdout and "MFU" in p.stdout


def test_bench_compares_settings_in_one_process():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--chunks", "1", *TINY,
                        "--compare", "model.fused_attention=true", "model.fused_attention=false",
                        "--compare-microbatch", "2"],
                       capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line for line in p.stdout.splitlines() if "steps/s median" in line]
    assert [line.split(":")[0].strip() for line in lines] == [
        "model.fused_attention=true", "model.fused_attention=false", "train.microbatch=2"]


def test_llc_comparison_runs_without_its_peer():
    """benchmarks/llc_devinterp.py prints the lab's side and exits 0 where devinterp is not installed."""
    tiny = [a for a in TINY if not a.startswith("train=")]
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llc_devinterp.py"), "--peer-python", "/nonexistent",
                        "--train-steps", "20", "--rounds", "1", *tiny],
                       capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "lab (JAX)" in p.stdout and "s/estimate" in p.stdout


def test_peers_benchmark_says_how_to_create_its_environment():
    """benchmarks/peers.py (`make bench-peers`) names `make setup-peers` and exits 2 without TransformerLens's Python."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--peer-python", "/nonexistent"],
                       capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "make setup-peers" in p.stderr
