"""α-scaling: the no-op under a recomputed step, the fixed-grid knob, the search guarantees, the representation the
integer model reads, and the function-preserving re-parameterisation (tiny models, synthetic data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testutil import randomise_bn
from torch import nn

from qmap.errors import ConfigError
from qmap.methods import get_method
from qmap.methods.alpha import alpha_grid, apply, capture_input, fixed_grid_step, fp_input, integer_kernel, prepare
from qmap.methods.layer_error import LayerError
from qmap.methods.reparam import equalization_alphas, reparameterize
from qmap.models import build_model
from qmap.nn import fuse_bn
from qmap.quant import QuantConfig, Quantizer, QuantSpec, quant_layers

CFG = QuantConfig(w_bits=4, a_bits=4, a_observer="minmax")
SEARCH = {"points": 24, "refine_iters": 10}


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(build_model("tiny_cnn", width=0.5))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=[{}, {"sequential": False}, {"per_channel_alpha": True},
                                        {"fixed_grid": "pow2"}, {"criterion": "weight_mse"}],
                ids=["seq", "fp-inputs", "per-channel-alpha", "pow2", "weight-mse"])
def result(request, tiny, images):
    return apply(tiny, images, CFG, **SEARCH, **request.param), request.param


def _quant_codes(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    q = Quantizer(spec, channels=w.shape[0])
    q.init_from(w)
    return q.to_int(w), q(w)


@pytest.mark.parametrize("per_channel", [False, True])
def test_alpha_cancels_when_the_step_is_recomputed_from_min_max(per_channel):
    """s(αW) = α·s(W) for min-max, so Q(αW)/α = Q(W): same integers for any α, same weights (bit-exact for α = 2^k)."""
    w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(2))
    spec = QuantSpec(bits=4, per_channel=per_channel, observer="minmax")
    codes, wq = _quant_codes(w, spec)
    for alpha in (0.37, 0.5, 0.81, 1.3, 2.0, 4.0, 5.9):
        codes_a, wq_a = _quant_codes(alpha * w, spec)
        assert torch.equal(codes_a, codes)
        if alpha in (0.5, 2.0, 4.0):
            assert torch.equal(wq_a / alpha, wq)
        else:
            torch.testing.assert_close(wq_a / alpha, wq, rtol=1e-6, atol=0)


def test_alpha_matters_on_a_fixed_grid():
    w = torch.randn(8, 72, generator=torch.Generator().manual_seed(3))
    s = w.abs().max() / 7
    q_one = torch.clamp(torch.round(w / s), -8, 7) * s
    q_alpha = torch.clamp(torch.round(1.3 * w / s), -8, 7) * s / 1.3
    assert not torch.equal(q_one, q_alpha)
    assert ((q_alpha - w) ** 2).mean() != pytest.approx(float(((q_one - w) ** 2).mean()), rel=1e-3)


def test_alpha_grid_holds_one_and_is_log_spaced():
    g = alpha_grid(0.5, 2.0, 64)
    assert (g == 1.0).sum() == 1 and len(g) == 65 and g[0] == pytest.approx(0.5) and g[-1] == pytest.approx(2.0)
    ratios = g[1:] / g[:-1]
    assert float(ratios.max() / ratios.min()) < 1.6  # log-spaced (1.0 splits one interval)
    with pytest.raises(ConfigError):
        alpha_grid(0, 2, 8)


def test_pow2_grid_is_powers_of_two():
    s = torch.tensor([0.3, 0.013, 1.0, 5.0])
    p = fixed_grid_step(s, "pow2")
    assert torch.equal(p, torch.exp2(torch.round(torch.log2(p))))
    assert ((p / s) > 2 ** -0.51).all() and ((p / s) < 2 ** 0.51).all()


def test_chosen_alpha_never_increases_the_error(result):
    res, opts = result
    rows = res.report["layers"]
    assert set(rows) == {n for n, _ in quant_layers(res.model)}
    for name, row in rows.items():
        assert row["mse_after"] <= row["mse_before"], name
    if opts.get("criterion") != "weight_mse":  # per-channel MSE-initialised steps are already weight-MSE optimal
        assert any(r["mse_after"] < 0.95 * r["mse_before"] for r in rows.values())


def _direct_output_mse(qmodel, layer, images, sequential: bool) -> float:
    x_fp = fp_input(qmodel, layer, images)
    x_in = capture_input(qmodel, layer, images) if sequential else x_fp
    y_fp = layer._conv_forward(x_fp, layer.weight, layer.bias) if isinstance(layer, nn.Conv2d) else \
        F.linear(x_fp, layer.weight, layer.bias)
    with torch.no_grad():
        return float(((layer(x_in) - y_fp).double() ** 2).mean())


def test_reported_mse_is_the_quantized_models_layer_error(result, images):
    """The search's quadratic form, at the stored step s/α, equals the quantized layer's actual output MSE."""
    res, opts = result
    if opts.get("criterion") == "weight_mse":
        for name, layer in quant_layers(res.model):
            with torch.no_grad():
                err = float(((layer.quantized_weight() - layer.weight) ** 2).mean())
            assert res.report["layers"][name]["mse_after"] == pytest.approx(err, rel=1e-5)
        return
    sequential = opts.get("sequential", True)
    for name, layer in quant_layers(res.model):
        direct = _direct_output_mse(res.model, layer, images, sequential)
        assert res.report["layers"][name]["mse_after"] == pytest.approx(direct, rel=1e-4), name


def test_integer_kernel_and_steps_are_consistent(result):
    """fake-quant weight = step·int exactly; int = clip(round(α·W/s)) on the fixed grid s; step = s/α."""
    res, _ = result
    for name, layer in quant_layers(res.model):
        row = res.report["layers"][name]
        ints, step = integer_kernel(layer)
        shape = [-1] + [1] * (layer.weight.dim() - 1)
        assert torch.equal(layer.quantized_weight(), ints.float() * step.reshape(shape))
        alpha = torch.as_tensor(row["alpha"], dtype=torch.float32).reshape(-1)
        grid = torch.tensor(row["grid_step"])
        torch.testing.assert_close(step.reshape(-1).expand_as(grid), grid / alpha, rtol=0, atol=0)
        spec = layer.weight_quantizer.spec
        expected = torch.clamp(torch.round(layer.weight * alpha.reshape(shape) / grid.reshape(shape)),
                               spec.qmin, spec.qmax)
        mismatch = (expected != ints).float().mean()
        assert mismatch < 1e-3, f"{name}: {mismatch:.2e} of the integers differ beyond float rounding at ties"
        assert row["zeros_after"] == int((ints == 0).sum())


def test_output_error_quadratic_form_matches_direct_computation(tiny, images):
    qmodel = prepare(tiny, images, CFG)
    name, layer = quant_layers(qmodel)[1]
    x_fp = fp_input(qmodel, layer, images)
    x_q = layer.input_quantizer(x_fp)
    objective = LayerError.output_space(layer, x_q, x_fp)
    w = layer.weight.detach()
    cand = w * (1 + 0.05 * torch.randn_like(w))
    got = objective.per_channel(cand.reshape(1, cand.shape[0], -1))[0]
    y = F.conv2d(x_q.double(), cand.double(), padding=1) - F.conv2d(x_fp.double(), w.double(), padding=1)
    want = (y ** 2).sum((0, 2, 3))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    assert objective.count == len(images) * 32 * 32


def test_fixed_grid_initial_alpha_one_is_rtn(tiny, images):
    base = prepare(tiny, images, CFG)
    rtn = get_method("rtn")(tiny, images, CFG).model
    for (_, a), (_, b) in zip(quant_layers(base), quant_layers(rtn)):
        assert torch.equal(a.quantized_weight(), b.quantized_weight())
        assert torch.equal(a.input_quantizer.scale, b.input_quantizer.scale)


def test_layers_option_and_option_errors(tiny, images):
    res = apply(tiny, images, CFG, layers=["features.3"], **SEARCH)
    assert list(res.report["layers"]) == ["features.3"]
    for bad in ({"criterion": "kl"}, {"fixed_grid": "log2"}, {"layers": ["features.99"]}):
        with pytest.raises(ConfigError):
            apply(tiny, images, CFG, **SEARCH, **bad)


def test_registry_finds_alpha():
    assert get_method("alpha") is apply


# ----- function-preserving re-parameterisation -----

def _random_alphas(model: nn.Module, per_channel: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    out = {}
    for n in names:
        c = model.get_submodule(n).weight.shape[0]
        out[n] = torch.exp(torch.randn(c if per_channel else 1, generator=g))  # α in ~[0.1, 10]
    return out


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("arch", ["tiny_cnn", "vgg16_bn_sq8"])
def test_reparameterize_preserves_the_fp_function(arch, per_channel):
    """α on layer l (weight and bias), 1/α on layer l+1's inputs: exact through ReLU, max-pool, avg-pool, flatten."""
    torch.manual_seed(4)
    model = fuse_bn(randomise_bn(build_model(arch, width=0.125)))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x)
        y_re = reparameterize(model, _random_alphas(model, per_channel, 6))(x)
    assert (y_re - y).abs().max() <= 1e-5 * max(1.0, float(y.abs().max()))


