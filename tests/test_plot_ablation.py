"""The ablation figure (lab/plots/ablation.py) from a made-up result: its accuracy axis is [0, 1]
with a small margin, however high the bars and their error bars reach."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from lab.analysis.ablation import CONDITIONS
from lab.plots import ablation


def _result(acc: float, acc_std: float) -> dict:
    return {"n_layers": 2, "n_heads": 2, "single_delta_loss": [[0.1, 0.0], [1.2, 0.3]],
            "induction_scores": [[[0.1, 0.0], [0.9, 0.2]]], "seeds": [0], "kind": "mean", "top_percent": 50,
            "n_per_layer": 1, "draws": 3, "top_heads": {"0": ["L1H0"]}, "metric": "loss_repeat",
            "metric_label": "loss on repeated part", "chance_loss": 4.16, "run_dir": "/tmp/run", "step": 800,
            "eval_size": 64,
            "summary": {c: {"loss_mean": 1.0 + i, "loss_std": 0.1, "acc_mean": acc - 0.3 * i, "acc_std": acc_std}
                        for i, c in enumerate(CONDITIONS)}}


@pytest.mark.parametrize("acc, acc_std", [(0.98, 0.05), (0.5, 0.0), (0.05, 0.01)])
def test_accuracy_axis_is_zero_to_one(acc, acc_std):
    fig = ablation.figure(_result(acc, acc_std))
    try:
        acc_ax = fig.axes[2]
        assert acc_ax.get_ylabel() == "top-1 accuracy"
        lo, hi = acc_ax.get_ylim()
        assert lo == 0 and 1.0 < hi <= 1.05        # the old margin reached 1.2
        assert max(acc_ax.get_yticks()) == pytest.approx(1.0)
        for text in acc_ax.texts:                  # every number is drawn inside the axis
            assert text.xy[1] <= 1.0
    finally:
        plt.close(fig)


def test_plot_writes_the_png(tmp_path):
    path = ablation.plot(_result(0.9, 0.02), tmp_path / "ablation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
