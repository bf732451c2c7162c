"""``round_shift`` = round(p / 2^shift) with each tie rule, against Python's exact integer arithmetic, on both
sides of 2^53 (below it the half-even case takes the float64 path, above it the bit operations); a requantizer's
two-half product for wide values; exact window sums."""

import random

import pytest
import torch

from qmap.quant.chain import AvgPool
from qmap.quant.requant import EXACT_FLOAT64, Requantizer, round_shift


def reference(p: int, k: int, mode: str) -> int:
    q, r = divmod(p, 1 << k) if k else (p, 0)  # floor division: p = q·2^k + r, 0 ≤ r < 2^k
    if k == 0 or 2 * r < (1 << k):
        return q
    if 2 * r > (1 << k):
        return q + 1
    return {"half_even": q + (q & 1), "half_away": q + (p > 0), "half_up": q + 1}[mode]


@pytest.mark.parametrize("mode", ["half_even", "half_away", "half_up"])
@pytest.mark.parametrize("magnitude", [2**20, EXACT_FLOAT64 - 1, 2**62 - 1])
def test_round_shift_matches_exact_integer_rounding(mode, magnitude):
    rng = random.Random(0)
    ps, ks = [], []
    for _ in range(3000):
        k = rng.randrange(0, 63)
        ties = k > 0 and rng.random() < 0.3  # an odd multiple of 2^(k-1): exactly halfway
        p = (2 * rng.randrange(-(magnitude >> k), (magnitude >> k) + 1) + 1) << (k - 1) if ties else \
            rng.randrange(-magnitude, magnitude + 1)
        if abs(p) <= magnitude:
            ps.append(p)
            ks.append(k)
    ps.append(-magnitude)
    ks.append(1)
    got = round_shift(torch.tensor(ps, dtype=torch.int64), torch.tensor(ks, dtype=torch.int64), mode)
    assert got.tolist() == [reference(p, k, mode) for p, k in zip(ps, ks)]


@pytest.mark.parametrize("mode", ["half_even", "half_away", "half_up"])
def test_wide_values_take_the_two_half_product_exactly(mode):
    """Values up to 2^58 times a 31-bit mantissa (an 89-bit product): the two-half form equals exact rational
    rounding of (acc·m + offset) / 2^shift, ties included."""
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(6, generator=gen, dtype=torch.float64) * 1e-6 + 1e-9
    rq = Requantizer.from_real(real, -(1 << 40), 1 << 40, mode, 31, frac=torch.rand(6, generator=gen) - 0.5)
    acc = torch.randint(-(1 << 58), 1 << 58, (3, 6, 40), generator=gen, dtype=torch.int64)
    acc[0, :, 0] = 0
    got = rq.rescale(acc)
    for c in range(6):
        m, k, o = int(rq.multiplier[c]), int(rq.shift[c]), int(rq.offset[c])
        for a, g in zip(acc[:, c].reshape(-1).tolist(), got[:, c].reshape(-1).tolist()):
            assert g == reference(a * m + o, k, mode), (a, m, k, o)


def test_window_sums_of_wide_values_are_exact():
    pool = AvgPool((4, 4), (4, 4))
    x = torch.randint(-(1 << 57), 1 << 57, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0),
                      dtype=torch.int64)
    assert torch.equal(pool.sum_pool(x), x.reshape(2, 3, 2, 4, 2, 4).sum((3, 5)))
