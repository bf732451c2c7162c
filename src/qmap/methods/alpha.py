"""Weight combine (α-scaling) of fused Conv+BN kernels, on a quantization grid fixed independently of α.

After BN fusion each layer's kernel W is re-parameterised by α > 0 and quantized as

    W_q(α) = Q_s(α·W) / α = (s/α) · clip(round(α·W/s), qmin, qmax)

**Why the grid must be fixed.** If the step is recomputed from the scaled weights, s(α·W) = α·s(W) for every
observer here (min-max, percentile and MSE search are all scale-equivariant), so α·W/s(α·W) = W/s(W): α cancels
exactly and is a no-op (``tests/methods/test_alpha.py`` keeps that test). α is a knob only when s does not move
with α. ``fixed_grid`` chooses s:

- ``"initial"``  the weight quantizer's step initialised once from the *un-scaled* fused weights by the
  ``QuantConfig`` observer (per-channel or per-tensor); α = 1 is then exactly RTN.
- ``"pow2"``     that step rounded to a power of two, 2^round(log2 s) — a hardware step that is a shift.

**What α then is.** On a fixed grid Q_s(α·W)/α = Q_{s/α}(W): α-scaling searches the effective step s/α of a
layer by one common factor (or one per output channel with ``per_channel_alpha``), anchored on the fixed grid.

**Representation (what the integer model and the hardware export see).** The layer keeps its FP fused weight W
and its weight quantizer's step becomes s/α (quant and dequant step alike). Hence ``to_int(W)`` =
clip(round(α·W/s)) is the integer kernel of α·W on the fixed grid s, and ``step`` = s/α is the real value of one
integer step — no special case downstream, and disabling quantization still gives the FP model. The bias stays in
float; the integer model puts it in accumulator units s_x·s/α, i.e. it quantizes α·b on the grid s_x·s — the
seed's "bias likewise". On pow2 hardware the integers live on the shift grid s and the leftover real factor 1/α is
folded into the requantizer (it multiplies by s_x·s_w/s_y anyway) or moved into the next layer with
:func:`qmap.methods.reparam.reparameterize`. The grid step s and α of every layer are in the report.

**Criterion.** ``output_mse`` (the seed's): mean of (y(α) − y_fp)² over the layer's outputs on the calibration
images, y(α) = op(Q_x(x), W_q(α)) + b and y_fp = op(x_fp, W) + b, where x is the layer's input from the already
α-scaled, quantized earlier layers (``sequential=True``) or the FP input x_fp (``sequential=False``); evaluated
as a quadratic form (:mod:`qmap.methods.layer_error`). ``weight_mse``: mean of (W_q(α) − W)², cheaper.

**Search.** α over ``points`` log-spaced values in ``grid`` plus α = 1 exactly (so the chosen α never does worse
than α = 1 under the criterion), then optionally golden-section search of log α between the best grid point's
neighbours; a refined α is kept only if it lowers the error.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import bar
from ..quant import QuantConfig, calibrate, float_mode, quant_layers, quantize_model
from ..quant.rounding import ROUND_FNS
from .base import MethodResult, Timer
from .layer_error import LayerError
from .options import signature_options

CRITERIA = ("output_mse", "weight_mse")
FIXED_GRIDS = ("initial", "pow2")
INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
CANDIDATE_ELEMENTS = 1 << 22  # weights materialised at once when evaluating candidates


def alpha_grid(lo: float, hi: float, points: int) -> torch.Tensor:
    """``points`` log-spaced values in [lo, hi] plus exactly 1.0 (sorted, float64)."""
    if not 0 < lo <= hi or points < 1:
        raise ConfigError(f"α grid needs 0 < lo <= hi and points >= 1, got ({lo}, {hi}), {points}")
    g = torch.logspace(math.log10(lo), math.log10(hi), points, dtype=torch.float64)
    return torch.unique(torch.cat([g, torch.ones(1, dtype=torch.float64)]))


def fixed_grid_step(step: torch.Tensor, mode: str) -> torch.Tensor:
    """The α-independent grid: the initial step, or that step rounded to a power of two."""
    if mode == "initial":
        return step.detach().clone()
    if mode == "pow2":
        return torch.exp2(torch.round(torch.log2(step.detach())))
    raise ConfigError(f"unknown fixed grid {mode!r}; choose one of {', '.join(FIXED_GRIDS)}")


def effective_step(grid_step: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """s/α in the grid's dtype — the very value stored in the quantizer, so search and model agree bit for bit."""
    return grid_step / alpha.to(grid_step.dtype)


