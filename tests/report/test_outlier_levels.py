"""The level sets of the seed's Figure 1 (plain b-bit, OCS, OMR), unsigned and signed."""

import numpy as np

from qmap.report.plots_outliers import outlier_levels, plot_outlier_levels


def test_unsigned_omr_doubles_the_range_with_the_same_step():
    lv = outlier_levels(0.5, 2, ocs_step=0.4)
    assert np.allclose(lv["plain 2-bit"], [0, 0.5, 1.0, 1.5])
    assert np.allclose(lv["OCS (2-bit, split channel)"], [0, 0.8, 1.6, 2.4])
    assert np.allclose(lv["OMR (2-bit + copy)"], 0.5 * np.arange(7))  # 2^(b+1) − 1 levels


def test_signed_codes_keep_the_lower_clip_and_double_the_upper(tmp_path):
    lv = outlier_levels(0.25, 3, None, codes=(-2, 5))  # qmin − z = −2, qmax − z = 5 (an asymmetric 3-bit grid)
    assert np.allclose(lv["plain 3-bit"], 0.25 * np.arange(-2, 6))
    assert np.allclose(lv["OMR (3-bit + copy)"], 0.25 * np.arange(-2, 11))
    values = np.random.default_rng(0).normal(0.3, 0.6, 5000)
    assert plot_outlier_levels(values, 0.25, 3, None, tmp_path / "f.png", codes=(-2, 5)).stat().st_size > 0
