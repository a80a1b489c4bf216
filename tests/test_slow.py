"""Full-size runs of the default experiment (minutes): `pytest -m slow` or `make test-all`."""
import pytest

import lab


@pytest.mark.slow
def test_two_layers_form_induction_heads_one_layer_does_not():
    two = lab.run(lab.load_config(["train.progress=false"]))
    assert two.summary["phase"]["loss_repeat"]["aggregate"]["n_detected"] == 1
    assert two.summary["induction_head_formed"] == [True]
    assert max(two.summary["final"]["induction_per_head"].values()) > 0.4

    one = lab.run(lab.load_config(["model=attn_only_1l", "train.progress=false"]))
    assert one.summary["phase"]["loss_repeat"]["aggregate"]["n_detected"] == 0
    assert one.summary["induction_head_formed"] == [False]
    assert max(one.summary["final"]["induction_per_head"].values()) < 0.2
