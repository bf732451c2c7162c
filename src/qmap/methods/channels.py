"""Channel surgery shared by OMR and OCS: find producer→consumer layer pairs, duplicate channels, count MACs.

A *pair* (l, l+1) is a :class:`~qmap.nn.Chain` of the model graph — a Conv2d/Linear ``l`` whose output reaches
the Conv2d/Linear ``l+1`` only through per-channel ops (at most one activation, pooling, flatten) — with a
dense consumer (not a grouped conv) fed a conv's or linear's channels. Channel c of l's output then only ever
feeds channel c of l+1's input (the H·W flattened features c·HW … (c+1)·HW − 1 of a Linear consumer).

Duplicating channel c means

    producer:  append row c of W_l (and b_l[c]) as a new output channel     (``duplicate_outputs``)
    consumer:  append the input column(s) of channel c of W_{l+1}           (``duplicate_inputs``)

so the consumer sees the new channel with the same weights as the old one. Quantized layers get every
weight-shaped tensor (``fp_weight``, AdaRound-style per-weight parameters of the weight quantizer) and every
per-output-channel quantizer tensor (step, dequant step, zero point) extended the same way, so a duplicated
row quantizes to exactly the same integers. Parameters are replaced in place (module identity is kept): build
optimizers after the surgery.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import Chain, ModelGraph
from ..nn.ops import ACTIVATIONS

ChannelPair = Chain
COMPUTE = (nn.Conv2d, nn.Linear)


def _grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups != 1


def find_pairs(model: nn.Module, grouped_producer: bool = False, grouped_consumer: bool = False
               ) -> tuple[list[ChannelPair], list[str]]:
    """All eligible (l, l+1) pairs of the model graph, and notes on the candidates that were skipped (and why).

    ``grouped_producer``: keep pairs whose producer is a grouped (depthwise) conv — right for surgery that only
    duplicates the consumer's input columns (OMR's shift form), not for one that splits producer channels.
    ``grouped_consumer``: keep pairs whose consumer is grouped — right for surgery that can double *every* input
    of each group (OMR's shift form of all channels, :func:`duplicate_inputs`).
    """
    chains, notes = ModelGraph(model).chains()
    pairs = []
    for c in chains:
        producer, consumer = model.get_submodule(c.producer), model.get_submodule(c.consumer)
        why = ("an unfused BatchNorm in between" if "bn" in c.kinds else
               "scalar arithmetic in between" if "affine" in c.kinds else
               "more than one activation in between" if sum(k in ACTIVATIONS for k in c.kinds) > 1 else
               "Linear feeding a Conv2d" if isinstance(producer, nn.Linear) and isinstance(consumer, nn.Conv2d) else
               "grouped (depthwise) producer" if _grouped(producer) and not grouped_producer else
               "grouped (depthwise) consumer" if _grouped(consumer) and not grouped_consumer else None)
        if why:
            notes.append(f"{c.key}: skipped, {why}")
        else:
            pairs.append(c)
    return pairs, notes


def flatten_positions(producer: nn.Module, consumer: nn.Module) -> int:
    """Spatial positions H·W per channel at the flatten (1 when the consumer is a conv)."""
    if isinstance(consumer, nn.Conv2d):
        return 1
    channels = producer.weight.shape[0]
    if consumer.in_features % channels:
        raise ValueError(f"consumer has {consumer.in_features} inputs, not a multiple of {channels} channels")
    return consumer.in_features // channels


def input_columns(channels: torch.Tensor, positions: int) -> torch.Tensor:
    """The consumer's weight columns (axis 1) holding ``channels``: c·HW … c·HW + HW − 1 for each c."""
    offs = torch.arange(positions, device=channels.device)
    return (channels.reshape(-1, 1) * positions + offs).reshape(-1)


def _expanded(t: torch.Tensor, axis: int, index: torch.Tensor, scale: float) -> torch.Tensor:
    """``t`` with slices ``index`` along ``axis`` appended; the source slices and their copies times ``scale``."""
    t = t.detach().clone()
    if scale != 1.0:
        t.index_copy_(axis, index, t.index_select(axis, index) * scale)
    return torch.cat([t, t.index_select(axis, index)], axis)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = value


def _weight_shaped_tensors(layer: nn.Module):
    """(module, name) of every tensor shaped like ``layer.weight``: the weight, ``fp_weight``, and per-weight
    tensors of the weight quantizer (e.g. AdaRound's α)."""
    shape = layer.weight.shape
    yield layer, "weight"
    if getattr(layer, "fp_weight", None) is not None:
        yield layer, "fp_weight"
    wq = getattr(layer, "weight_quantizer", None)
    if wq is not None:
        for mod in wq.modules():
            for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is not None and t.shape == shape:
                    yield mod, name


@torch.no_grad()
def duplicate_outputs(layer: nn.Module, index: torch.Tensor, scale: float = 1.0,
                      bias_shift: torch.Tensor | float | None = None) -> None:
    """Append copies of output channels ``index`` to ``layer`` (axis 0 of its weight).

    ``scale`` multiplies the source rows and their copies (OCS halving: 0.5); ``bias_shift`` is subtracted
    from the copies' bias (OMR, eq. 2: b − x_clip). A missing bias is created as zeros when a shift is given.
    """
    index = index.to(layer.weight.device).long()
    out_before = layer.weight.shape[0]
    wq = getattr(layer, "weight_quantizer", None)
    per_channel = [] if wq is None or not wq.spec.per_channel else [
        (mod, name) for mod in wq.modules()
        for name, t in list(mod._parameters.items()) + list(mod._buffers.items())
        if t is not None and t.dim() == 1 and t.numel() == out_before]
    for mod, name in list(_weight_shaped_tensors(layer)) + per_channel:
        _replace(mod, name, _expanded(getattr(mod, name), 0, index, scale))
    if layer.bias is None and bias_shift is not None:
        layer.bias = nn.Parameter(torch.zeros(out_before, dtype=layer.weight.dtype, device=layer.weight.device))
    if layer.bias is not None:
        bias = _expanded(layer.bias, 0, index, scale)
        if bias_shift is not None:
            bias[out_before:] -= torch.as_tensor(bias_shift, dtype=bias.dtype, device=bias.device)
        _replace(layer, "bias", bias)
    if isinstance(layer, nn.Conv2d):
        layer.out_channels = layer.weight.shape[0]
    else:
        layer.out_features = layer.weight.shape[0]


@torch.no_grad()
def duplicate_inputs(layer: nn.Module, columns: torch.Tensor, scale: float = 1.0) -> None:
    """Append copies of input columns ``columns`` (axis 1 of the weight) to ``layer``; ``scale`` multiplies the
    source columns and their copies (OCS weight halving: 0.5). Per-output-channel steps are unchanged. A grouped
    conv's weight holds its group's C/groups inputs per output: copying all of them doubles every group (its
    input then has each group's originals followed by their copies)."""
    columns = columns.to(layer.weight.device).long()
    if isinstance(layer, nn.Conv2d) and layer.groups != 1 and not torch.equal(
            columns.cpu(), torch.arange(layer.weight.shape[1])):
        raise ValueError("a grouped convolution takes copies of all its inputs at once (columns 0..C/groups−1: "
                         "every group doubles)")
    for mod, name in list(_weight_shaped_tensors(layer)):
        _replace(mod, name, _expanded(getattr(mod, name), 1, columns, scale))
    if isinstance(layer, nn.Conv2d):
        layer.in_channels = layer.weight.shape[1] * layer.groups
    else:
        layer.in_features = layer.weight.shape[1]


def split_pair_channels(model: nn.Module, pair: ChannelPair, channels: torch.Tensor, out_scale: float = 1.0,
                        in_scale: float = 1.0, bias_shift: torch.Tensor | float | None = None) -> int:
    """Duplicate ``channels`` of ``pair`` in both layers; returns the number of consumer columns added."""
    producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
    cols = input_columns(channels, flatten_positions(producer, consumer))
    duplicate_outputs(producer, channels, out_scale, bias_shift)
    duplicate_inputs(consumer, cols, in_scale)
    return len(cols)


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """Per compute layer: MACs per image and the output spatial size, from one forward pass of ``example``.

    conv: H_out·W_out·C_out·(C_in/groups)·k_h·k_w;  linear: in·out.
    """
    out: dict[str, dict] = {}

    def hook(name):
        def fn(mod, inp, res):
            if isinstance(mod, nn.Conv2d):
                hw = res.shape[-2] * res.shape[-1]
                kk = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
                out[name] = {"macs": hw * mod.weight.shape[0] * kk, "out_hw": hw}
            else:
                out[name] = {"macs": mod.weight.shape[0] * mod.weight.shape[1], "out_hw": 1}
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, COMPUTE)]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return out


def consumer_inputs(model: nn.Module, names: list[str], calib: torch.Tensor, batch_size: int = 128):
    """Yield ``{name: input tensor}`` of layers ``names`` for each calibration batch (forward pre-hooks)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, inp):
            seen[name] = inp[0].detach().clone()  # the forward may still change it in place
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for i in range(0, len(calib), batch_size):
                seen.clear()
                model(calib[i:i + batch_size].to(device))
                yield dict(seen)
    finally:
        for h in handles:
            h.remove()


def channel_max(model: nn.Module, pairs: list[ChannelPair], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair: max over the calibration set of each producer channel as the consumer receives it
    (the consumer's input before its quantizer; channel c of a flattened input = its H·W features)."""
    maxima: dict[str, torch.Tensor] = {}
    for batch in consumer_inputs(model, [p.consumer for p in pairs], calib):
        for p in pairs:
            x = batch[p.consumer]
            channels = model.get_submodule(p.producer).weight.shape[0]
            m = x.reshape(x.shape[0], channels, -1).amax(dim=(0, 2))
            maxima[p.key] = m if p.key not in maxima else torch.maximum(maxima[p.key], m)
    return maxima
