"""``round_shift`` = round(p / 2^shift) with each tie rule, against Python's exact integer arithmetic, on both
sides of 2^53 (below it the half-even case takes the float64 path, above it the bit operations)."""

import random

import pytest
import torch

from qmap.quant.requant import EXACT_FLOAT64, round_shift


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
