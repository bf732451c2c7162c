"""ModelGraph: execution order, normalisation, chains, units, shapes and the unsupported-operation error, on
hand-written user models (tests/user_models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from user_models import USER_MODELS, build, images

from qmap.errors import ConfigError
from qmap.nn import ModelGraph, fuse_bn
from qmap.quant import quantize_model

# BN → ReLU → conv: their BNs stay unfused (SENet's blocks too); EfficientNet's expansion-1 block never calls its
# conv1 / bn1 (as the repository's code does), so that unused BN stays
PRE_ACTIVATION = ("preact_resnet", "wide_resnet", "densenet", "senet", "efficientnet")


@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_units_compose_to_the_forward_and_fusion_is_exact(name):
    model = build(name)
    x = images(4)
    fused = fuse_bn(model)
    assert not ModelGraph(fused).bn_pairs()  # every layer → BN pair folded; pre-activation BNs stay
    assert any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == (name in PRE_ACTIVATION)
    ref = model(x)
    assert (fused(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    y = x
    graph = ModelGraph(fused)
    for unit in graph.units():  # up to the logits: a softmax head is not part of any unit
        y = unit(y)
    if graph.head is not None:
        y = graph.gm.get_submodule(graph.head.target)(y) if graph.head.op == "call_module" else graph.head.target(
            y, *graph.head.args[1:], **graph.head.kwargs)
    # avg_pool2d(x, x.size(3)) runs as adaptive_avg_pool2d, x * x.sigmoid() as silu, torch.add(x, y, alpha=c) as
    # x + c * y: another float rounding
    if name in ("option_a_resnet", "senet", "efficientnet", "scaled_residual"):
        assert (y - fused(x)).abs().max() <= 1e-6 * fused(x).abs().max()
    else:
        assert torch.equal(y, fused(x))


def test_normalisation_reads_view_mean_and_functional_forms():
    g = ModelGraph(fuse_bn(build("view_fc")))
    assert [g.kind[n] for n in g.nodes] == ["conv", "relu", "maxpool", "conv", "relu", "flatten", "linear"]
    g = ModelGraph(build("se_gate"))
    kinds = [g.kind[n] for n in g.nodes]
    assert kinds.count("adaptive_avgpool") == 2 and "mul" in kinds and "hardsigmoid" in kinds
    g = ModelGraph(build("concat"))
    assert [g.kind[n] for n in g.nodes][-2:] == ["flatten", "linear"]  # .reshape(x.shape[0], -1)


def test_first_and_last_follow_execution_not_definition_order():
    model = build("head_first")
    assert [n for n, _ in model.named_modules() if n][:1] == ["head"]  # defined first
    g = ModelGraph(model)
    assert (g.first, g.last, g.layers) == ("conv1", "head", ["conv1", "conv2", "head"])
    q = quantize_model(model)  # W4A4, first/last at 8 bits
    bits = {n: (q.get_submodule(n).weight_quantizer.spec.bits, q.get_submodule(n).input_quantizer.spec.bits)
            for n in g.layers}
    assert bits == {"conv1": (8, 8), "conv2": (4, 4), "head": (8, 8)}


def test_chains_stop_at_branches_and_merges():
    chains, notes = ModelGraph(fuse_bn(build("residual"))).chains()
    assert [c.key for c in chains] == ["layer1.conv1->layer1.conv2", "layer2.conv1->layer2.conv2"]
    assert "stem.0: output branches to 2 nodes" in notes
    assert any(n.startswith("layer2.short.0: reaches add") for n in notes)
    chains, _ = ModelGraph(fuse_bn(build("view_fc"))).chains()
    assert [(c.key, c.kinds, c.via_flatten) for c in chains] == [
        ("features.0->features.4", ("relu", "maxpool"), False), ("features.4->fc", ("relu", "flatten"), True)]


def test_residual_block_is_one_unit():
    g = ModelGraph(fuse_bn(build("residual")))
    sizes = [sum(isinstance(m, nn.Conv2d) for m in u.modules()) for u in g.units()]
    assert sizes.count(2) == 1 and sizes.count(3) == 1  # the identity block, the block with a 1x1 shortcut


def test_shapes_per_layer():
    g = ModelGraph(build("depthwise"), images(2))
    shapes = g.layer_shapes()
    assert list(shapes) == g.layers
    assert shapes["body.9"] == ((2, 24, 16, 16), (2, 24, 8, 8))
    assert shapes["classifier.1"] == ((2, 32), (2, 10))
    with pytest.raises(ConfigError, match="example input"):
        ModelGraph(build("depthwise")).layer_shapes()


class _Leaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Softsign()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class _Softmax(_Leaky):
    def forward(self, x):
        return self.fc(torch.softmax(self.conv(x), 1).mean((2, 3)))


class _SoftmaxBatch(_Leaky):
    def forward(self, x):
        return F.log_softmax(self.fc(self.conv(x).mean((2, 3))), dim=0)


class _ChunkBatch(_Leaky):
    def forward(self, x):
        return self.fc(self.conv(x).chunk(2)[0].mean((2, 3)))


class _Reciprocal(_Leaky):
    def forward(self, x):
        return self.fc(1 / self.conv(x).mean((2, 3)))


class _Branching(_Leaky):
    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("model, match", [
    (_Leaky(), r"unsupported operation module act \(Softsign\) in _Leaky; supported: Conv2d"),
    (_Softmax(), r"only a softmax / log-softmax over the classes \(dim 1\) as the forward's last op is supported "
                 r"for call_function softmax \(node softmax\)"),
    (_SoftmaxBatch(), r"over the classes \(dim 1\) .* log_softmax"),
    (_ChunkBatch(), r"unsupported operation method \.chunk\(\) \(node chunk\)"),
    (_Reciprocal(), r"unsupported operation call_function truediv"),
    (_Branching(), r"cannot trace _Branching with torch.fx"),
])
def test_unsupported_operation_is_one_line_before_any_work(model, match):
    with pytest.raises(ConfigError, match=match) as err:
        quantize_model(model)
    assert "\n" not in str(err.value)


def test_sizes_computed_in_python_are_traced_on_an_example():
    """A forward computing ``int(x.size(1) * ratio)`` (ShuffleNetV2's split) cannot be traced symbolically; qmap
    traces it again running every op on one example, so the split is a channel gather of the channel count it
    computed, the batch size stays free and the ops read as usual; branching on values is still refused
    (``_Branching`` above)."""
    model = fuse_bn(build("shufflenet_v2_sized"))
    for g in (ModelGraph(model, images(1)), ModelGraph(model)):  # an example's shape, or the default 32x32
        kinds = [g.kind[n] for n in g.nodes]
        assert kinds.count("channel_gather") == 6 and "size" not in {n.target for n in g.nodes}
        for n in (1, 5):  # 2 splits into 2 pieces, 2 shuffles
            x = images(n, seed=n)
            assert torch.allclose(g.gm(x), model(x), atol=1e-6)


def test_a_layer_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x)))

    with pytest.raises(ConfigError, match="conv are called more than once"):
        ModelGraph(Twice())


def test_option_a_shortcut_and_self_sized_pool_read_as_ops():
    """``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` is a stride-2 1x1 max-pool then channel_pad, and
    ``F.avg_pool2d(out, out.size()[3])`` a global average pool (refused on a non-square map); spatial or
    non-zero padding is refused with one line."""
    g = ModelGraph(fuse_bn(build("option_a_resnet")), images(1))
    kinds = [g.kind[n] for n in g.nodes]
    assert kinds.count("channel_pad") == 1 and kinds.count("maxpool") == 1 and "adaptive_avgpool" in kinds

    class Wide(nn.Module):
        def __init__(self, pad=(0, 0, 0, 0, 1, 1), value=0.0):
            super().__init__()
            self.conv, self.fc, self.pad, self.value = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(6, 2), pad, value

        def forward(self, x):
            y = F.pad(self.conv(x), self.pad, "constant", self.value)
            return self.fc(F.avg_pool2d(y, y.size()[3]).view(y.size(0), -1))

    ModelGraph(Wide(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="only on square maps"):
        ModelGraph(Wide(), torch.zeros(1, 3, 8, 12))
    for bad in (dict(pad=(1, 1, 0, 0, 1, 1)), dict(value=1.0)):
        with pytest.raises(ConfigError, match="only zero padding of channels"):
            ModelGraph(Wide(**bad))


def test_squeeze_excite_views_read_as_flatten_and_channels():
    """``pool(x).view(b, c)`` is a flatten, ``fc(y).view(b, c, 1, 1)`` the unflatten to a 1x1 map and
    ``y.expand_as(x)`` before the ``*`` vanishes (broadcasting)."""
    g = ModelGraph(fuse_bn(build("se_resnet")), images(1))
    kinds = [g.kind[n] for n in g.nodes]
    assert kinds.count("flatten") == 2 and kinds.count("unflatten") == 1 and "mul" in kinds
    assert all(n.target != "expand_as" for n in g.nodes)


def test_channel_pieces_shuffle_scalars_and_heads_read_as_ops():
    """ShuffleNet's chunk / shuffle and a ``torch.split`` are channel gathers; a Ghost module's ``[:, :k]`` too;
    ``0.5 * y`` and ``/ 2`` scalar affines; ``.squeeze(-1)`` of a 1x1 map a flatten; a trailing ``log_softmax``
    the head, with ``logits_module`` and the reconstruction units returning the logits it is applied to."""
    g = ModelGraph(fuse_bn(build("shufflenet")), images(1))
    kinds = [g.kind[n] for n in g.nodes]
    assert kinds.count("channel_gather") == 6 and g.head is None  # 2 shuffles, 2 chunk pieces, 2 split pieces
    model = fuse_bn(build("ghost_head"))
    g = ModelGraph(model, images(1))
    kinds = [g.kind[n] for n in g.nodes]
    assert kinds.count("channel_gather") == 1 and kinds.count("affine") == 2 and kinds[-1] == "log_softmax"
    x = images(4)
    with torch.no_grad():
        logits = g.logits_module()(x)
        assert torch.allclose(F.log_softmax(logits, 1), model(x), atol=1e-6) and torch.allclose(g.gm(x), model(x))
        y = x
        for unit in g.units():  # reconstruction units stop at the logits (the head is not reconstructed)
            y = unit(y)
        assert torch.equal(y, logits)

    class Tall(nn.Module):  # squeeze of an N x C x 2 x 1 map is not a flatten
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.conv(x), (2, 1)).squeeze(-1).flatten(1))

    with pytest.raises(ConfigError, match="only when every dim after the channels is 1"):
        ModelGraph(Tall(), torch.zeros(1, 3, 8, 8))


def test_view_minus_one_is_a_flatten_only_per_sample():
    """``out.view(-1, k)`` reads as a flatten when k is the per-sample size (WideResNet's head); on a map with
    more features per sample it is refused with one line instead of silently changing the batch."""
    g = ModelGraph(fuse_bn(build("wide_resnet")), images(1))
    assert [g.kind[n] for n in g.nodes][-2:] == ["flatten", "linear"]

    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.avg_pool2d(self.conv(x), 8).view(-1, 4))

    with pytest.raises(ConfigError, match="where the model runs"):
        ModelGraph(Wrong(), torch.zeros(1, 3, 16, 16))
