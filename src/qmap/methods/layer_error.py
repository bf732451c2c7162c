"""The squared error of one layer as a quadratic form in its weight error, built in one pass over the data.

For a Conv2d (zero padding) or Linear layer with FP weight W (rows = output channels, K values each),
quantized input X_q (im2col patches, one row per output position, P rows) and FP input X_fp:

    y_fp      = X_fp Wᵀ + b                       (the FP layer output, the target)
    y(Ŵ)      = X_q Ŵᵀ + b                        (the layer with candidate weights Ŵ and its input quantized)
    y(Ŵ) − y_fp = X_q Eᵀ + D,   E = Ŵ − W,   D = X_q Wᵀ − X_fp Wᵀ   (D: the error the input already carries)

so per output channel c, with e_c the c-th row of E,

    ‖y_c(Ŵ) − y_fp,c‖² = e_c H e_cᵀ + 2 e_c·g_c + d_c,   H = X_qᵀ X_q (K×K), g_c = X_qᵀ D_c, d_c = ‖D_c‖².

A grouped (depthwise) conv has one H per group (output channel c uses its group's input patches X_g(c)).
H, G and d are accumulated once (float32 products per chunk, float64 sums; H and G are kept in float32 for the
evaluation, d in float64); a candidate then costs C·K² flops whatever the number of images,
and the channels are independent (a per-channel scale is optimised by the same evaluations). The weight-space
error is the special case H = I, G = 0, d = 0 (one "output" per weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

ROWS_PER_CHUNK = 1 << 22  # patch-matrix elements materialised at once


def flat_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as [out_channels, K] (K = in_channels·kh·kw for a conv, in_features for a linear layer)."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def group_patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[G, N·L, K]: per group g the rows X_g such that the bias-free output of group g's channels is X_g W_gᵀ
    (im2col patches of the group's input channels; G = 1 and rows x for a Linear layer)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ConfigError(f"output-error objective supports zero-padded convs with numeric padding; "
                          f"{getattr(layer, 'layer_name', type(layer).__name__)} is not one")
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    n, _, positions = cols.shape
    return cols.reshape(n, layer.groups, -1, positions).permute(1, 0, 3, 2).reshape(layer.groups, n * positions, -1)


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows X such that an ungrouped ``layer``'s bias-free output is X Wᵀ: [N·L, K] (conv) or x [N, K]."""
    return group_patches(layer, x)[0]


class LayerError:
    """Per-output-channel squared error of a layer as a function of candidate weights (see module docstring).

    ``count`` is the number of error terms per channel (output positions, or K for the weight error), so
    ``per_channel(w).sum(-1) / (count · channels)`` is a mean squared error.
    """

    def __init__(self, weight2d: torch.Tensor, count: int, hessian: torch.Tensor | None = None,
                 cross: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        self.weight = weight2d
        self.count = count
        self.hessian, self.cross, self.offset = hessian, cross, offset

    @classmethod
    def weight_space(cls, layer: nn.Module) -> LayerError:
        w = flat_weight(layer)
        return cls(w, w.shape[1])

    @classmethod
    @torch.no_grad()
    def output_space(cls, layer: nn.Module, x_q: torch.Tensor, x_fp: torch.Tensor) -> LayerError:
        """Accumulate H, G, d from the layer's quantized input ``x_q`` and FP input ``x_fp`` (same images)."""
        w = flat_weight(layer)
        if getattr(layer, "groups", 1) != 1:
            return cls._grouped(layer, w, x_q, x_fp)
        k, c = w.shape[1], w.shape[0]
        hess = torch.zeros(k, k, dtype=torch.float64, device=w.device)
        cross = torch.zeros(c, k, dtype=torch.float64, device=w.device)
        offset = torch.zeros(c, dtype=torch.float64, device=w.device)
        step = max(1, ROWS_PER_CHUNK // max(1, patches(layer, x_q[:1]).numel()))
        count = 0
        for i in range(0, len(x_q), step):  # float32 products per chunk, float64 sums across chunks
            xq = patches(layer, x_q[i:i + step]).float()
            d = (xq - patches(layer, x_fp[i:i + step]).float()) @ w.float().T
            hess += (xq.T @ xq).double()
            cross += (d.T @ xq).double()
            offset += (d.double() ** 2).sum(0)
            count += xq.shape[0]
        return cls(w, count, hess.float(), cross.float(), offset)

    @classmethod
    def _grouped(cls, layer: nn.Module, w: torch.Tensor, x_q: torch.Tensor, x_fp: torch.Tensor) -> LayerError:
        """output_space for a grouped conv: H per group [G, K, K], expanded to its channels [C, K, K]."""
        g, (c, k) = layer.groups, w.shape
        wg = w.float().reshape(g, c // g, k)
        hess = torch.zeros(g, k, k, dtype=torch.float64, device=w.device)
        cross = torch.zeros(g, c // g, k, dtype=torch.float64, device=w.device)
        offset = torch.zeros(g, c // g, dtype=torch.float64, device=w.device)
        step = max(1, ROWS_PER_CHUNK // max(1, group_patches(layer, x_q[:1]).numel()))
        count = 0
        for i in range(0, len(x_q), step):
            xq = group_patches(layer, x_q[i:i + step]).float()
            d = (xq - group_patches(layer, x_fp[i:i + step]).float()) @ wg.transpose(1, 2)  # [G, P, C/G]
            hess += (xq.transpose(1, 2) @ xq).double()
            cross += (d.transpose(1, 2) @ xq).double()
            offset += (d.double() ** 2).sum(1)
            count += xq.shape[1]
        per_channel = hess.repeat_interleave(c // g, 0)
        return cls(w, count, per_channel.float(), cross.reshape(c, k).float(), offset.reshape(c))

    def per_channel(self, candidates: torch.Tensor) -> torch.Tensor:
        """Squared error per channel [G, C] for candidate weights [G, C, K]."""
        e = (candidates - self.weight).float()
        if self.hessian is None:
            return (e * e).sum(-1).double()
        he = e @ self.hessian if self.hessian.dim() == 2 else (e.unsqueeze(-2) @ self.hessian).squeeze(-2)
        quad = (he * e).sum(-1) + 2 * (e * self.cross).sum(-1)
        return (quad.double() + self.offset).clamp_min(0)
