"""Observers: MSE search never loses to min-max, percentile clips, zero tensors, NaN/Inf errors, calibration pools."""

from __future__ import annotations

import pytest
import torch

from qmap.errors import QmapError
from qmap.quant import Quantizer, QuantSpec
from qmap.quant.observers import Observer, observe_tensor, quant_error


def _error(x2d: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    scale, zp = observe_tensor(x2d, spec)
    return quant_error(x2d, scale, zp, spec)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_mse_never_worse_than_minmax_per_channel(bits, dist):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 200, generator=g)
    if dist == "laplace":
        w = torch.sign(w) * torch.empty_like(w).exponential_(generator=g)
    base = QuantSpec(bits=bits, per_channel=True)
    e_minmax = _error(w, base)
    e_mse = _error(w, base.with_(observer="mse"))
    assert bool((e_mse <= e_minmax * (1 + 1e-6)).all())
    if bits <= 4:  # with outliers, clipping must pay off at low bit widths
        assert float(e_mse.sum()) < 0.9 * float(e_minmax.sum())


@pytest.mark.parametrize("spec", [QuantSpec(bits=4, signed=False, observer="mse"),
                                  QuantSpec(bits=3, symmetric=False, observer="mse"),
                                  QuantSpec(bits=4, signed=False, observer="mse", p_norm=2.4),
                                  QuantSpec(bits=4, signed=False, observer="mse", pow2=True)])
def test_mse_activation_observer_over_batches(spec):
    g = torch.Generator().manual_seed(0)
    obs_mse, obs_mm = Observer(spec), Observer(spec.with_(observer="minmax"))
    batches = [torch.relu(torch.randn(4, 8, 6, 6, generator=g)) ** 1.5 for _ in range(5)]
    for b in batches:
        obs_mse.update(b)
        obs_mm.update(b)
    x = torch.cat([b.reshape(1, -1) for b in batches], 1)
    e_mse = quant_error(x, *obs_mse.compute(), spec)
    e_mm = quant_error(x, *obs_mm.compute(), spec)
    assert float(e_mse) <= float(e_mm) * (1 + 1e-6)


def test_sample_pool_stays_bounded():
    obs = Observer(QuantSpec(bits=4, signed=False, observer="mse"), max_samples=1000)
    for _ in range(20):
        obs.update(torch.rand(64, 100))
    assert sum(s.shape[1] for s in obs.samples) <= 5 * 1000
    assert float(obs.hi) <= 1.0 and obs.n_seen == 20


def test_percentile_clips_inside_minmax():
    x = torch.cat([torch.randn(100000), torch.tensor([50.0])])
    s_pct, _ = observe_tensor(x, QuantSpec(bits=8, observer="percentile", percentile=99.9))
    s_mm, _ = observe_tensor(x, QuantSpec(bits=8))
    assert float(s_pct) < 0.2 * float(s_mm)
    assert torch.isclose(s_pct * 127, torch.quantile(x.abs(), 0.999), rtol=0.1)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_tensor_has_a_finite_step(observer, symmetric):
    spec = QuantSpec(bits=4, per_channel=True, observer=observer, symmetric=symmetric)
    q = Quantizer(spec, channels=3)
    q.init_from(torch.zeros(3, 5))  # zero range: step 1, no division by zero
    assert torch.equal(q.scale.data, torch.ones(3))
    assert torch.equal(q(torch.zeros(3, 5)), torch.zeros(3, 5))
    assert bool(torch.isfinite(q.zero_point).all())


def test_zero_channel_among_others():
    w = torch.randn(4, 9)
    w[2] = 0
    scale, _ = observe_tensor(w, QuantSpec(bits=4, per_channel=True, observer="mse"))
    assert bool(torch.isfinite(scale).all()) and float(scale[2]) == 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_is_a_one_line_error(bad):
    w = torch.randn(4, 9)
    w[1, 3] = bad
    with pytest.raises(QmapError, match="NaN or Inf") as e:
        Quantizer(QuantSpec(bits=4, per_channel=True), channels=4, name="conv.weight").init_from(w)
    assert "\n" not in str(e.value) and "conv.weight" in str(e.value)
    with pytest.raises(QmapError, match="NaN or Inf"):
        Observer(QuantSpec(bits=4, signed=False)).update(w)


def test_compute_before_update_is_an_error():
    with pytest.raises(RuntimeError, match="calibration"):
        Observer(QuantSpec()).compute()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("p_norm", [2.0, 2.4])
def test_affine_mse_searches_step_and_zero_point(bits, p_norm):
    """On skewed rows the joint (step, zero point) search beats the min-max affine grid and the best symmetric
    grid, and every row's result is at least as good as any single zero point tried on its own step."""
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 300, generator=g).abs() ** 1.5 - 0.3 * torch.rand(16, 1, generator=g)
    affine = QuantSpec(bits=bits, per_channel=True, symmetric=False, observer="mse", p_norm=p_norm)
    e_aff = _error(w, affine)
    assert bool((e_aff <= _error(w, affine.with_(observer="minmax")) * (1 + 1e-6)).all())
    assert float(e_aff.sum()) < 0.8 * float(_error(w, affine.with_(symmetric=True)).sum())
    scale, zp = observe_tensor(w, affine)
    assert bool(((zp >= affine.qmin) & (zp <= affine.qmax) & (zp == zp.round())).all())
    for dz in (-1.0, 1.0):  # a neighbouring zero point with the chosen step is never better
        other = (zp + dz).clamp(affine.qmin, affine.qmax)
        assert bool((e_aff <= quant_error(w, scale, other, affine) * (1 + 1e-6)).all())
