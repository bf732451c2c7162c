"""Outlier-Migrated Reconstruction (OMR, seed 004): one more activation bit for the price of extra channels.

Let v be the value a per-tensor activation quantizer of layer l+1 sees on channel c (step s, zero point z,
codes qmin..qmax), n = round(v/s), and X = (qmax − z)·s its upper clip (X_clip). OMR feeds l+1 the channel
twice: v itself and the migrated copy relu(v − X), both through the *same* b-bit quantizer, and duplicates
the matching input weights of l+1 (eq. 3). Since round(v/s − k) = round(v/s) − k for integer k = X/s,

    Q(v) + Q(relu(v − X)) = s·[clip(n, qmin−z, qmax−z) + clip(n − (qmax−z), 0, qmax−z)]
                          = s·clip(n, qmin − z, 2·(qmax − z)),

i.e. a quantizer with the same step and twice the upper clip 2X. Unsigned b-bit (ReLU inputs, z = 0): codes
0 … 2^(b+1) − 2, that is 2^(b+1) − 1 levels — the (b+1)-bit unsigned quantizer of step s without its top
code (they differ only for v ≥ (2^(b+1) − 1.5)·s). Signed b-bit (GELU / h-swish inputs): codes
−2^(b−1) … 2^b − 2. Layer l+1's per-output-channel weight steps are unchanged (duplicating input columns
leaves max|w| per output channel unchanged), so with quantized weights the equality is still exact.

Two ways to produce the copy:

- ``bias`` form (eq. 2, ReLU only): duplicate l's output channel with bias b − X. relu(y − X) equals
  relu(relu(y) − X), and max-pooling commutes with it (max(v) − X = max(v − X), relu is monotone), so the
  copy is right for Conv→[BN]→ReLU→[MaxPool]→Conv/Linear. Costs extra MACs in l and l+1.
- ``shift`` form (seed sec. 4, any per-channel activation/pooling): an OutlierShift module (:mod:`qmap.quant.shift`)
  right before l+1 computes cat(v, relu(v[:, idx] − X)). GELU(y − X) ≠ GELU(y) − X and avg-pooling does not commute
  with relu, so the shift must act on v itself, after the nonlinearity and the pooling. The rectification matters for
  signed quantizers: an unrectified copy would clip to qmin·s, not 0, adding an offset that zero padding makes
  position-dependent (no bias can cancel it). Costs extra MACs in l+1 only, plus one subtract/max per copied value;
  with ``live_clip`` X is read from the quantizer at every forward, so it follows a step that is learned afterwards
  (DOMR's DJOS). Only the consumer's input columns are duplicated, so the producer may be a depthwise conv
  (MobileNet's depthwise → h-swish → project). A grouped (depthwise) consumer sums only its own group's inputs,
  so every group takes copies of all its inputs at once: each channel is migrated, the shift reorders its output
  so that group g reads its originals then their copies, and the consumer's weight [O, C/g, k, k] becomes
  [O, 2·C/g, k, k] (the same weights twice; MobileNet's expand → h-swish → depthwise). Its extra MACs are the
  depthwise conv's own, so selective OMR migrates such a pair whole when any of its channels is selected.

*Selective* OMR migrates only channels whose calibration maximum would land on a non-zero copy code
(round((max_c − X)/s) ≥ 1), largest excess first, at most ``budget`` × channels per pair (or over all pairs).
On the calibration set selective OMR therefore gives exactly the outputs of full OMR.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError
from ..quant import float_mode, quant_layers
from ..quant.shift import OutlierShift, quantizer_clip
from .channels import (
    ChannelPair,
    _grouped,
    channel_max,
    duplicate_inputs,
    find_pairs,
    flatten_positions,
    input_columns,
    layer_macs,
    split_pair_channels,
)
from .options import signature_options

FORMS = ("auto", "bias", "shift")
BIAS_FORM_BETWEEN = ("relu", "maxpool", "adaptive_maxpool", "flatten")
# max(relu(v − X)) = relu(max(v) − X); flatten only reorders
SHIFT_COMMUTES = ("maxpool", "adaptive_maxpool", "flatten")


def _form(qmodel: nn.Module, pair: ChannelPair, form: str, live_clip: bool) -> str:
    bias_ok = ("relu" in pair.kinds and all(k in BIAS_FORM_BETWEEN for k in pair.kinds) and not live_clip
               and not _grouped(qmodel.get_submodule(pair.producer))
               and not _grouped(qmodel.get_submodule(pair.consumer)))
    if form == "bias" and not bias_ok:
        raise ConfigError(f"OMR pair {pair.key}: the bias form needs dense layers, ReLU with only "
                          f"max-pooling/identity in between and a fixed clip; use form='shift'")
    return "bias" if form == "bias" or (form == "auto" and bias_ok) else "shift"


def _select(pairs: list[dict], maxima: dict[str, torch.Tensor] | None, selective: bool, budget: float,
            scope: str) -> None:
    """Fill each pair entry's ``channels`` (indices to migrate) and ``candidates``."""
    ranked = []
    for e in pairs:
        n = e["producer_channels"]
        if not selective:
            e["channels"], e["candidates"] = list(range(n)), n
            continue
        q, mx = e["quantizer"], maxima[e["pair"].key]
        copy_codes = torch.round((mx - e["x_clip"]) / q.scale.reshape(()))
        cand = torch.nonzero(copy_codes >= 1).flatten()
        excess, perm = ((mx[cand] - e["x_clip"]) / e["x_clip"]).sort(descending=True)
        order = cand[perm]
        e["candidates"] = len(cand)
        e["channels"] = order[:math.floor(budget * n + 1e-9)].tolist() if scope == "pair" else []
        ranked += [(float(r), e, int(c)) for r, c in zip(excess, order)]
    if selective and scope == "global":
        limit = math.floor(budget * sum(e["producer_channels"] for e in pairs) + 1e-9)
        for _, e, c in sorted(ranked, key=lambda t: -t[0])[:limit]:
            e["channels"].append(c)
    for e in pairs:  # a grouped consumer doubles every group: all channels or none
        if e["grouped"] and e["channels"]:
            e["channels"] = list(range(e["producer_channels"]))


