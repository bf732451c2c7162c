"""The straight-through fake-quant as one autograd node, its element-wise kernels, and QDrop's masks.

:class:`FakeQuantSTE` computes x̂ = (clamp(⌊x/s⌉ + z, qmin, qmax) − z)·s' (or x where QDrop keeps the FP value)
and the STE / LSQ gradients of :mod:`qmap.quant.quantizer` directly: a few passes over the tensor instead of
autograd's chain through round / clamp / add / mul. This is what a reconstruction iteration spends its
element-wise time on.

Not compiled: ``torch.compile`` (Inductor) fuses the two kernels into one loop each — the same values — but
on block 0 of the reference VGG (``benchmarks/recon_speed.py``, this 2-core CPU) that gave no measurable gain
inside an iteration (the convolutions dominate and oneDNN already runs them), for seconds of compilation per
kernel variant.
"""

from __future__ import annotations

import torch

from .rounding import ROUND_FNS


def drop_mask(like: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """QDrop's keep-FP mask: 1.0 with probability p per element, else 0.0, in ``like``'s dtype and memory layout
    (drawn in that memory order). Same layout, because a mask in another one would make every element-wise op it
    meets, and the convolution after them, run on the strided NCHW path (several times slower on channels-last
    maps); float, because ``a·keep + b·(1 − keep)`` is one vectorised pass where ``torch.where`` on a bool mask
    is not."""
    return torch.empty_like(like).uniform_(generator=gen).lt_(p)


def select(keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where ``keep`` is 1, b where it is 0 (a 0/1 float mask): a·keep + b·(1 − keep), exactly a or b for finite
    values, since one of the two products is an exact zero."""
    return torch.addcmul(a * keep, b, 1 - keep)


def sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the axes where ``like`` (a broadcast step / zero point) has size 1."""
    if like.dim() == 0:
        return t.sum()
    dims = [d for d in range(t.dim()) if like.shape[d] == 1]
    return t.sum(dims, keepdim=True) if dims else t


def ste_forward(x: torch.Tensor, scale: torch.Tensor, step: torch.Tensor, zp: torch.Tensor | None, qmin: int,
                qmax: int, rounding: str, keep: torch.Tensor | None, need_x: bool, need_s: bool, need_step: bool,
                same_step: bool):
    """(x̂, ∂x̂/∂x, p·x/s, n) — the last three None unless needed — with n = clamp(⌊x/s⌉ + z, qmin, qmax) − z
    zeroed where ``keep`` is 1 and p = [n = ⌊x/s⌉]·(1 − keep) (the STE passes the gradient: not clipped, not
    dropped):

        x̂ = n·s' + x·keep,    ∂x̂/∂x = p·s'/s + keep,    ∂x̂/∂s = −p·(x/s)·s'/s,    ∂x̂/∂s' = n

    each the exact value the chain rule gives (p and keep are 0/1, so multiplying by them only selects).
    ``same_step``: s' is s, so s'/s is exactly 1 and is not multiplied in."""
    u = x / scale
    r = ROUND_FNS[rounding](u)
    n = r.clamp(qmin, qmax) if zp is None else (r + zp).clamp_(qmin, qmax).sub_(zp)
    passed = torch.eq(n, r).to(x.dtype)
    if keep is not None:
        quantized = 1 - keep
        n.mul_(quantized)
        passed.mul_(quantized)
    out = n * step
    if keep is not None:
        out.addcmul_(x, keep)
    passed_u = u.mul_(passed) if need_s else None
    dx = None
    if need_x:
        dx = passed if same_step else passed * (step / scale)
        if keep is not None:
            dx.add_(keep)
    return out, dx, passed_u, n if need_step else None


def ste_backward(g: torch.Tensor, dx: torch.Tensor | None, passed_u: torch.Tensor | None, n: torch.Tensor | None,
                 scale: torch.Tensor, step: torch.Tensor):
    """(∂L/∂x, ∂L/∂s, ∂L/∂s') from the factors :func:`ste_forward` saved (None where not needed)."""
    grad_x = g * dx if dx is not None else None
    grad_s = -sum_to(g * passed_u, scale) * (step / scale) if passed_u is not None else None
    grad_step = sum_to(g * n, step) if n is not None else None
    return grad_x, grad_s, grad_step


class FakeQuantSTE(torch.autograd.Function):
    """x̂ = (clamp(⌊x/s⌉ + z, qmin, qmax) − z)·s', or x where the 0/1 float mask ``keep`` is 1 (QDrop), with the
    gradients of :func:`ste_forward`. ``scale``/``step``/``zp`` are broadcastable to x (``step`` may be
    ``scale`` itself; ``zp`` None means z = 0)."""

    @staticmethod
    def forward(ctx, x, scale, step, zp, qmin: int, qmax: int, rounding: str, keep):
        need = ctx.needs_input_grad
        out, dx, passed_u, n = ste_forward(x, scale, step, zp, qmin, qmax, rounding, keep, need[0], need[1], need[2],
                                           step is scale)
        ctx.save_for_backward(dx, passed_u, n, scale, step)
        return out

    @staticmethod
    def backward(ctx, g):
        return (*ste_backward(g, *ctx.saved_tensors), None, None, None, None, None)
