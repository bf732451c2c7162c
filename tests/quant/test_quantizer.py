"""QuantSpec ranges and validation; the fake-quant Quantizer: rounding, STE, asymmetric, pow2, decoupled step."""

from __future__ import annotations

import pytest
import torch

from qmap.errors import ConfigError, QmapError
from qmap.quant import Quantizer, QuantSpec
from qmap.quant.rounding import round_half_away, round_half_even


@pytest.mark.parametrize("bits", range(2, 9))
def test_ranges(bits):
    signed = QuantSpec(bits=bits)
    assert (signed.qmin, signed.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    narrow = QuantSpec(bits=bits, narrow=True)
    assert (narrow.qmin, narrow.qmax) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    unsigned = QuantSpec(bits=bits, signed=False)
    assert (unsigned.qmin, unsigned.qmax, unsigned.levels) == (0, 2**bits - 1, 2**bits)
    assert (QuantSpec(bits=4, narrow=True).qmin, QuantSpec(bits=4, narrow=True).qmax) == (-7, 7)


@pytest.mark.parametrize("bad", [0, 1, 9, 12, 16, 32, "4", 4.0, None])
def test_bit_widths_outside_2_8_are_config_errors(bad):
    with pytest.raises(ConfigError, match="bit width") as e:
        QuantSpec(bits=bad)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, QmapError)


def test_accumulator_widths():
    assert QuantSpec(bits=16, accumulator=True).qmax == 2**15 - 1
    assert QuantSpec(bits=32, accumulator=True).qmin == -(2**31)
    with pytest.raises(ConfigError):
        QuantSpec(bits=12, accumulator=True)


@pytest.mark.parametrize("kwargs, match", [({"observer": "kl"}, "observer"), ({"rounding": "floor"}, "rounding"),
                                           ({"percentile": 0}, "percentile"), ({"signed": False, "narrow": True},
                                                                               "narrow")])
def test_spec_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec(**kwargs)


def test_round_half_even_vs_half_away():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.51])
    assert round_half_even(x).tolist() == [0, 2, 2, 0, -2, -2, 0, -1]
    assert round_half_away(x).tolist() == [1, 2, 3, -1, -2, -3, 0, -1]
    for mode, expected in (("half_even", [0, 2, 2, 0, -2, -2]), ("half_away", [1, 2, 3, -1, -2, -3])):
        q = Quantizer(QuantSpec(bits=8, rounding=mode))
        q.set_qparams(torch.tensor(1.0))
        assert q.to_int(x[:6]).tolist() == expected
        assert q(x[:6]).tolist() == expected


def _quantizer(spec: QuantSpec, x: torch.Tensor, channels: int = 1) -> Quantizer:
    q = Quantizer(spec, channels=channels)
    q.init_from(x)
    return q


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_signed_per_channel(bits):
    w = torch.randn(6, 4, 3, 3) * torch.linspace(0.1, 2, 6).view(-1, 1, 1, 1)
    q = _quantizer(QuantSpec(bits=bits, per_channel=True), w, channels=6)
    assert q.scale.shape == (6,)
    ints = q.to_int(w)
    assert ints.dtype == torch.int32 and ints.min() >= -(2 ** (bits - 1)) and ints.max() <= 2 ** (bits - 1) - 1
    # minmax: max|w| per channel maps to qmax; the error inside the range is at most half a step
    assert torch.equal(ints.abs().amax((1, 2, 3)), torch.full((6,), 2 ** (bits - 1) - 1, dtype=torch.int32))
    err = (q(w) - w).abs().amax((1, 2, 3))
    assert bool((err <= q.scale / 2 * (1 + 1e-5) + q.scale * (bits == 2)).all())


def test_unsigned_activations():
    x = torch.rand(1000) * 3
    q = _quantizer(QuantSpec(bits=4, signed=False), x)
    assert q.to_int(x).min() >= 0 and q.to_int(x).max() == 15
    assert float((q(x) - x).abs().max()) <= float(q.scale) / 2 + 1e-6
    assert q.to_int(-x).max() == 0  # negative inputs clip to 0 (a ReLU)