def _insert_shift(qmodel: nn.Module, pair: ChannelPair, shift: OutlierShift) -> None:
    """Attach ``shift`` after the last module between the layers that still sees channels, i.e. before any
    flatten (keeps every other module name)."""
    name = pair.channel_site()[0]
    parent_name, _, child = name.rpartition(".")
    parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
    setattr(parent, child, nn.Sequential(qmodel.get_submodule(name), shift))


class ClipRangeQuant(nn.Module):
    """Reference quantizer v ↦ s·clip(round(v/s), lo, hi_c) with a per-channel upper code hi_c (channel axis 1;
    a flattened input has ``positions`` consecutive features per channel). What OMR must equal."""

    def __init__(self, step: float, lo: int, hi: torch.Tensor, positions: int = 1):
        super().__init__()
        self.step, self.lo, self.positions = step, lo, positions
        self.register_buffer("hi", hi.double())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        hi = self.hi.to(v).repeat_interleave(self.positions).reshape(1, -1, *([1] * (v.dim() - 2)))
        return self.step * torch.minimum(torch.clamp(torch.round(v / self.step), min=self.lo), hi)


def omr_reference(plain: nn.Module, report: dict) -> nn.Module:
    """A copy of ``plain`` (the model *before* :func:`apply_omr`) whose OMR consumers quantize the migrated
    channels with codes up to 2·(qmax − z) and the others up to qmax − z, same step: by the identity in the
    module docstring it computes exactly what the OMR model computes. Needs z = 0 and the default clips."""
    ref = copy.deepcopy(plain)
    for row in report["pairs"]:
        layer = ref.get_submodule(row["consumer"])
        q = layer.input_quantizer
        if float(q.zero_point.reshape(())) != 0 or not math.isclose(row["x_clip"], float(quantizer_clip(q))):
            raise ValueError(f"{row['consumer']}: reference needs a symmetric quantizer and the default clip")
        hi = torch.full((row["channels"],), float(q.spec.qmax))
        hi[row["migrated"]] = 2 * q.spec.qmax
        inputs = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        layer.input_quantizer = ClipRangeQuant(float(q.scale), q.spec.qmin, hi, inputs // len(hi))
    return ref


def _total_macs(qmodel: nn.Module, example: torch.Tensor) -> int:
    return sum(v["macs"] for v in layer_macs(qmodel, example).values())


def apply_omr(qmodel: nn.Module, pairs: list[tuple[str, str]] | None = None, x_clip: dict[str, float] | None = None,
              selective: bool = True, budget: float = 1.0, calib: torch.Tensor | None = None, *,
              form: str = "auto", budget_scope: str = "pair", live_clip: bool = False,
              input_size: tuple[int, int] = (32, 32)) -> dict:
    """Apply OMR in place to a calibrated fake-quant model; returns the report.

    pairs        (producer, consumer) layer names; ``None``: every eligible pair (:func:`find_pairs`).
    x_clip       {consumer name: X}; default the clip (qmax − z)·s of the consumer's input quantizer (the
                 (b+1)-bit equivalence needs that value).
    selective    migrate only channels clipped on ``calib`` (required then), at most ``budget`` × channels
                 per pair (``budget_scope='pair'``) or of all pairs' channels (``'global'``).
    form         'auto' (bias form where valid, else shift), 'bias' or 'shift' (see the module docstring).
    live_clip    shift form reading X from the quantizer at every forward (tracks a learned step).
    input_size   image size for the MAC count when ``calib`` is not given.

    Report: {'pairs': [{producer, consumer, form, x_clip, channels, candidates, extra_channels,
    migrated, extra_macs}], 'extra_channels', 'extra_macs', 'total_macs' (before), 'total_macs_after',
    'fraction' (extra/total MACs), 'skipped' (notes)}.
    """
    if form not in FORMS:
        raise ConfigError(f"unknown OMR form {form!r}; choose one of {', '.join(FORMS)}")
    if budget_scope not in ("pair", "global"):
        raise ConfigError(f"budget_scope must be 'pair' or 'global', got {budget_scope!r}")
    if not 0 <= budget <= 1:
        raise ConfigError(f"OMR budget is a fraction of channels in [0, 1], got {budget}")
    if selective and calib is None:
        raise ConfigError("selective OMR needs calibration images (calib=...)")
    eligible, notes = find_pairs(qmodel, grouped_producer=True, grouped_consumer=True)  # bias form: see _form
    chosen = _choose_pairs(eligible, pairs)
    x_clip = x_clip or {}
    entries, skipped = [], list(notes)
    for p in chosen:
        q = getattr(qmodel.get_submodule(p.consumer), "input_quantizer", None)
        reason = ("no module between the layers to carry the migrated copy (Conv→Conv)" if not p.between else
                  "consumer is not a quantized layer" if q is None else
                  "consumer input quantizer is per-channel" if q.scale.numel() != 1 else
                  "consumer input quantizer is not calibrated" if not bool(q.initialized) else None)
        if reason:
            skipped.append(f"{p.key}: skipped, {reason}")
            continue
        pair_form = _form(qmodel, p, form, live_clip)
        site, after = p.channel_site()
        if pair_form == "shift" and site is None:
            skipped.append(f"{p.key}: skipped, no module before the flatten to carry the migrated copy (the "
                           "copies are channels)")
            continue
        late = [k for k in after if k not in SHIFT_COMMUTES]
        if pair_form == "shift" and late:
            skipped.append(f"{p.key}: skipped, the copy would be made before {late[0]} (a function call, or "
                           f"after a flatten, so the shift cannot follow it) and relu(v − X) does not commute "
                           f"with it")
            continue
        entries.append({"pair": p, "quantizer": q, "form": pair_form,
                        "x_clip": float(x_clip.get(p.consumer, quantizer_clip(q))),
                        "producer_channels": qmodel.get_submodule(p.producer).weight.shape[0],
                        "grouped": _grouped(qmodel.get_submodule(p.consumer))})
    device = next(qmodel.parameters()).device
    example = calib[:1].to(device) if calib is not None else torch.zeros(
        1, quant_layers(qmodel)[0][1].weight.shape[1], *input_size, device=device)
    with float_mode(qmodel):
        total = after = _total_macs(qmodel, example)
        maxima = channel_max(qmodel, [e["pair"] for e in entries], calib) if selective and entries else None
        _select(entries, maxima, selective, budget, budget_scope)
        for e in entries:  # extra MACs of a pair = model MACs after − before its migration (exact, incl. overlaps)
            _migrate(qmodel, e, live_clip)
            before, after = after, _total_macs(qmodel, example)
            e["extra_macs"] = after - before
    rows = [{"producer": e["pair"].producer, "consumer": e["pair"].consumer, "form": e["form"],
             "x_clip": e["x_clip"], "channels": e["producer_channels"], "candidates": e["candidates"],
             "extra_channels": len(e["channels"]), "migrated": sorted(e["channels"]), "extra_macs": e["extra_macs"]}
            for e in entries]
    extra = sum(r["extra_macs"] for r in rows)
    return {"pairs": rows, "extra_channels": sum(r["extra_channels"] for r in rows), "extra_macs": extra,
            "total_macs": total, "total_macs_after": after, "fraction": extra / total if total else 0.0,
            "skipped": skipped}


def _choose_pairs(eligible: list[ChannelPair], wanted: list[tuple[str, str]] | None) -> list[ChannelPair]:
    if wanted is None:
        return eligible
    by_key = {(p.producer, p.consumer): p for p in eligible}
    bad = [f"{a}->{b}" for a, b in wanted if (a, b) not in by_key]
    if bad:
        raise ConfigError(f"not an OMR-eligible pair: {', '.join(bad)}; eligible: "
                          f"{', '.join(p.key for p in eligible) or '(none)'}")
    return [by_key[(a, b)] for a, b in wanted]


def _migrate(qmodel: nn.Module, e: dict, live_clip: bool) -> None:
    p, idx = e["pair"], torch.tensor(e["channels"], dtype=torch.long)
    if not len(idx):
        return
    if e["form"] == "bias":
        split_pair_channels(qmodel, p, idx, bias_shift=e["x_clip"])
        return
    producer, consumer = qmodel.get_submodule(p.producer), qmodel.get_submodule(p.consumer)
    order = None
    if e["grouped"]:  # every channel (see _select): group g reads its C/g originals, then their copies
        per_group, channels = consumer.weight.shape[1], e["producer_channels"]
        duplicate_inputs(consumer, torch.arange(per_group))
        groups = torch.arange(channels).reshape(-1, per_group)
        order = torch.cat([groups, groups + channels], 1).reshape(-1)
    else:
        duplicate_inputs(consumer, input_columns(idx, flatten_positions(producer, consumer)))
    clip = {"quantizer": e["quantizer"]} if live_clip else {"x_clip": e["x_clip"]}
    shift = OutlierShift(idx, order=order, **clip)
    _insert_shift(qmodel, p, shift.to(producer.weight.device))


# ``method.options.omr_options`` of DOMR: the keywords of apply_omr.
OmrOptions = signature_options(apply_omr, skip=("qmodel", "calib"))
