import numpy as np
import pytest

from qmap.hw.spec import ArraySpec


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


DEFAULT_SPEC = ArraySpec()


@pytest.fixture
def make_conv(rng):
    """make_conv(in_ch, out_ch, h, w, k=3, spec=ArraySpec()) -> (x_int, w_int), full-range random codes."""

    def make(in_ch, out_ch, h, w, k=3, spec=DEFAULT_SPEC):
        (wl, wh), (al, ah) = spec.w_range, spec.a_range
        return rng.integers(al, ah + 1, (in_ch, h, w)), rng.integers(wl, wh + 1, (out_ch, in_ch, k, k))

    return make
