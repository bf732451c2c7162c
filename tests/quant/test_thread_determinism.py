"""Calibration statistics do not depend on the torch thread count (issue 16 item 11): the MSE observer's
sums are accumulated in float64, so 1 and 2 threads choose bit-identical steps."""

import torch

from qmap.quant.observers import Observer, observe_tensor
from qmap.quant.spec import QuantSpec


def _steps(threads: int, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        obs = Observer(QuantSpec(bits=4, signed=False, observer="mse"))
        for chunk in x.split(16):
            obs.update(chunk)
        act, _ = obs.compute()
        weight, _ = observe_tensor(w, QuantSpec(bits=4, per_channel=True, observer="mse"))
        return act, weight
    finally:
        torch.set_num_threads(before)


def test_mse_steps_identical_on_one_and_two_threads():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(64, 256, 16, 16, generator=gen)) ** 1.5  # large enough to be reduced in parallel
    w = torch.randn(64, 256, 3, 3, generator=gen)
    a1, w1 = _steps(1, x, w)
    a2, w2 = _steps(2, x, w)
    assert torch.equal(a1, a2), (a1, a2)
    assert torch.equal(w1, w2)
