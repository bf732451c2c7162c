"""``quantize_model``: fuse BN, wrap every Conv2d/Linear in a fake-quant layer, initialise weight steps;
``calibrate``: run calibration images through the model to initialise activation steps.

A layer whose output feeds a curved activation (GELU, Hardswish, SiLU, Hardsigmoid, Sigmoid) also quantizes its
output (``output_quantizer``, the layer's activation bits): the activation then acts on b-bit codes, which is
what makes its integer form (a lookup table) exact.

Activation signedness is decided from calibration data: an input that is never negative (after ReLU or
pooling of ReLU outputs) gets an unsigned 0..2^b−1 quantizer, otherwise a signed symmetric one (the
normalised image entering the first layer).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from ..errors import ConfigError, reject_unknown_keys
from ..nn import ModelGraph, fuse_bn, set_module
from ..nn.ops import TABLE_ACTIVATIONS
from .qmodules import FLOAT_TO_QUANT, quant_layers
from .spec import QuantSpec

AFFINE_BELOW_BITS = 4  # w_symmetric=None: affine weights below this width, symmetric from it on


@dataclass
class QuantConfig:
    """Bit widths, granularity and initialisation of a quantized model.

    ``first_last_bits`` keeps the first and the last layer (weights and input) at that width (8 by default,
    as in the literature); ``None`` quantizes them like the others. ``layer_bits`` overrides
    ``{layer_name: (w_bits, a_bits)}``; ``skip`` leaves layers in float.

    ``w_symmetric``: ``True`` gives signed symmetric weights (zero point 0, codes −2^(b−1)…2^(b−1)−1), ``False``
    affine weights (an integer zero point per channel, or per tensor without ``w_per_channel``: the grid
    (q − z)·s fits skewed channels, which matters most at 2–3 bits), ``None`` (default) chooses per layer by
    its bit width: affine below :data:`AFFINE_BELOW_BITS` bits, symmetric from there on (measured in
    docs/quantization.md, "Affine weights"). ``w_p_norm`` is the p of the ``mse`` weight observer's Lp error.
    """

    w_bits: int = 4
    a_bits: int = 4
    w_per_channel: bool = True
    w_narrow: bool = False
    w_observer: str = "mse"
    w_symmetric: bool | None = None
    w_p_norm: float = 2.0
    a_observer: str = "mse"
    first_last_bits: int | None = 8
    pow2: bool = False
    rounding: str = "half_even"
    skip: list[str] = field(default_factory=list)
    layer_bits: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.w_p_norm, (int, float)) or isinstance(self.w_p_norm, bool) or self.w_p_norm <= 0:
            raise ConfigError(f"w_p_norm must be a number > 0, got {self.w_p_norm!r}")
        self.weight_spec(self.w_bits)  # validates bits/observer/rounding early
        self.act_spec(self.a_bits, signed=False)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        reject_unknown_keys(d, {f.name for f in fields(cls)}, "quantization option(s)")
        d = dict(d)
        if "layer_bits" in d:
            d["layer_bits"] = {k: tuple(v) for k, v in d["layer_bits"].items()}
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def weight_spec(self, bits: int) -> QuantSpec:
        symmetric = self.w_symmetric if self.w_symmetric is not None else (
            not isinstance(bits, int) or bits >= AFFINE_BELOW_BITS)  # (QuantSpec refuses a bits that is no int)
        return QuantSpec(bits=bits, signed=True, symmetric=symmetric, narrow=self.w_narrow,
                         per_channel=self.w_per_channel, observer=self.w_observer, pow2=self.pow2,
                         rounding=self.rounding, p_norm=float(self.w_p_norm))

    def act_spec(self, bits: int, signed: bool) -> QuantSpec:
        return QuantSpec(bits=bits, signed=signed, symmetric=True, per_channel=False, observer=self.a_observer,
                         pow2=self.pow2, rounding=self.rounding)

    def bits_for(self, name: str, index: int, count: int) -> tuple[int, int]:
        if name in self.layer_bits:
            return self.layer_bits[name]
        if self.first_last_bits is not None and index in (0, count - 1):
            return self.first_last_bits, self.first_last_bits
        return self.w_bits, self.a_bits


def quantize_model(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """A fake-quant copy of ``model``: BN fused, every Conv2d/Linear wrapped, weight steps initialised.

    The layers are taken from the :class:`~qmap.nn.ModelGraph` in execution order (``first_last_bits`` applies
    to the first and last layer the input passes through) and recorded as ``qmodel.layer_order``.
    Activation quantizers are created unsigned and uninitialised; call :func:`calibrate` next.
    """
    cfg = cfg or QuantConfig()
    qmodel = fuse_bn(copy.deepcopy(model))
    graph = ModelGraph(qmodel)
    graph.first  # noqa: B018 - ConfigError for a model without a layer
    layers = [(n, qmodel.get_submodule(n)) for n in graph.layers]
    wrong = [f"{n} ({type(m).__name__})" for n, m in layers if type(m) not in FLOAT_TO_QUANT]
    if wrong:
        raise ConfigError(f"layer(s) {', '.join(wrong)} are already quantized or of a Conv2d/Linear subclass "
                          "qmap does not know")
    unknown = sorted(set(cfg.skip) | set(cfg.layer_bits) - {n for n, _ in layers})
    unknown = [u for u in unknown if u not in {n for n, _ in layers}]
    if unknown:
        raise ConfigError(f"unknown layer name(s) in config: {', '.join(unknown)}; layers: "
                          f"{', '.join(n for n, _ in layers)}")
    for i, (name, layer) in enumerate(layers):
        if name in cfg.skip:
            continue
        if not torch.isfinite(layer.weight).all():
            raise ConfigError(f"layer {name} has NaN/Inf weights")
        wb, ab = cfg.bits_for(name, i, len(layers))
        q = FLOAT_TO_QUANT[type(layer)].from_float(layer, cfg.weight_spec(wb), cfg.act_spec(ab, signed=False), name)
        q.weight_quantizer.init_from(q.weight.detach())
        if graph.feeds(name) in TABLE_ACTIVATIONS:
            q.add_output_quantizer(cfg.act_spec(ab, signed=False))
        set_module(qmodel, name, q)
    qmodel.qconfig = cfg
    qmodel.layer_order = graph.layers
    return qmodel.eval()


@torch.no_grad()
def calibrate(qmodel: nn.Module, images: torch.Tensor, batch_size: int = 128) -> None:
    """Initialise every activation quantizer (inputs, and outputs where there are) from calibration ``images``
    (float NCHW, normalised).

    Observers see FP activations (every quantizer passes values through while observing, weights included);
    an input that was ever negative gets a signed quantizer, otherwise an unsigned one.
    """
    layers = quant_layers(qmodel)
    acts = [q for _, m in layers for q in m.activation_quantizers()]
    w_enabled = [m.weight_quantizer.enabled for _, m in layers]
    for _, m in layers:
        m.weight_quantizer.enabled = False
    for q in acts:
        q.observe(True)
    try:
        device = next(qmodel.parameters()).device
        for i in range(0, len(images), batch_size):
            qmodel(images[i:i + batch_size].to(device))
        for q in acts:
            q.observe(False)
    finally:
        for (_, m), w in zip(layers, w_enabled):
            m.weight_quantizer.enabled = w
        for q in acts:
            q.observer = None


@contextlib.contextmanager
def float_mode(qmodel: nn.Module):
    """Temporarily disable every weight/activation fake-quant (FP forward), restoring each layer's flags."""
    quantizers = [q for _, m in quant_layers(qmodel) for q in (m.weight_quantizer, *m.activation_quantizers())]
    saved = [q.enabled for q in quantizers]  # each one's own flag: a layer's input and output may differ
    try:
        for q in quantizers:
            q.enabled = False
        yield qmodel
    finally:
        for q, enabled in zip(quantizers, saved):
            q.enabled = enabled


def set_quant_state(qmodel: nn.Module, weight: bool = True, act: bool = True) -> None:
    """Enable/disable weight and activation fake-quant in every layer."""
    for _, m in quant_layers(qmodel):
        m.set_quant_enabled(weight, act)


def freeze(qmodel: nn.Module) -> nn.Module:
    """``qmodel`` in eval mode with no parameter requiring a gradient: a quantized model is an inference result,
    and a layer whose operands need no gradient accumulates the integer codes exactly (``QuantConv2d``), so its
    output is then the same with or without ``torch.no_grad`` (and equal to a reloaded file's)."""
    for p in qmodel.parameters():
        p.requires_grad_(False)
    return qmodel.eval()
