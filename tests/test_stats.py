"""The statistics every verdict uses, against values computed by hand."""
import math

import numpy as np
import pytest

from lab.analysis import stats


def test_sample_std_uses_n_minus_one():
    # values 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14; 14 / 3, not 14 / 4
    assert stats.sample_std([1, 2, 3, 6]) == pytest.approx(math.sqrt(14 / 3))
    assert stats.sample_std([5.0]) is None                      # one seed has no spread
    assert stats.sample_std([1, None, float("nan"), 3]) == pytest.approx(math.sqrt(2))


def test_binomial_interval_is_clopper_pearson():
    # k = n = 5: lower bound solves p^5 = 0.025, i.e. 0.025^(1/5); upper bound 1
    lo, hi = stats.binomial_ci(5, 5)
    assert lo == pytest.approx(0.025 ** 0.2, rel=1e-6) and hi == 1.0
    # k = 0 mirrors it
    lo, hi = stats.binomial_ci(0, 5)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.2, rel=1e-6)
    assert stats.binomial_ci(0, 0) is None


def test_bootstrap_interval_of_constant_and_two_points():
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    # two values 0 and 1: the resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5 % and 97.5 % quantiles are 0 and 1
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert stats.bootstrap_ci([3.0]) is None
    lo, hi = stats.bootstrap_ci(np.arange(10.0))
    assert lo < 4.5 < hi and 2 < lo and hi < 7               # the mean's interval, not the data's range


def test_describe_and_paired_differences():
    d = stats.describe([1.0, None, 3.0])
    assert d["n"] == 2 and d["mean"] == 2.0 and d["std"] == pytest.approx(math.sqrt(2))
    assert stats.describe([None])["n"] == 0
    p = stats.paired_differences([10, 12, None, 20], [9, 10, 5, 17])   # diffs 1, 2, 3 (seed 2 unpaired)
    assert p["differences"] == [1.0, 2.0, 3.0] and p["mean"] == 2.0 and p["std"] == 1.0
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_differences([1], [1, 2])
