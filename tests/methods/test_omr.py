"""OMR: a b-bit activation quantizer with migrated copies equals the same-step quantizer clipped at 2·X_clip.

All equivalence checks run in float64 and compare with atol 1e-9 (the identity is exact in real arithmetic;
float64 only has to avoid flipping a rounding decision, which random data never hits at that margin).
Each check also asserts that the plain b-bit model differs, so the test would fail if OMR did nothing.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from qmap.errors import ConfigError
from qmap.methods.channels import find_pairs
from qmap.methods.omr import apply_omr, omr_reference
from qmap.models import build_model
from qmap.quant import QuantConfig, Quantizer, QuantSpec, calibrate, quant_layers, quantize_model
from qmap.quant.shift import OutlierShift, quantizer_clip

ATOL = 1e-9


def _quantized(model: nn.Module, bits: int, images: torch.Tensor, weights: bool = True) -> nn.Module:
    cfg = QuantConfig(w_bits=4, a_bits=bits, first_last_bits=None, w_observer="minmax", a_observer="minmax")
    q = quantize_model(model.double(), cfg)
    calibrate(q, images)
    for _, m in quant_layers(q):
        m.weight_quantizer.enabled = weights
        # clip at the 60th percentile of the input's maximum so many channels have outliers beyond X and 2X
        m.input_quantizer.set_qparams(m.input_quantizer.scale * 0.6)
    first = quant_layers(q)[0][1]
    first.input_quantizer.enabled = False
    return q


def _images(n=16, c=3, size=8, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Features(nn.Module):
    """conv → relu → maxpool → conv → relu → maxpool → flatten → linear → relu → linear (all pair kinds)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _assert_equivalent(omr_model, ref, plain, x):
    out, want, base = omr_model(x), ref(x), plain(x)
    assert (out - want).abs().max() <= ATOL
    assert (base - want).abs().max() > 1e-6, "no value beyond X_clip: the test would not detect a broken OMR"


def test_pairs_found_across_pool_flatten_and_linear():
    pairs, notes = find_pairs(Features())
    assert [(p.producer, p.consumer, p.via_flatten) for p in pairs] == [
        ("features.0", "features.3", False), ("features.3", "classifier.0", True),
        ("classifier.0", "classifier.2", False)]  # execution order
    assert notes == []


def test_scalar_arithmetic_between_a_pair_is_skipped_with_a_note():
    """Channel surgery moves values across the activation only: a scalar affine (``2 * y − 1``) in the chain
    would be applied to the migrated copies too, so the pair is skipped and said."""
    class Scaled(Features):
        def forward(self, x):
            f = self.features
            y = f[3](2 * f[2](f[1](f[0](x))) - 1)
            return self.classifier(torch.flatten(f[5](f[4](y)), 1))

    pairs, notes = find_pairs(Scaled())
    assert [p.key for p in pairs] == ["features.3->classifier.0", "classifier.0->classifier.2"]
    assert notes == ["features.0->features.3: skipped, scalar arithmetic in between"]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("form", ["bias", "shift"])
def test_full_omr_equals_wider_quantizer(bits, weights, form):
    x = _images()
    q = _quantized(Features(), bits, x, weights)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, form=form, calib=x)
    assert {r["form"] for r in report["pairs"]} == {form}
    assert report["extra_channels"] == 8 + 6 + 12
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(seed=1))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_steps_unchanged_and_rows_duplicated(bits):
    x = _images()
    q = _quantized(Features(), bits, x)
    before = {n: m.weight_quantizer.scale.detach().clone() for n, m in quant_layers(q)}
    apply_omr(q, selective=False, calib=x, form="bias")
    conv0, conv3 = q.features[0], q.features[3]
    assert torch.equal(conv0.weight_quantizer.scale, torch.cat([before["features.0"], before["features.0"]]))
    assert torch.equal(conv3.weight_quantizer.scale, torch.cat([before["features.3"], before["features.3"]]))
    assert torch.equal(conv3.weight[:, 8:], conv3.weight[:, :8])
    assert torch.equal(conv3.fp_weight, conv3.weight) and conv3.in_channels == 16
    lin = q.classifier[0]  # flattened: channel c occupies features 4c..4c+3; copies follow the 24 originals
    assert lin.weight.shape[1] == 48 and torch.equal(lin.weight[:, 24:], lin.weight[:, :24])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_selective_omr_matches_per_channel_reference(bits):
    x = _images(n=32)
    q = _quantized(Features(), bits, x)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=True, budget=0.25, calib=x)
    for row in report["pairs"]:
        assert row["extra_channels"] == min(row["candidates"], math.floor(0.25 * row["channels"]))
    assert report["extra_channels"] > 0
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(n=8, seed=2))


