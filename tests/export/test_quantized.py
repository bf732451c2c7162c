"""The quantized-model file round-trips: load_quantized gives back a model with bit-identical outputs, also
after OMR (shift and bias forms) and OCS changed channel counts and inserted modules."""

from __future__ import annotations

import json

import pytest
import torch
from testutil import randomise_bn
from torch import nn

from qmap.errors import ConfigError, QmapError
from qmap.export.quantized import load_quantized, read_header, save_quantized
from qmap.methods import get_method
from qmap.methods.omr import apply_omr
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, calibrate, quant_layers, quantize_model
from qmap.quant.integer import to_integer_model

QCFG = QuantConfig(w_bits=4, a_bits=4, first_last_bits=8, w_observer="minmax", a_observer="minmax")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(48, 3, 32, 32)


def tiny(act: str = "relu"):
    torch.manual_seed(1)
    model = tiny_cnn(width=0.5, act=act).eval()
    randomise_bn(model)
    return model


def roundtrip(qmodel, tmp_path, **kw):
    path = save_quantized(qmodel, tmp_path / "q.safetensors", arch="tiny_cnn", width=0.5, num_classes=10,
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), quant=QCFG.to_dict(), **kw)
    return load_quantized(path)


@torch.no_grad()
def assert_same(a, b, images):
    assert torch.equal(a.eval()(images), b.eval()(images))


def test_rtn_roundtrip_is_bit_exact(images, tmp_path):
    qmodel = get_method("rtn")(tiny(), images, QCFG).model
    loaded = roundtrip(qmodel, tmp_path, method={"name": "rtn", "options": {}})
    assert_same(qmodel, loaded.model, images)
    assert loaded.mean_std == ((0.5,) * 3, (0.25,) * 3)
    assert loaded.header["quant"]["w_bits"] == 4 and loaded.header["method"]["name"] == "rtn"
    a, b = to_integer_model(qmodel), loaded.integer_model()
    assert torch.equal(a.run(images).logits, b.run(images).logits)


def test_decoupled_steps_and_zero_points_survive(images, tmp_path):
    qmodel = quantize_model(tiny(), QCFG)
    calibrate(qmodel, images)
    for _, m in quant_layers(qmodel):
        m.weight_quantizer.decouple()
        m.weight_quantizer.dequant_scale.data *= 1.01
    name, layer = quant_layers(qmodel)[1]
    layer.input_quantizer.zero_point.fill_(3.0)
    loaded = roundtrip(qmodel, tmp_path)
    assert_same(qmodel, loaded.model, images)
    assert loaded.header["layers"][name]["decoupled"]


@pytest.mark.parametrize("form", ["auto", "shift"])  # auto: bias form where it is valid
def test_omr_changed_structure_roundtrips(images, tmp_path, form):
    qmodel = quantize_model(tiny(), QCFG)
    calibrate(qmodel, images)
    report = apply_omr(qmodel, selective=False, form=form, live_clip=form == "shift")
    assert report["pairs"]
    loaded = roundtrip(qmodel, tmp_path)
    assert_same(qmodel, loaded.model, images)
    shapes = {n: tuple(m.weight.shape) for n, m in quant_layers(qmodel)}
    assert shapes == {n: tuple(m.weight.shape) for n, m in quant_layers(loaded.model)}


def test_ocs_split_roundtrips(images, tmp_path):
    qmodel = get_method("ocs")(tiny(), images, QCFG, expand_ratio=0.1).model
    assert_same(qmodel, roundtrip(qmodel, tmp_path).model, images)