def fake_quant_rows(w2d: torch.Tensor, steps: torch.Tensor, spec) -> torch.Tensor:
    """(s/α)·clip(round(W/(s/α))) for steps [G, C or 1] → [G, C, K], exactly as ``Quantizer.forward`` computes it."""
    s = steps.unsqueeze(-1)
    q = torch.clamp(ROUND_FNS[spec.rounding](w2d / s), spec.qmin, spec.qmax)
    return q * s


def candidate_errors(objective: LayerError, quantizer, grid_step: torch.Tensor, alphas: torch.Tensor
                     ) -> torch.Tensor:
    """Errors [G, A] of candidate α's [G, A]: A = 1 (one α per layer, error summed over channels) or A = C."""
    w2d = objective.weight
    chunk = max(1, CANDIDATE_ELEMENTS // w2d.numel())
    out = []
    for i in range(0, len(alphas), chunk):
        a = alphas[i:i + chunk].to(w2d.device)
        steps = effective_step(grid_step.to(w2d.device), a)  # [g, C] (or [g, 1]: per-tensor grid, one α)
        err = objective.per_channel(fake_quant_rows(w2d, steps, quantizer.spec))
        out.append(err.sum(-1, keepdim=True) if a.shape[1] == 1 else err)
    return torch.cat(out)


def search_alpha(errors, n_alpha: int, grid: tuple[float, float], points: int, refine: bool, refine_iters: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise ``errors(alphas [G, A]) -> [G, A]`` column-wise; returns (α [A], error [A], error at α = 1 [A])."""
    cands = alpha_grid(*grid, points)
    errs = errors(cands[:, None].expand(-1, n_alpha))
    err_one = errs[int(torch.nonzero(cands == 1.0)[0])]
    best_err, idx = errs.min(0)
    best = cands[idx]

    def keep_better(log_alpha: torch.Tensor, err: torch.Tensor) -> None:
        nonlocal best, best_err
        better = err < best_err
        best, best_err = torch.where(better, log_alpha.exp(), best), torch.where(better, err, best_err)

    if refine and len(cands) > 1:
        lo = cands[(idx - 1).clamp_min(0)].log()
        hi = cands[(idx + 1).clamp_max(len(cands) - 1)].log()
        c, d = hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo)
        fc, fd = errors(torch.stack([c, d]).exp()).unbind(0)
        keep_better(c, fc)
        keep_better(d, fd)
        for _ in range(refine_iters):
            left = fc < fd  # the minimum lies in [lo, d]
            hi, lo = torch.where(left, d, hi), torch.where(left, lo, c)
            x = torch.where(left, hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo))
            f = errors(x.exp()[None])[0]
            c, fc, d, fd = (torch.where(left, x, d), torch.where(left, f, fd), torch.where(left, c, x),
                            torch.where(left, fc, f))
            keep_better(x, f)
    return best, best_err, err_one


class _InputCaptured(Exception):
    """Stops a forward pass once the wanted layer's input has been recorded."""


@torch.no_grad()
def capture_input(model: nn.Module, layer: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` runs on ``images`` (each forward stops at ``layer``)."""
    chunks: list[torch.Tensor] = []

    def hook(_module, args):
        chunks.append(args[0].detach().clone())
        raise _InputCaptured

    handle = layer.register_forward_pre_hook(hook)
    device = layer.weight.device
    try:
        for i in range(0, len(images), batch_size):
            try:
                model(images[i:i + batch_size].to(device))
            except _InputCaptured:
                pass
    finally:
        handle.remove()
    return torch.cat(chunks)


@torch.no_grad()
def fp_input(qmodel: nn.Module, layer: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """``layer``'s input in the FP (fused) model: every quantizer disabled while capturing, then restored."""
    with float_mode(qmodel):
        return capture_input(qmodel, layer, images, batch_size)


def prepare(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, fixed_grid: str = "initial",
            batch_size: int = 128) -> nn.Module:
    """The calibrated fake-quant model with every weight on its fixed grid and α = 1 (for ``"initial"``: RTN)."""
    qmodel = quantize_model(model, qcfg)
    calibrate(qmodel, calib, batch_size=batch_size)
    for _, layer in quant_layers(qmodel):
        layer.weight_quantizer.set_qparams(fixed_grid_step(layer.weight_quantizer.scale, fixed_grid))
    return qmodel


@torch.no_grad()
def scale_layer(qmodel: nn.Module, layer: nn.Module, images: torch.Tensor, criterion: str, sequential: bool,
                per_channel_alpha: bool, search: dict, batch_size: int = 128) -> dict:
    """Choose α for one layer, set its weight step to s/α, and return its report row."""
    wq = layer.weight_quantizer
    channels = layer.weight.shape[0]
    grid_step = wq.scale.detach().clone()
    if per_channel_alpha and grid_step.numel() == 1:
        # s/α_c is a per-channel step even on a per-tensor grid: the quantizer must hold one step per channel.
        grid_step = grid_step.expand(channels).clone()
        wq.spec = wq.spec.with_(per_channel=True)
    if criterion == "output_mse":
        x_fp = fp_input(qmodel, layer, images, batch_size)
        x_in = capture_input(qmodel, layer, images, batch_size) if sequential else x_fp
        objective = LayerError.output_space(layer, layer.input_quantizer(x_in), x_fp)
    else:
        objective = LayerError.weight_space(layer)
    n_alpha = channels if per_channel_alpha else 1
    alpha, err, err_one = search_alpha(lambda a: candidate_errors(objective, wq, grid_step, a), n_alpha, **search)
    alpha = alpha.to(grid_step.dtype)
    zeros_before = int((wq.to_int(layer.weight) == 0).sum())
    wq.set_qparams(effective_step(grid_step, alpha.to(grid_step.device)))
    denom = objective.count * channels
    return {"alpha": alpha.tolist() if per_channel_alpha else float(alpha), "grid_step": grid_step.tolist(),
            "mse_before": float(err_one.sum()) / denom, "mse_after": float(err.sum()) / denom,
            "zeros_before": zeros_before, "zeros_after": int((wq.to_int(layer.weight) == 0).sum()),
            "weights": layer.weight.numel()}


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, grid: tuple[float, float] = (0.5, 2.0),
          points: int = 64, refine: bool = True, criterion: str = "output_mse", sequential: bool = True,
          per_channel_alpha: bool = False, fixed_grid: str = "initial", layers: list[str] | None = None,
          search_images: int = 256, refine_iters: int = 20, batch_size: int = 128) -> MethodResult:
    """α-scale the selected (default: all) quantized layers of ``model``, in execution order.

    The output criterion uses the first ``search_images`` calibration images; all of ``calib`` calibrates the
    activation steps. Report: options, seconds, and per layer {alpha, grid_step, mse_before (α = 1), mse_after,
    zeros_before, zeros_after (integer weights equal to 0), weights, seconds}.
    """
    if criterion not in CRITERIA:  # checked before the (slow) calibration
        raise ConfigError(f"unknown α criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if fixed_grid not in FIXED_GRIDS:
        raise ConfigError(f"unknown fixed grid {fixed_grid!r}; choose one of {', '.join(FIXED_GRIDS)}")
    search = {"grid": tuple(grid), "points": points, "refine": refine, "refine_iters": refine_iters}
    with Timer() as t:
        qmodel = prepare(model, calib, qcfg, fixed_grid, batch_size)
        rows = scale_layers(qmodel, calib[:search_images], criterion, sequential, per_channel_alpha, search, layers,
                            batch_size)
    options = {"criterion": criterion, "sequential": sequential, "per_channel_alpha": per_channel_alpha,
               "fixed_grid": fixed_grid, "search_images": min(search_images, len(calib)), **search}
    return MethodResult(qmodel, {"method": "alpha", "seconds": t.seconds, "options": options, "layers": rows})


def scale_layers(qmodel: nn.Module, images: torch.Tensor, criterion: str = "output_mse", sequential: bool = True,
                 per_channel_alpha: bool = False, search: dict | None = None, layers: list[str] | None = None,
                 batch_size: int = 128) -> dict[str, dict]:
    """α-scale, in execution order, the selected layers of a :func:`prepare`-d model in place; report rows by
    layer name (each with the search's wall ``seconds``)."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown α criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    search = search or {"grid": (0.5, 2.0), "points": 64, "refine": True, "refine_iters": 20}
    named = quant_layers(qmodel)
    unknown = sorted(set(layers or []) - {n for n, _ in named})
    if unknown:
        raise ConfigError(f"unknown layer(s) for α-scaling: {', '.join(unknown)}")
    rows = {}
    for name, layer in bar(named, desc="α search", unit="layer"):
        if layers is None or name in layers:
            with Timer() as t:
                rows[name] = scale_layer(qmodel, layer, images, criterion, sequential, per_channel_alpha, search,
                                         batch_size)
            rows[name]["seconds"] = t.seconds
    return rows


def integer_kernel(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer kernel clip(round(α·W/s) + z) − z, its real step s/α) of an α-scaled layer, as the hardware export
    reads them; ``step · kernel`` is the layer's fake-quant weight."""
    wq, w = layer.weight_quantizer, layer.weight.detach()
    return wq.to_int(w) - wq._shaped(wq.zero_point, w).to(torch.int32), wq.step.detach()


__all__ = ["CRITERIA", "FIXED_GRIDS", "alpha_grid", "apply", "capture_input", "fixed_grid_step", "integer_kernel",
           "prepare", "scale_layers", "search_alpha"]


Options = signature_options(apply)