def test_selective_full_budget_equals_full_omr_on_calibration_data():
    x = _images(n=32)
    q = _quantized(Features(), 3, x)
    full, sel = copy.deepcopy(q), copy.deepcopy(q)
    r_full = apply_omr(full, selective=False, calib=x)
    r_sel = apply_omr(sel, selective=True, budget=1.0, calib=x)
    assert r_sel["extra_channels"] < r_full["extra_channels"]
    assert (full(x) - sel(x)).abs().max() <= ATOL


def test_global_budget_caps_total_channels():
    x = _images(n=32)
    q = _quantized(Features(), 2, x)
    report = apply_omr(q, selective=True, budget=0.1, budget_scope="global", calib=x)
    assert report["extra_channels"] == math.floor(0.1 * (8 + 6 + 12))


def test_extra_macs_match_the_closed_form():
    x = _images(size=8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 5, 3, padding=1))
    q = _quantized(model, 3, x)
    report = apply_omr(q, selective=False, calib=x, form="bias")
    k = 8
    consumer = k * 5 * 9 * (4 * 4)      # k input channels x out x k^2 x H_out W_out of layer l+1
    producer = k * 3 * 9 * (8 * 8)      # k output channels x in x k^2 x H_out W_out of layer l
    base = 8 * 3 * 9 * 64 + 5 * 8 * 9 * 16
    assert report["pairs"][0]["extra_macs"] == consumer + producer == report["extra_macs"]
    assert report["total_macs"] == base and report["total_macs_after"] == base + consumer + producer
    assert report["fraction"] == pytest.approx((consumer + producer) / base)


@pytest.mark.parametrize("name", ["tiny_cnn_gelu", "tiny_cnn_hswish", "tiny_cnn"])
@pytest.mark.parametrize("bits", [3, 4])
def test_non_relu_activations_shift_form(name, bits):
    x = _images(n=16, size=16)
    q = _quantized(build_model(name, width=0.5), bits, x)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, calib=x)
    forms = {r["consumer"]: r["form"] for r in report["pairs"]}
    expect = "bias" if name == "tiny_cnn" else "shift"
    assert forms["features.3"] == expect and forms["classifier"] == "shift"  # avg-pool never takes the bias form
    if name != "tiny_cnn":
        assert q.features[3].input_quantizer.spec.signed  # GELU / h-swish outputs reach below zero
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(n=4, size=16, seed=3))
    assert any(isinstance(m, OutlierShift) for m in q.modules())


def _freeze_shifts(model: nn.Module) -> None:
    """Turn live-clip shifts into fixed shifts at the quantizers' current clip."""
    for m in model.modules():
        if isinstance(m, OutlierShift):
            m.x_clip.fill_(float(quantizer_clip(m.quantizer[0])))
            m.quantizer = None


def test_live_clip_follows_a_changed_step():
    """DOMR learns s_x after OMR: the live shift must use the new clip, i.e. equal a fixed shift at the new X."""
    x = _images(n=16, size=16)
    q = _quantized(build_model("tiny_cnn_gelu", width=0.5), 3, x)
    apply_omr(q, selective=False, calib=x, live_clip=True)
    stale = copy.deepcopy(q)
    _freeze_shifts(stale)
    for _, m in quant_layers(q):
        m.input_quantizer.set_qparams(m.input_quantizer.scale * 0.7)
    fixed = copy.deepcopy(q)
    _freeze_shifts(fixed)
    for (_, a), (_, b) in zip(quant_layers(stale), quant_layers(q)):
        a.input_quantizer.set_qparams(b.input_quantizer.scale)
    y = _images(n=4, size=16, seed=4)
    assert (q(y) - fixed(y)).abs().max() <= ATOL
    assert (q(y) - stale(y)).abs().max() > 1e-6