def test_damaged_or_foreign_files_are_refused(images, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(QmapError, match="not a qmap quantized-model file"):
        load_quantized(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(QmapError, match="cannot read"):
        read_header(tmp_path / "junk.safetensors")
    qmodel = get_method("rtn")(tiny(), images, QCFG).model
    path = save_quantized(qmodel, tmp_path / "q.safetensors", arch="tiny_cnn", width=0.5, num_classes=10)
    header = read_header(path)
    header["modules"]["children"]["features"]["type"] = "os.system"
    from safetensors.torch import load_file

    save_file(load_file(path), tmp_path / "evil.safetensors", metadata={"qmap": json.dumps(header)})
    with pytest.raises(QmapError, match="not allowed"):
        load_quantized(tmp_path / "evil.safetensors")


def _header_paths(o, pre=()):
    """Every key path of a JSON header (first 3 items of a list)."""
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _header_paths(v, (*pre, k))
    elif isinstance(o, list):
        for i, v in enumerate(o[:3]):
            yield from _header_paths(v, (*pre, i))
    if pre:
        yield pre


def test_every_damaged_header_field_is_one_error_at_load(images, tmp_path):
    """Each kind of header field set to a wrong value (a string, -1, None, 1e12) either loads a model
    that runs or is one QmapError at load: never an exception from torch later (a padding of 1e12 allocated in
    the forward, a string stride failed inside conv2d)."""
    from safetensors.torch import load_file, save_file

    qmodel = get_method("domr")(tiny(), images[:16], QCFG, iters=2, batch_size=8).model  # OMR's shift included
    path = save_quantized(qmodel, tmp_path / "q.safetensors", arch="tiny_cnn", width=0.5, num_classes=10,
                          input_shape=(3, 32, 32))
    header, tensors, x = read_header(path), load_file(path), images[:2]
    paths = list(_header_paths(header))
    kinds = {}  # one path per distinct key (and depth) keeps the test fast: ~100 paths × 4 values
    for where in paths:
        kinds.setdefault((len(where) > 6, str(where[-1])), where)
    for where in kinds.values():
        for bad in ("x", -1, None, 10**12):
            damaged = json.loads(json.dumps(header))
            node = damaged
            for k in where[:-1]:
                node = node[k]
            node[where[-1]] = bad
            save_file(tensors, tmp_path / "d.safetensors", metadata={"qmap": json.dumps(damaged)})
            try:
                loaded = load_quantized(tmp_path / "d.safetensors")
            except QmapError:
                continue
            with torch.no_grad():
                loaded.model(x)
    for text in ("{not json", "[]"):
        save_file(tensors, tmp_path / "d.safetensors", metadata={"qmap": text})
        with pytest.raises(QmapError, match="header"):
            load_quantized(tmp_path / "d.safetensors")


class _Block(nn.Module):
    """A user block class qmap has never seen: residual add around two convs, a plain attribute, a ModuleList."""

    def __init__(self, c: int):
        super().__init__()
        self.residual = True
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)])
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.bn(self.convs[1](torch.relu(self.convs[0](x))))
        return x + y if self.residual else y


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(_Block(8), _Block(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_cifar"])
def test_model_block_classes_roundtrip(images, tmp_path, arch):
    """ResNet's BasicBlock and MobileNet's InvertedResidual / squeeze-excite are kept from the model's code."""
    from qmap.models import build_model

    torch.manual_seed(2)
    model = build_model(arch, width=0.5).eval()
    randomise_bn(model)
    qmodel = quantize_model(model, QCFG)
    calibrate(qmodel, images)
    if arch == "mobilenet_cifar":  # shift-form pairs inside the inverted residuals change their children
        assert apply_omr(qmodel, selective=False, form="shift", live_clip=True)["pairs"]
    path = save_quantized(qmodel, tmp_path / "q.safetensors", arch=arch, width=0.5, num_classes=10)
    kinds = {c["type"] for stage in read_header(path)["modules"]["children"].values()
             for c in stage["children"].values()}
    assert {"resnet20": "BasicBlock", "mobilenet_cifar": "InvertedResidual"}[arch] in kinds
    assert_same(qmodel, load_quantized(path).model, images)


def test_user_blocks_roundtrip_through_model_fn(images, tmp_path):
    torch.manual_seed(3)
    model = _UserNet().eval()
    randomise_bn(model)
    qmodel = get_method("rtn")(model, images, QCFG).model
    path = save_quantized(qmodel, tmp_path / "q.safetensors", factory="tests:_UserNet")
    header = read_header(path)
    block = header["modules"]["children"]["blocks"]["children"]["0"]
    assert block["type"] == "_Block" and block["from_model"] and "args" not in block
    assert block["children"]["convs"]["type"] == "ModuleList"
    loaded = load_quantized(path, model_fn=_UserNet)
    assert_same(qmodel, loaded.model, images)
    with pytest.raises(QmapError, match="pass model_fn"):
        load_quantized(path)


def test_model_block_of_another_type_is_refused(images, tmp_path):
    from safetensors.torch import load_file, save_file

    qmodel = get_method("rtn")(_UserNet().eval(), images, QCFG).model
    path = save_quantized(qmodel, tmp_path / "q.safetensors", factory="tests:_UserNet")
    header = read_header(path)
    header["modules"]["children"]["blocks"]["children"]["1"]["type"] = "OtherBlock"
    save_file(load_file(path), tmp_path / "other.safetensors", metadata={"qmap": json.dumps(header)})
    with pytest.raises(ConfigError, match=r"blocks\.1: the file describes a OtherBlock from the model's own code"):
        load_quantized(tmp_path / "other.safetensors", model_fn=_UserNet)
