"""Observers: find a quantizer's step (and zero point) from the values it will see.

All observers reduce over every axis but the channel axis (axis 0 of a weight) when ``per_channel`` is set.

- ``minmax``     s = max|x| / qmax (symmetric) or (max − min)/(qmax − qmin) (affine).
- ``percentile`` the same on the p-th percentile of |x| (or of x's lower/upper tails).
- ``mse``        (s, z)* = argmin ‖Q_{s,z}(x) − x‖_p^p (p = ``spec.p_norm``) per row, searched jointly:
                 s = r·range/(qmax − qmin) over a coarse-to-fine grid of clipping ratios r ∈ [GRID_LOW, 1]
                 (range = max|x| for symmetric, max − min for affine quantizers), and for an affine quantizer,
                 with every s, the integer zero points z around the min-max one (all of them at ≤ 3 bits; the
                 grid s·(q − z) always holds 0 exactly). Then iterative refinement as in DOMR's stage 1
                 (eq. 1): with z and the integers q = clip(⌊x/s⌉ + z) fixed, the least-squares step is
                 s = ⟨x, q − z⟩ / ⟨q − z, q − z⟩; a step is kept only while it lowers the Lp error.
                 Every candidate of a row is evaluated in one batched tensor op (no loop over rows/values).

Activations are observed over several calibration batches: min/max are running extrema; percentile and
MSE keep a bounded random subsample of the values (``max_samples`` per channel-less tensor).

Thread-count independence: the error and least-squares sums are accumulated in float64 (the element-wise
work stays float32), so a parallel reduction's order changes a sum only at the 1e-16 level and the chosen
steps come out bit-identical whether torch runs on 1 or many threads.
"""

from __future__ import annotations

import torch

from .rounding import ROUND_FNS
from .spec import QuantSpec

GRID_POINTS = 24
GRID_LOW = 0.05