def test_b_plus_one_bit_statement():
    """codes 0..2(2^b−1) equal the (b+1)-bit unsigned quantizer of the same step below its top code."""
    for b in (2, 3, 4):
        s = 0.37
        wide = Quantizer(QuantSpec(bits=b + 1, signed=False))
        wide.set_qparams(torch.tensor([s]))
        narrow = Quantizer(QuantSpec(bits=b, signed=False))
        narrow.set_qparams(torch.tensor([s]))
        x_clip = float(quantizer_clip(narrow))
        v = torch.linspace(-1, (2 ** (b + 1) - 1.5) * s - 1e-6, 2001, dtype=torch.float64)
        omr = narrow(v) + narrow(torch.relu(v - x_clip))
        assert torch.allclose(omr, wide(v), atol=ATOL, rtol=0)
        top = torch.tensor([(2 ** (b + 1) - 1) * s], dtype=torch.float64)  # the one code OMR lacks
        assert float(narrow(top) + narrow(torch.relu(top - x_clip))) == pytest.approx(2 * x_clip)
        assert float(wide(top)) == pytest.approx(2 * x_clip + s)


def test_errors_are_config_errors():
    x = _images()
    q = _quantized(Features(), 3, x)
    with pytest.raises(ConfigError, match="calibration"):
        apply_omr(q, selective=True)
    with pytest.raises(ConfigError, match="not an OMR-eligible pair"):
        apply_omr(q, pairs=[("features.0", "classifier.2")], selective=False)
    gelu = _quantized(build_model("tiny_cnn_gelu", width=0.5), 3, _images(size=16))
    with pytest.raises(ConfigError, match="bias form"):
        apply_omr(gelu, selective=False, form="bias", calib=_images(size=16))


def test_adaround_quantizers_are_extended_too():
    """OMR after AdaRound's quantizer is attached (DOMR stage 2): its per-weight α is duplicated with the weight."""
    from qmap.quant.adaround import attach_adaround

    x = _images()
    q = _quantized(Features(), 3, x)
    for _, m in quant_layers(q):
        attach_adaround(m)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, calib=x)
    for _, m in quant_layers(q):
        assert m.weight_quantizer.alpha.shape == m.weight.shape
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(seed=1))


def test_conv_conv_pair_is_skipped_with_a_note():
    x = _images()
    q = _quantized(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), 3, x)
    report = apply_omr(q, selective=False, calib=x)
    assert report["pairs"] == [] and "Conv→Conv" in report["skipped"][0]