def test_reparameterize_moves_weight_and_bias():
    model = fuse_bn(randomise_bn(build_model("tiny_cnn", width=0.5)))
    out = reparameterize(model, {"features.0": 2.0})
    assert torch.equal(out.features[0].weight, 2 * model.features[0].weight)
    assert torch.equal(out.features[0].bias, 2 * model.features[0].bias)
    assert torch.equal(out.features[3].weight, model.features[3].weight / 2)


def test_reparameterize_refuses_non_homogeneous_or_last_layers():
    with pytest.raises(ConfigError, match="BatchNorm"):
        reparameterize(randomise_bn(build_model("tiny_cnn")), {"features.0": 2.0})
    with pytest.raises(ConfigError, match="homogeneous"):
        reparameterize(fuse_bn(build_model("tiny_cnn_gelu")), {"features.0": 2.0})
    fused = fuse_bn(build_model("tiny_cnn"))
    with pytest.raises(ConfigError, match="last layer"):
        reparameterize(fused, {"classifier": 2.0})
    with pytest.raises(ConfigError, match="> 0"):
        reparameterize(fused, {"features.0": -1.0})


def test_equalization_alphas_equalise_channel_ranges():
    model = fuse_bn(randomise_bn(build_model("tiny_cnn", width=0.5)))
    alphas = equalization_alphas(model)
    out = reparameterize(model, {"features.0": alphas["features.0"]})
    r0 = out.features[0].weight.abs().amax((1, 2, 3))
    r1 = out.features[3].weight.abs().amax((0, 2, 3))
    torch.testing.assert_close(r0, r1, rtol=1e-5, atol=0)