def _flat(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View ``x`` as [channels, values] (one row when per-tensor)."""
    return x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        from ..errors import QmapError
        raise QmapError(f"{what} contains NaN or Inf values: cannot quantize")


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Step and zero point for a clipping range [lo, hi] (per row). A zero range gives step 1 (no div by 0)."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if spec.symmetric:
        amax = torch.maximum(-lo, hi) if spec.signed else hi
        scale = amax / spec.qmax
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(spec.qmin - lo / safe), spec.qmin, spec.qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if spec.pow2:
        scale = torch.exp2(torch.round(torch.log2(scale)))
    return scale, zp


def quant_error(x2d: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-row Lp error ‖Q(x) − x‖_p^p for candidate steps ``scale`` [..., rows] (broadcast over leading axes)."""
    s = scale.unsqueeze(-1)
    e = ROUND_FNS[spec.rounding](x2d / s)  # becomes Q(x) − x in place
    if spec.symmetric:
        e.clamp_(spec.qmin, spec.qmax)
    else:
        z = zp.unsqueeze(-1)
        e.add_(z).clamp_(spec.qmin, spec.qmax).sub_(z)
    e.mul_(s).sub_(x2d)
    e = e.square_() if spec.p_norm == 2 else e.abs_().pow_(spec.p_norm)
    return e.sum(-1, dtype=torch.float64).to(x2d.dtype)  # float64 accumulation: thread-count independent


ZP_OFFSETS = 3  # affine search: zero points z_minmax − 3 … z_minmax + 3 (every one at ≤ 3 bits)


def mse_search(x2d: torch.Tensor, spec: QuantSpec, grid: int = GRID_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse-to-fine search of the clipping ratio r ∈ [GRID_LOW, 1] (jointly with the zero point for an
    affine ``spec``) per row, minimising the Lp error: ``grid`` ratios evenly spaced, then ``grid`` more within
    ±1 coarse step of each row's best; then the least-squares refinement of the step (z fixed)."""
    lo, hi = x2d.min(1).values, x2d.max(1).values
    coarse = torch.linspace(GRID_LOW, 1.0, grid, dtype=x2d.dtype, device=x2d.device).unsqueeze(1)
    best_r, best_s, best_z, best_err = _best_candidate(x2d, lo, hi, coarse.expand(grid, len(lo)), spec)
    step = (1.0 - GRID_LOW) / (grid - 1)
    fine = best_r + torch.linspace(-step, step, grid, dtype=x2d.dtype, device=x2d.device).unsqueeze(1)
    _, fine_s, fine_z, fine_err = _best_candidate(x2d, lo, hi, fine.clamp(GRID_LOW / 2, 1.0), spec)
    better = fine_err < best_err
    scale, zp = torch.where(better, fine_s, best_s), torch.where(better, fine_z, best_z)
    if not spec.pow2:
        scale = refine_step_least_squares(x2d, scale, zp, spec)
    return scale, zp


def _candidates(lo, hi, ratios, spec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Candidate (step, zero point, ratio) triples [g·k, rows] for ratios [g, rows]: k = 1 zero point per ratio
    when symmetric, else the 2·ZP_OFFSETS + 1 integers around the min-max zero point (clamped to the codes)."""
    scale, zp = qparams_from_range(lo * ratios, hi * ratios, spec)
    if spec.symmetric:
        return scale, zp, ratios, 1
    offsets = torch.arange(-ZP_OFFSETS, ZP_OFFSETS + 1, dtype=zp.dtype, device=zp.device)
    k = len(offsets)
    zps = (zp.unsqueeze(1) + offsets[None, :, None]).clamp(spec.qmin, spec.qmax)
    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(1).expand(-1, k, -1).reshape(-1, t.shape[-1])

    return repeat(scale), zps.reshape(-1, zps.shape[-1]), repeat(ratios), k


def _best_candidate(x2d, lo, hi, ratios, spec) -> tuple[torch.Tensor, ...]:
    """For candidate ratios [g, rows]: per row the best (ratio, step, zero point, error), chunked so that one
    evaluation holds at most ~2^24 values."""
    best_r, best_s = torch.ones_like(lo), torch.ones_like(lo)
    best_z, best_err = torch.zeros_like(lo), torch.full_like(lo, float("inf"))
    per_ratio = 1 if spec.symmetric else 2 * ZP_OFFSETS + 1
    chunk = max(1, int(2**24 // max(1, x2d.numel() * per_ratio)))
    for i in range(0, ratios.shape[0], chunk):
        s, z, r, _ = _candidates(lo, hi, ratios[i:i + chunk], spec)
        err = quant_error(x2d.unsqueeze(0), s, z, spec)
        e_min, idx = err.min(0)
        better = e_min < best_err
        best_err = torch.where(better, e_min, best_err)
        best_r = torch.where(better, r.gather(0, idx[None]).squeeze(0), best_r)
        best_s = torch.where(better, s.gather(0, idx[None]).squeeze(0), best_s)
        best_z = torch.where(better, z.gather(0, idx[None]).squeeze(0), best_z)
    return best_r, best_s, best_z, best_err


def refine_step_least_squares(x2d: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec,
                              iters: int = 10) -> torch.Tensor:
    """DOMR stage 1 (eq. 1) with zero point z fixed: alternate q = clip(⌊x/s⌉ + z) and
    s = ⟨x, q − z⟩/⟨q − z, q − z⟩; keep a step only if it lowers the Lp error."""
    err = quant_error(x2d, scale, zp, spec)
    z = zp.unsqueeze(1)
    for _ in range(iters):
        n = torch.clamp(ROUND_FNS[spec.rounding](x2d / scale.unsqueeze(1)) + z, spec.qmin, spec.qmax) - z
        nn_ = (n * n).sum(1, dtype=torch.float64)
        xn = (x2d * n).sum(1, dtype=torch.float64)
        cand = torch.where(nn_ > 0, (xn / nn_.clamp_min(1e-12)).to(scale.dtype), scale)
        cand = torch.where(cand > 0, cand, scale)
        cand_err = quant_error(x2d, cand, zp, spec)
        better = cand_err < err
        if not better.any():
            break
        scale = torch.where(better, cand, scale)
        err = torch.where(better, cand_err, err)
    return scale


class Observer:
    """Accumulates statistics over ``update`` calls; ``compute`` returns (scale, zero_point) per row."""

    def __init__(self, spec: QuantSpec, max_samples: int = 1 << 16, seed: int = 0):
        self.spec = spec
        self.max_samples = max_samples
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.n_seen = 0
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor, what: str = "tensor") -> None:
        x = x.detach()
        _check_finite(x, what)
        x2d = _flat(x.float(), self.spec.per_channel)
        lo, hi = x2d.min(1).values, x2d.max(1).values
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.spec.observer != "minmax":
            self._keep_sample(x2d)
        self.n_seen += 1

    def _keep_sample(self, x2d: torch.Tensor) -> None:
        cols = x2d.shape[1]
        budget = max(1, self.max_samples // max(1, x2d.shape[0]))
        if cols > budget:
            idx = torch.randint(cols, (budget,), generator=self.gen).to(x2d.device)
            x2d = x2d[:, idx]
        else:  # a view of the forward's tensor, which a later in-place op (ReLU(inplace=True)) may overwrite
            x2d = x2d.clone()
        self.samples.append(x2d)
        total = sum(s.shape[1] for s in self.samples)
        if total > 4 * budget:  # keep memory bounded: resample the pool down
            pool = torch.cat(self.samples, 1)
            idx = torch.randperm(pool.shape[1], generator=self.gen)[:budget].to(pool.device)
            self.samples = [pool[:, idx]]

    def compute(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step and zero point for ``spec`` (default: the observer's own; it may differ only in sign/bits)."""
        if self.lo is None:
            raise RuntimeError("observer saw no data: run calibration first")
        spec = spec or self.spec
        if spec.observer == "minmax":
            return qparams_from_range(self.lo, self.hi, spec)
        pool = torch.cat(self.samples, 1)
        if spec.observer == "percentile":
            q = spec.percentile / 100.0
            # torch.quantile caps its input size; a sorted kthvalue is exact and has no cap.
            srt = pool.sort(1).values
            n = srt.shape[1]
            hi = srt[:, min(n - 1, int(round(q * (n - 1))))]
            lo = srt[:, max(0, int(round((1 - q) * (n - 1))))]
            return qparams_from_range(lo, hi, spec)
        return mse_search(pool, spec)


def observe_tensor(x: torch.Tensor, spec: QuantSpec, what: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """One-shot observation of a whole tensor (weights)."""
    obs = Observer(spec, max_samples=max(1, x.numel()))
    obs.update(x, what)
    return obs.compute()
