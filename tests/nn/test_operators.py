"""Every supported operator, in module and functional form, through fake-quant (vs FP at W8A8), the integer
model (vs fake-quant: arg-max and per-layer input codes) and ONNX in onnxruntime (vs fake-quant).

Each case is a small net ``stem conv + BN → [operator] → … → linear`` on 8x8 inputs with the operator in the
middle, so the integer model has to lower it between two quantized layers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qmap.quant import QuantConfig, calibrate, quantize_model, to_integer_model
from qmap.quant.agreement import fake_quant_inputs

ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
        "gelu": nn.GELU, "silu": nn.SiLU}
FUNCS = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
         "gelu": F.gelu, "silu": F.silu}
HAND = {  # activations written out by hand: the graph folds them into the op (qmap.nn.ops._fold_idioms)
    "hswish_hand": lambda y: y * F.relu6(y + 3, inplace=True) / 6,
    "hswish_hsig_hand": lambda y: F.hardsigmoid(y) * y,
    "hsigmoid_hand": lambda y: F.hardtanh(3.0 + y, 0.0, 6.0) * (1 / 6),
    "swish_hand": lambda y: y * y.sigmoid()}
POOLS = {"maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(2)}
LATE_ACTS = {"prelu": nn.PReLU, "prelu_channels": lambda: nn.PReLU(8, 0.1),
             "clamp_relu": lambda: (lambda y: y.clamp(min=0)), "clamp_relu6": lambda: (lambda y: torch.clamp(y, 0, 6)),
             "clip_hardtanh": lambda: (lambda y: y.clip(-1.0, 1.5))}
FLATTENS = ("flatten", "view", "reshape", "nn_flatten")
EXTRA_ACTS = {"leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU, "tanh": nn.Tanh,  # appended: the
              "leaky_relu_f": lambda: (lambda y: F.leaky_relu(y, 0.2)), "tanh_f": lambda: torch.tanh,  # seeds stay
              "softplus": nn.Softplus, "softplus_beta_f": lambda: (lambda y: F.softplus(y, 2.0)), "mish": nn.Mish,
              "mish_hand": lambda: (lambda y: y * torch.tanh(F.softplus(y))), "hardtanh": lambda: nn.Hardtanh(-1.5, 2),
              "relu6_hardtanh_f": lambda: (lambda y: F.hardtanh(y, 0.0, 6.0))}
OPS = [*ACTS, *(f"{a}_f" for a in FUNCS), *HAND, "depthwise", "linear", "maxpool", "maxpool_f", "avgpool", "avgpool_f",
       "adaptive", "adaptive_f", "mean", "add", "torch_add", "cat", "gate", *FLATTENS, "self_sized_avgpool",
       "strided_slice", "channel_pad", *EXTRA_ACTS, "scalar_residual", "scalar_ops", "chunk_split", "shuffle",
       "squeeze", "softmax", "log_softmax", *LATE_ACTS, "adaptive_max", "amax", "gate_unsqueeze", "gate_none",
       "avgpool_map", "shuffle_permute"]


class OpNet(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = {**ACTS, **EXTRA_ACTS, **LATE_ACTS}.get(op, nn.ReLU)()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8 if op == "depthwise" else 1)
        self.side = nn.Conv2d(8, 8, 1)
        self.pool = POOLS.get(op, nn.Identity())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        channels = 16 if op in ("cat", "channel_pad") else 8
        size = 4 if op in ("maxpool", "maxpool_f", "avgpool", "avgpool_f") else 8
        self.fc = nn.Linear(channels * size * size if op in FLATTENS else channels, 10)
        self.fc2 = nn.Linear(10, 10)
        self.log_softmax = nn.LogSoftmax(dim=1)
        with torch.random.fork_rng():  # added later: the other cases keep their random draws
            self.se_fc = nn.Linear(8, 8)

    def forward(self, x):
        op = self.op
        y = self.bn(self.stem(x))
        y = HAND[op](y) if op in HAND else FUNCS[op[:-2]](y) if op[:-2] in FUNCS else self.act(y)
        y = self.conv(y)
        z = F.relu(y)
        if op == "maxpool_f":
            z = F.max_pool2d(z, 2)
        elif op == "avgpool_f":
            z = F.avg_pool2d(z, 2)
        elif op == "add":
            z = F.relu(z + self.side(z))
        elif op == "torch_add":
            z = F.relu(torch.add(self.side(z), z))
        elif op == "cat":
            z = torch.cat([z, F.relu(self.side(z))], dim=1)
        elif op == "gate":
            z = z * F.hardsigmoid(self.side(z.mean((2, 3), keepdim=True)))
        elif op == "strided_slice":
            z = F.relu(z[:, :, ::2, ::2] + self.side(z)[..., ::2, ::2])
        elif op == "scalar_residual":
            z = F.relu(z + 0.5 * self.side(z))
        elif op == "scalar_ops":  # affine pieces on a layer's input and output: −(…)/3 + 1, 2·z − 0.25
            z = -F.relu(self.side(z * 2 - 0.25)) / 3 + 1 + 0
        elif op == "chunk_split":
            z = torch.cat([z.chunk(2, dim=1)[1], torch.split(F.relu(self.side(z)), [4, 4], 1)[0]], 1)
        elif op in ("shuffle", "shuffle_permute"):  # ShuffleNet's channel shuffle, as its repositories write it
            z = torch.cat([z[:, :4], F.relu(self.side(z))[:, 4:]], 1)
            n, c, hh, ww = z.size()
            if op == "shuffle":
                z = torch.transpose(z.view(n, 2, c // 2, hh, ww), 1, 2).contiguous().view(n, -1, hh, ww)
            else:
                z = z.view(n, 4, c // 4, hh, ww).permute(0, 2, 1, 3, 4).reshape(n, c, hh, ww)
        elif op in ("gate_unsqueeze", "gate_none"):  # a squeeze-excite gate from Linear features
            g = torch.sigmoid(self.se_fc(z.mean((2, 3))))
            z = z * (g.unsqueeze(-1).unsqueeze(-1) if op == "gate_unsqueeze" else g[:, :, None, None])
        elif op == "avgpool_map":
            z = F.relu(self.side(F.avg_pool2d(z, z.size()[2:])))
        elif op == "channel_pad":  # the "option A" ResNet shortcut: zero channels added to a layer's output
            z = F.relu(F.pad(z, (0, 0, 0, 0, 3, 5), "constant", 0) + F.pad(self.side(z), (0, 0, 0, 0, 5, 3)))
        else:
            z = self.pool(z)
        if op == "view":
            h = z.view(z.size(0), -1)
        elif op == "reshape":
            h = z.reshape(z.shape[0], -1)
        elif op == "flatten":
            h = torch.flatten(z, 1)
        elif op == "nn_flatten":
            h = self.flat(z)
        elif op == "adaptive_f":
            h = F.adaptive_avg_pool2d(z, 1).flatten(1)
        elif op == "mean":
            h = z.mean((2, 3))
        elif op == "self_sized_avgpool":
            h = F.avg_pool2d(z, z.size()[3]).view(z.size(0), -1)
        elif op == "squeeze":
            h = self.gap(z).squeeze(3).squeeze(2)
        elif op == "adaptive_max":
            h = torch.flatten(F.adaptive_max_pool2d(z, 1), 1)
        elif op == "amax":
            h = z.amax((2, 3))
        else:
            h = torch.flatten(self.gap(z), 1)
        out = self.fc(h)
        if op in ("softmax", "log_softmax"):  # a head on the logits: qmap quantizes and lowers the logits
            return F.softmax(out, dim=1) if op == "softmax" else self.log_softmax(out)
        return self.fc2(F.relu(out)) if op == "linear" else out


def _model(op: str) -> nn.Module:
    torch.manual_seed(OPS.index(op))
    m = OpNet(op)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def quantized():
    cache = {}

    def get(op):
        if op not in cache:
            model = _model(op)
            q = quantize_model(model, QuantConfig(w_bits=8, a_bits=8, first_last_bits=None))
            calibrate(q, _images(128, 1))
            cache[op] = (model, q)
        return cache[op]
    return get


@pytest.mark.parametrize("op, kind", [("hswish_hand", "hardswish"), ("hswish_hsig_hand", "hardswish"),
                                      ("hsigmoid_hand", "hardsigmoid"), ("swish_hand", "silu"),
                                      ("mish_hand", "mish"), ("relu6_hardtanh_f", "relu6"), ("clamp_relu", "relu"),
                                      ("clamp_relu6", "relu6"), ("clip_hardtanh", "hardtanh")])
@torch.no_grad()
def test_hand_written_activations_fold_to_the_op(op, kind):
    from qmap.nn import ModelGraph

    model = _model(op)
    g = ModelGraph(model)
    assert [g.kind[n] for n in g.nodes][:3] == ["conv", "bn", kind]
    x = _images(16, 5)
    assert torch.allclose(g.gm(x), model(x), atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@torch.no_grad()
def test_fake_quant_w8a8_follows_fp(op, quantized):
    model, q = quantized(op)
    x = _images(64, 2)
    ref, out = model(x), q(x)
    # a global max hands the classifier each map's extreme, which the MSE observer of its input clips
    assert float((out - ref).abs().max() / ref.abs().max()) < (0.1 if op == "adaptive_max" else 0.05)
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9


@pytest.mark.parametrize("op", OPS)
def test_integer_model_matches_fake_quant(op, quantized):
    _, q = quantized(op)
    x = _images(64, 3)
    imodel = to_integer_model(q, input_shape=(3, 8, 8))
    codes, fq = fake_quant_inputs(q, x)
    out = imodel.run(x, return_intermediates=True)
    assert [t.name for t in out.layers] == [lay.name for lay in imodel.layers]
    for t in out.layers:  # the codes entering every layer: equal, or 1 LSB apart on a rare rounding boundary
        d = (t.x_int.long() - codes[t.name].long()).abs()
        assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 0.01, (t.name, float((d > 0).float().mean()))
    assert float((out.logits.argmax(1) == fq.argmax(1)).float().mean()) >= 0.95


@pytest.mark.parametrize("op", OPS)
def test_onnx_matches_fake_quant(op, quantized, tmp_path):
    pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")
    from qmap.export import export_onnx, verify_onnx
    _, q = quantized(op)
    x = _images(64, 4)
    export_onnx(q, tmp_path / "m.onnx", x[:2])
    check = verify_onnx(tmp_path / "m.onnx", q, x)
    assert check["max_rel_diff"] <= 5e-3 and check["top1_agreement"] == 1.0
