"""experiments/reddy_data.py's own helpers: the --parts / --cells subset flags."""
import pytest

from experiments.reddy_data import _parts
from lab.core import ConfigError


def test_parts_and_cells_are_parsed_and_left_out_of_the_experiment_flags():
    parts, cells, rest = _parts(["--parts", "grid,eps", "--cells", "2048:4,512:0", "--smoke"])
    assert parts == {"grid", "eps"} and cells == {(2048, 4), (512, 0)} and rest == ["--smoke"]
    assert _parts(["--full"]) == (None, None, ["--full"])


@pytest.mark.parametrize("argv, words", [(["--parts", "grid,phase"], "unknown part"),
                                         (["--cells", "2048-4"], "K:B pairs"),
                                         (["--cells", "2048:4:1"], "K:B pairs")])
def test_bad_parts_and_cells_say_how_to_fix_them(argv, words):
    with pytest.raises(ConfigError, match=words):
        _parts(argv)
