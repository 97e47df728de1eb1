import numpy as np
import pytest

from edge_runtime.severity import SeverityBins, noise_timestep


def test_noise_timestep_follows_d3ad_table():
    expected = {1: 20, 2: 20, 3: 20, 4: 30, 5: 40, 6: 50, 7: 60, 8: 60, 9: 70, 10: 80}
    assert {b: noise_timestep(b, t_max=80) for b in range(1, 11)} == expected


def test_bins_are_equal_width_and_clipped():
    bins = SeverityBins.fit(np.array([1.0, 2.0, 3.0, 11.0]))
    assert (bins.low, bins.high) == (1.0, 11.0)
    assert bins.bin_of(0.0) == 1
    assert bins.bin_of(1.0) == 1
    assert bins.bin_of(2.5) == 2
    assert bins.bin_of(10.99) == 10
    assert bins.bin_of(50.0) == 10


def test_bins_need_two_finite_values():
    with pytest.raises(ValueError, match="at least two finite"):
        SeverityBins.fit(np.array([1.0]))
    with pytest.raises(ValueError, match="at least two finite"):
        SeverityBins.fit(np.array([1.0, np.nan]))
