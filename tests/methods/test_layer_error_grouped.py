"""The output-space layer error of a grouped (depthwise) conv equals the directly computed output error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qmap.methods.layer_error import LayerError


def test_grouped_conv_error_is_the_output_error():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=3).double()
    x_fp = torch.randn(4, 6, 5, 5, generator=gen, dtype=torch.float64)
    x_q = x_fp + 0.05 * torch.randn(x_fp.shape, generator=gen, dtype=torch.float64)
    err = LayerError.output_space(conv, x_q, x_fp)
    cand = conv.weight.detach() + 0.1 * torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64)
    got = err.per_channel(cand.reshape(1, 6, -1))[0]
    want = ((F.conv2d(x_q, cand, None, 1, 1, 1, 3) - F.conv2d(x_fp, conv.weight, None, 1, 1, 1, 3)) ** 2
            ).sum((0, 2, 3))
    assert torch.allclose(got, want, rtol=1e-4)