def test_asymmetric_zero_point():
    x = torch.rand(4096) * 2 + 1.0  # in [1, 3]: the range [0, 3] is covered by the affine quantizer
    q = _quantizer(QuantSpec(bits=4, symmetric=False), x)
    assert float(q.zero_point) == q.spec.qmin  # lo clipped at 0 → zero point at qmin
    x2 = torch.rand(4096) * 4 - 1  # [-1, 3]
    q2 = _quantizer(QuantSpec(bits=4, symmetric=False), x2)
    assert q.spec.qmin < float(q2.zero_point) < q.spec.qmax
    assert float((q2(x2) - x2).abs().max()) <= float(q2.scale) / 2 + 1e-6
    assert torch.allclose(q2.dequantize(q2.to_int(x2)), q2(x2))


@pytest.mark.parametrize("observer", ["minmax", "mse", "percentile"])
def test_pow2_steps(observer):
    w = torch.randn(8, 16)
    q = _quantizer(QuantSpec(bits=4, per_channel=True, pow2=True, observer=observer), w, channels=8)
    log2 = torch.log2(q.scale)
    assert torch.equal(log2, torch.round(log2))


def test_ste_gradient():
    q = Quantizer(QuantSpec(bits=4, signed=False))
    q.set_qparams(torch.tensor(0.5))  # range [0, 7.5]
    x = torch.tensor([-1.0, 0.3, 2.2, 7.4, 9.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # identity inside the clipping range, zero outside
    q.scale.requires_grad_(True)
    y = torch.tensor([0.3, 2.2, 9.0])
    q(y).sum().backward()
    # LSQ gradient d x̂/d s = round(x/s) − x/s inside, qmax outside
    expected = (torch.round(y[:2] / 0.5) - y[:2] / 0.5).sum() + 15
    assert torch.allclose(q.scale.grad, expected.reshape(1))


def test_no_grad_fast_path_matches_ste_path():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=g) * 3, torch.arange(-20, 21) * 0.25])  # includes exact ties
    for spec in (QuantSpec(bits=3), QuantSpec(bits=5, symmetric=False), QuantSpec(bits=4, rounding="half_away")):
        q = _quantizer(spec, x)
        with torch.no_grad():
            fast = q(x)
        slow = q(x.clone().requires_grad_(True))
        assert torch.equal(fast, slow.detach())


def test_decoupled_dequant_step():
    w = torch.randn(4, 10)
    q = _quantizer(QuantSpec(bits=4, per_channel=True), w, channels=4)
    ints_before = q.to_int(w)
    q.decouple()
    assert q.dequant_scale.requires_grad and not q.scale.requires_grad
    q.dequant_scale.data *= 1.25  # s' ≠ s: the integers stay round(w/s), the values become q·s'
    assert torch.equal(q.to_int(w), ints_before)
    assert torch.allclose(q(w), ints_before * (q.scale * 1.25).view(-1, 1))
    assert torch.equal(q.step, q.dequant_scale)
    q(w).sum().backward()
    assert q.dequant_scale.grad is not None and q.scale.grad is None


def test_invalid_step_is_rejected():
    q = Quantizer(QuantSpec(bits=4))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step"):
            q.set_qparams(torch.tensor(bad))


def _autograd_fake_quant(x, s, step, z, qmin, qmax, keep):
    """The textbook STE chain (round with an identity backward, clamp, affine) for FakeQuantSTE to match."""
    u = x / s
    q = torch.clamp(u + (torch.round(u) - u).detach() + z, qmin, qmax)
    out = (q - z) * step
    return out if keep is None else torch.where(keep.bool(), x, out)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fused_fake_quant_matches_autograd_ste(decoupled, per_channel, drop, affine):
    from qmap.quant.ste import FakeQuantSTE

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 5, 5, generator=g) * 2
    shape = (1, 6, 1, 1) if per_channel else ()
    s = (torch.rand(shape, generator=g) * 0.3 + 0.2).requires_grad_(not decoupled)
    step = (s.detach() * 1.1).requires_grad_(True) if decoupled else s
    z = torch.randint(-2, 2, shape, generator=g).float() if affine else torch.zeros(shape)
    keep = (torch.rand(x.shape, generator=g) < 0.3).float() if drop else None
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a = FakeQuantSTE.apply(xa, s, step, z if affine else None, -2, 1, "half_even", keep)
    grads_a = torch.autograd.grad((out_a * x).sum(), [xa, step])
    out_b = _autograd_fake_quant(xb, s, step, z, -2, 1, keep)
    grads_b = torch.autograd.grad((out_b * x).sum(), [xb, step])
    assert torch.equal(out_a, out_b)  # the forward values are identical
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)