@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish])
def test_depthwise_producer_takes_the_shift_form(act):
    """expand → depthwise → act → project (a MobileNet block): the copy is made on the project conv's input, so
    a grouped producer is fine for the shift form; the bias form (splitting producer channels) is refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), act(), nn.Conv2d(8, 8, 3, padding=1, groups=8), act(),
                          nn.Conv2d(8, 6, 1), nn.Flatten(), nn.Linear(6 * 8 * 8, 4))
    x = _images()
    q = _quantized(model, 3, x)
    q[4].input_quantizer.set_qparams(q[4].input_quantizer.scale * 0.5)  # plenty of values beyond X and 2X
    plain = copy.deepcopy(q)
    report = apply_omr(q, pairs=[("2", "4")], selective=False, calib=x)
    assert [(r["consumer"], r["form"], r["extra_channels"]) for r in report["pairs"]] == [("4", "shift", 8)]
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(n=4, seed=3))
    with pytest.raises(ConfigError, match="dense layers"):
        apply_omr(copy.deepcopy(plain), pairs=[("2", "4")], form="bias", calib=x)
    assert "2->4" not in {p.key for p in find_pairs(plain)[0]}  # OCS still skips it (it splits producer rows)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish])
@pytest.mark.parametrize("per_group", [1, 2])
def test_grouped_consumer_doubles_every_group(act, per_group):
    """expand → act → depthwise (MobileNet's h-swish input of a low-bit layer): every channel is copied, the
    shift puts each group's copies after its originals and the grouped weight [O, C/g, k, k] becomes
    [O, 2C/g, k, k] — exactly the same-step quantizer with twice the clip. Selective OMR migrates such a pair whole
    or not at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), act(), nn.Conv2d(8, 8, 3, padding=1, groups=8 // per_group), act(),
                          nn.Conv2d(8, 6, 1), nn.Flatten(), nn.Linear(6 * 8 * 8, 4))
    x = _images()
    q = _quantized(model, 3, x)
    q[2].input_quantizer.set_qparams(q[2].input_quantizer.scale * 0.5)  # plenty of values beyond X and 2X
    plain = copy.deepcopy(q)
    report = apply_omr(q, pairs=[("0", "2")], selective=False, calib=x, live_clip=True)
    assert [(r["form"], r["extra_channels"]) for r in report["pairs"]] == [("shift", 8)]
    assert q[2].weight.shape == (8, 2 * per_group, 3, 3) and q[2].in_channels == 16 and q[2].groups == 8 // per_group
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(n=4, seed=3))
    selective = apply_omr(copy.deepcopy(plain), pairs=[("0", "2")], selective=True, budget=0.25, calib=x)
    assert selective["pairs"][0]["extra_channels"] in (0, 8)  # (integer model: tests/methods/test_omr_integer.py)


class _SharedAct(nn.Module):
    """expand → act → depthwise → act → project with ONE activation module called twice (as in many user
    MobileNets): a shift inserted after it would also widen the depthwise conv's input."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.expand, self.act = nn.Conv2d(3, 8, 1), act()
        self.dw, self.project = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.project(self.act(self.dw(self.act(self.expand(x))))).mean((2, 3)))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish])
def test_a_reused_activation_module_carries_no_shift(act):
    x = _images()
    q = _quantized(_SharedAct(act), 3, x)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, calib=x, form="shift")
    assert report["pairs"] == [] and any("dw->project: skipped, no module" in n for n in report["skipped"])
    assert torch.equal(q(x), plain(x))  # nothing changed, and the forward still runs


class _FlattenModule(nn.Module):
    """A user's ``nn.Sequential`` with ``nn.Flatten`` as a module: ReLU → Flatten → Linear and ReLU → MaxPool →
    Flatten → Linear. The shift must act on channels, i.e. before the flatten, not after it."""

    def __init__(self, pool: bool):
        super().__init__()
        torch.manual_seed(0)
        size = 2 if pool else 4
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), *([nn.MaxPool2d(2)] if pool else []),
                                  nn.Flatten(), nn.Linear(6 * size * size, 12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("bits", [2, 4])
def test_shift_form_before_a_flatten_module(pool, bits):
    x = _images()
    q = _quantized(_FlattenModule(pool), bits, x)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, form="shift", calib=x)
    assert [(r["producer"], r["consumer"]) for r in report["pairs"]] == [
        ("body.0", "body.3"), ("body.3", f"body.{6 + pool}"), (f"body.{6 + pool}", f"body.{8 + pool}")]
    shifted = "body.5" if pool else "body.4"  # the last module before the flatten carries the copies
    assert isinstance(q.get_submodule(shifted)[1], OutlierShift)
    _assert_equivalent(q, omr_reference(plain, report), plain, _images(seed=1))


def test_no_module_before_a_flatten_module_skips_the_shift_with_a_note():
    class FlattenFirst(nn.Module):  # conv → Flatten → ReLU → Linear: the copies could only follow the flatten
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.ReLU(), nn.Linear(4 * 64, 5))

        def forward(self, x):
            return self.body(x)

    x = _images()
    q = _quantized(FlattenFirst(), 3, x)
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, form="shift", calib=x)
    assert report["pairs"] == [] and any("body.0->body.3: skipped, no module before the flatten" in n
                                         for n in report["skipped"])
    assert torch.equal(q(x), plain(x))
