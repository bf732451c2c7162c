"""The reconstruction engine shared by AdaRound, BRECQ, QDrop and DOMR.

For each block (a layer, a stage or the whole network, see :mod:`qmap.methods.recon_blocks`) it minimises

    L = Σ_{loss points j} E_batch ‖x̂_j − x_j‖_p^p  +  λ · Σ_layers R(v)        (p = 2: ‖Ŵx̂ − Wx‖²_F)

where x_j is the FP model's output at loss point j (cached), x̂_j the quantized block's output fed with the
quantized network's input of the block, and R the AdaRound regulariser (off during the first ``warmup``
fraction of the iterations, then with β annealed linearly from ``beta_start`` to ``beta_end``). With
``loss_per_position`` each loss term is divided by its map's H·W (the reference implementations' form; with
Adam this only makes λ H·W times stronger relative to the reconstruction term).

Learnable, each in its own Adam parameter group: the rounding variables v (lr ``lr_rounding``), the
activation steps s_x and the decoupled weight dequant steps s'_w. A step's learning rate is relative
(``lr · mean(s)`` for that layer), so one setting suits every layer's scale, and is cosine-annealed to 0.

QDrop (``drop_prob`` p): the block input is the FP input with probability p per element (else the quantized
one), and every activation quantizer in the block passes its input through unquantized with probability p.

Caching: only the current block's FP input, quantized input and FP targets are held, in memory up to
``memory_limit_mb`` and memory-mapped files beyond (:mod:`qmap.methods.recon_cache`); the next block's inputs
are computed from them after the block is hardened. Feature maps are cached channels-last (NHWC strides), so
every convolution and element-wise op of an iteration runs on NHWC tensors (oneDNN's native CPU layout: no
layout reorder per call); the values are those of the NCHW computation up to float round-off.

Speed (``benchmarks/recon_speed.py``): an iteration's element-wise work is the fake-quant of every activation
(forward and STE backward in :class:`~qmap.quant.ste.FakeQuantSTE`, QDrop's mask folded in) and the loss;
QDrop's masks are 0/1 float maps in the maps' own layout; the layers' W and b get no gradient; the FP targets
are computed once per block; nothing but the learning-rate update runs in Python per iteration.

Resume: with ``work_dir`` set, each finished block's layer tensors are saved atomically (``block_KKK.pt``,
loaded with ``weights_only=True``), and with ``checkpoint_every`` > 0 the optimiser and generator states
mid-block too. ``resume=True`` loads finished blocks, continues a partial one, and gives results identical to
an uninterrupted run with the same seed (every block draws from generators seeded by (seed, block index)).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, reject_unknown_keys
from ..io import atomic_write_bytes, atomic_write_json
from ..nn import ModelGraph
from ..progress import bar
from ..quant import QuantConfig, calibrate, quantize_model, set_quant_state
from ..quant.adaround import AdaRoundQuantizer, attach_adaround, harden_layer
from ..quant.ste import drop_mask, select
from .base import MethodResult, Timer, model_device
from .recon_blocks import Block, make_blocks, sequential_units
from .recon_cache import ActivationStore, CachePool, fill_store


@dataclass
class ReconConfig:
    """Options of a reconstruction run (see the module docstring for the maths)."""

    granularity: str = "block"          # layer | block | network
    loss_every_layer: bool = False      # loss after every layer inside a block (always on for network)
    iters: int = 500                    # Adam iterations per block
    batch_size: int = 32
    p_norm: float = 2.0
    loss_per_position: bool = False     # average the loss over positions (reference form) instead of summing
    learn_rounding: bool = True         # AdaRound rounding variables
    learn_act_step: bool = True         # activation steps s_x
    learn_weight_step: bool = False     # decoupled dequant steps s'_w (DOMR)
    lr_rounding: float = 1e-3
    lr_act_step: float = 1e-3           # relative to the step's mean
    lr_weight_step: float = 1e-3        # relative to the step's mean
    round_weight: float = 0.01          # λ
    warmup: float = 0.2                 # fraction of iterations without the rounding regulariser
    beta_start: float = 20.0
    beta_end: float = 2.0
    drop_prob: float = 0.0              # QDrop's p
    seed: int = 0
    eval_samples: int = 256             # samples for the before/after error in the report
    memory_limit_mb: float = 1024.0     # in-memory cache budget; beyond it caches spill to files
    work_dir: str | None = None         # resume state (and spilled caches) go here
    resume: bool = False
    checkpoint_every: int = 0           # save optimiser state every N iterations inside a block (0: off)

    def __post_init__(self):
        if self.iters < 0 or self.batch_size <= 0 or not 0 <= self.drop_prob < 1 or self.p_norm <= 0:
            raise ConfigError("reconstruction needs iters ≥ 0, batch_size > 0, 0 ≤ drop_prob < 1, p_norm > 0")
        if self.resume and not self.work_dir:
            raise ConfigError("resume=True needs a work_dir")

    @classmethod
    def from_options(cls, options: dict) -> ReconConfig:
        reject_unknown_keys(options, {f.name for f in fields(cls)}, "reconstruction option(s)")
        return cls(**options)

    def result_fields(self) -> dict:
        """The fields that change the result (not where state goes or how memory is used)."""
        d = asdict(self)
        for k in ("work_dir", "resume", "checkpoint_every", "memory_limit_mb", "eval_samples"):
            d.pop(k)
        return d


def lp_loss(pred: torch.Tensor, target: torch.Tensor, p: float, per_position: bool = False) -> torch.Tensor:
    """E_batch Σ_elements |pred − target|^p, or with ``per_position`` E_batch E_positions Σ_channels (the
    reference BRECQ/QDrop form: H·W times smaller on an H×W map). A quantized output with more channels than
    the FP one (OMR's migrated copies, appended after the original channels) is compared on its first
    channels."""
    d = pred[:, :target.shape[1]] - target
    positions = d[0, 0].numel() if per_position and d.dim() > 2 else 1
    return (d.square() if p == 2 else d.abs().pow(p)).sum() / (d.shape[0] * positions)


def mix_inputs(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """QDrop's block input: per element the FP value with probability p, else the quantized one (on the
    channels both have; OMR copies present only in ``x_q`` stay quantized)."""
    head = x_q[:, :x_fp.shape[1]]
    head = select(drop_mask(head, p, gen), x_fp, head)
    return torch.cat([head, x_q[:, x_fp.shape[1]:]], 1) if x_q.shape[1] > x_fp.shape[1] else head


def beta_at(t: int, cfg: ReconConfig) -> float | None:
    """β of the rounding regulariser at iteration t, or None during the warm-up (regulariser off)."""
    start = int(cfg.warmup * cfg.iters)
    if t < start:
        return None
    rel = (t - start) / max(1, cfg.iters - start)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)


def cosine_factor(t: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * t / max(1, total)))


# ----------------------------------------------------------------------------------------------- parameters
@dataclass
class BlockParams:
    rounding: list[AdaRoundQuantizer]
    steps: list[nn.Parameter]
    groups: list[dict]
    named: list[tuple[str, nn.Parameter]]


def prepare_block(layers: list[nn.Module], cfg: ReconConfig) -> BlockParams:
    """Attach AdaRound quantizers and switch on gradients for what ``cfg`` learns (off for the layers' own W and
    b); one Adam group per (kind, layer) for steps, one group for all rounding variables."""
    rounding, steps, groups, named = [], [], [], []
    for layer in layers:
        for p in layer.parameters(recurse=False):
            p.requires_grad_(False)  # W and b stay fixed: no gradient to compute for them
        wq, xq = layer.weight_quantizer, layer.input_quantizer
        if cfg.learn_rounding and wq.enabled:
            rounding.append(attach_adaround(layer))
            named.append((f"{layer.layer_name}.rounding", layer.weight_quantizer.alpha))
        wq = layer.weight_quantizer
        if cfg.learn_weight_step and wq.enabled and wq.dequant_scale is not None:
            steps.append(wq.dequant_scale)
            named.append((f"{layer.layer_name}.dequant_scale", wq.dequant_scale))
            groups.append(_step_group(wq.dequant_scale, cfg.lr_weight_step))
        if cfg.learn_act_step and xq.enabled and bool(xq.initialized):
            steps.append(xq.scale)
            named.append((f"{layer.layer_name}.input_scale", xq.scale))
            groups.append(_step_group(xq.scale, cfg.lr_act_step))
    for p in steps:
        p.requires_grad_(True)
    if rounding:
        groups.insert(0, {"params": [q.alpha for q in rounding], "lr": cfg.lr_rounding, "lr0": cfg.lr_rounding,
                          "anneal": False})
    return BlockParams(rounding, steps, groups, named)


def _step_group(p: nn.Parameter, rel_lr: float) -> dict:
    lr = rel_lr * float(p.detach().abs().mean())
    return {"params": [p], "lr": lr, "lr0": lr, "anneal": True}


def finish_block(layers: list[nn.Module]) -> None:
    """Hard rounding baked into the weights, gradients off."""
    for layer in layers:
        harden_layer(layer)
        for p in layer.parameters():
            p.requires_grad_(False)
        for q in (layer.weight_quantizer, layer.input_quantizer):
            for p in q.parameters():
                p.requires_grad_(False)


def set_drop(layers: list[nn.Module], p: float, gen: torch.Generator | None) -> None:
    """QDrop: each activation quantizer of ``layers`` returns its input unquantized with probability p per
    element (masks drawn from ``gen`` in forward order); p = 0 switches it off."""
    for layer in layers:
        layer.input_quantizer.drop_prob, layer.input_quantizer.drop_gen = p, gen


# ---------------------------------------------------------------------------------------------- resume state
class ReconState:
    """Atomically saved per-block state in ``work_dir`` (``meta.json`` holds the run's fingerprint)."""

    def __init__(self, work_dir: str | Path, fingerprint: str, resume: bool, device: torch.device):
        self.dir = Path(work_dir)
        self.device = device
        meta = self.dir / "meta.json"
        if meta.is_file():
            old = json.loads(meta.read_text()).get("fingerprint")
            if resume and old != fingerprint:
                raise ConfigError(f"{self.dir} holds the state of a different run (model, calibration or options "
                                  "differ): use another work_dir or resume=False")
            if not resume:
                for f in [*self.dir.glob("block_*.pt"), meta]:
                    f.unlink()
        atomic_write_json(meta, {"fingerprint": fingerprint})

    def _path(self, k: int, partial: bool = False) -> Path:
        return self.dir / f"block_{k:03d}{'.partial' if partial else ''}.pt"

    def save(self, k: int, obj: dict, partial: bool = False) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(self._path(k, partial), buf.getvalue())
        if not partial and self._path(k, True).exists():
            self._path(k, True).unlink()

    def load(self, k: int, partial: bool = False) -> dict | None:
        p = self._path(k, partial)
        return torch.load(p, map_location=self.device, weights_only=True) if p.is_file() else None


def layer_tensors(layers: list[nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{layer.layer_name}/{k}": v.detach().clone() for layer in layers for k, v in layer.state_dict().items()}


@torch.no_grad()
def load_layer_tensors(layers: list[nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    for layer in layers:
        prefix = f"{layer.layer_name}/"
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if "weight_quantizer.dequant_scale" in sd and layer.weight_quantizer.dequant_scale is None:
            layer.weight_quantizer.decouple()
        layer.load_state_dict(sd, strict=True)


def fingerprint(qmodel: nn.Module, calib: torch.Tensor, cfg: ReconConfig, tag: str) -> str:
    """sha256 of the options, the starting model's tensors and the calibration images."""
    h = hashlib.sha256(json.dumps([tag, cfg.result_fields()], sort_keys=True).encode())
    for k, v in sorted(qmodel.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(calib.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- one block
@dataclass
class BlockData:
    fp_in: ActivationStore
    q_in: ActivationStore
    targets: list[ActivationStore]


@torch.no_grad()
def block_error(block: Block, units: list[nn.Module], data: BlockData, cfg: ReconConfig) -> float:
    """Σ_j E‖x̂_j − x_j‖_p^p on the first ``eval_samples`` samples (quantized input, no drop)."""
    n = min(cfg.eval_samples, len(data.q_in))
    total = 0.0
    for s in range(0, n, cfg.batch_size):
        sl = slice(s, min(n, s + cfg.batch_size))
        outs = block.run(units, data.q_in.read(sl))
        total += sum(float(lp_loss(o, t.read(sl), cfg.p_norm, cfg.loss_per_position)) * (sl.stop - sl.start)
                     for o, t in zip(outs, data.targets))
    return total / max(1, n)


def _generators(cfg: ReconConfig, k: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    seed = cfg.seed * 1_000_003 + k
    return torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1)


def optimise_block(block: Block, units: list[nn.Module], data: BlockData, cfg: ReconConfig,
                   state: ReconState | None) -> dict:
    """Run the Adam iterations of one block (continuing a saved partial run if there is one)."""
    layers = block.layers(units)
    params = prepare_block(layers, cfg)
    device = data.q_in.device
    idx_gen, mask_gen = _generators(cfg, block.index, device)
    if not params.groups or cfg.iters == 0:
        return {"iters": 0}
    opt = torch.optim.Adam(params.groups)
    start = 0
    partial = state.load(block.index, partial=True) if state is not None else None
    if partial is not None:
        with torch.no_grad():
            for name, p in params.named:
                p.copy_(partial["params"][name])
        opt.load_state_dict(partial["optimizer"])
        idx_gen.set_state(partial["idx_gen"].cpu())
        mask_gen.set_state(partial["mask_gen"].cpu())
        start = int(partial["t"])
    set_drop(layers, cfg.drop_prob, mask_gen)
    n = len(data.q_in)
    try:
        for t in bar(range(start, cfg.iters), desc=f"reconstruct block {block.index}"):
            if state is not None and cfg.checkpoint_every and t > start and t % cfg.checkpoint_every == 0:
                state.save(block.index, {"t": torch.tensor(t), "params": dict(params.named),
                                         "optimizer": opt.state_dict(), "idx_gen": idx_gen.get_state(),
                                         "mask_gen": mask_gen.get_state()}, partial=True)
            for g in opt.param_groups:
                g["lr"] = g["lr0"] * (cosine_factor(t, cfg.iters) if g["anneal"] else 1.0)
            idx = torch.randperm(n, generator=idx_gen)[:cfg.batch_size]
            x = data.q_in.read(idx)
            if cfg.drop_prob > 0:
                x = mix_inputs(x, data.fp_in.read(idx), cfg.drop_prob, mask_gen)
            outs = block.run(units, x)
            loss = sum(lp_loss(o, tg.read(idx), cfg.p_norm, cfg.loss_per_position)
                       for o, tg in zip(outs, data.targets))
            beta = beta_at(t, cfg)
            if beta is not None and params.rounding:
                loss = loss + cfg.round_weight * sum(q.regularizer(beta) for q in params.rounding)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p in params.steps:
                    p.clamp_(min=1e-8)
    finally:
        set_drop(layers, 0.0, None)
    return {"iters": cfg.iters - start, "resumed_at": start}


# ------------------------------------------------------------------------------------------------ driver
def fp_reference(qmodel: nn.Module) -> nn.Module:
    """A copy of ``qmodel`` with quantization off: the FP targets. Take it before any transform that is
    exact only under quantization (OMR's copies double-count outliers in float)."""
    import copy

    fp = copy.deepcopy(qmodel)
    set_quant_state(fp, weight=False, act=False)
    for p in fp.parameters():
        p.requires_grad_(False)
    return fp


def check_chain(model: nn.Module, units: list[nn.Module], x: torch.Tensor) -> None:
    """The units compose to the model's forward up to its logits (a softmax head is not reconstructed)."""
    with torch.no_grad():
        y = x
        for u in units:
            y = u(y)
        if not torch.allclose(y, ModelGraph(model).logits_module()(x), rtol=1e-4, atol=1e-5):
            raise ConfigError(f"{type(model).__name__}: its units do not compose to its forward pass; "
                              "block reconstruction needs a sequential-style model")


def _block_output(block: Block, units: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    return block.run(units, x)[-1:]


def reconstruct(qmodel: nn.Module, calib: torch.Tensor, cfg: ReconConfig, tag: str = "recon",
                fp_model: nn.Module | None = None, on_block_done: Callable[[int], None] | None = None) -> dict:
    """Reconstruct ``qmodel`` (calibrated, quantizers set up) block by block against ``fp_model`` (default:
    ``qmodel`` with quantization off; pass the pre-OMR model after OMR). Returns ``{"blocks": [...],
    "cache": {...}}``; ``on_block_done(k)`` is called after block k is finished and saved (a test hook)."""
    device = model_device(qmodel)
    fp_model = fp_model if fp_model is not None else fp_reference(qmodel)
    q_units, fp_units = sequential_units(qmodel), sequential_units(fp_model)
    probe = calib[:2].to(device)
    check_chain(qmodel, q_units, probe)
    check_chain(fp_model, fp_units, probe)
    blocks = make_blocks(q_units, cfg.granularity, cfg.loss_every_layer)
    state = None
    if cfg.work_dir:
        state = ReconState(cfg.work_dir, fingerprint(qmodel, calib, cfg, tag), cfg.resume, device)
    pool = CachePool(int(cfg.memory_limit_mb * 2**20), device,
                     Path(cfg.work_dir) / "cache" if cfg.work_dir else None)
    fp_in = q_in = ActivationStore.wrap(calib.contiguous(memory_format=torch.channels_last)
                                        if calib.dim() == 4 else calib, device)
    report = []
    try:
        for block in blocks:
            t0 = time.perf_counter()
            targets = fill_store(pool, partial(block.run, fp_units), fp_in, 128)
            data = BlockData(fp_in, q_in, targets)
            layers = block.layers(q_units)
            before = block_error(block, q_units, data, cfg)
            saved = state.load(block.index) if state is not None else None
            if saved is not None:
                load_layer_tensors(layers, saved)
                info = {"iters": 0, "loaded": True}
            else:
                info = optimise_block(block, q_units, data, cfg, state)
                finish_block(layers)
                if state is not None:
                    state.save(block.index, layer_tensors(layers))
            after = block_error(block, q_units, data, cfg)
            next_q = fill_store(pool, partial(_block_output, block, q_units), q_in, 128)[0]
            for s in (fp_in, q_in, *targets[:-1]):
                pool.release(s)
            fp_in, q_in = targets[-1], next_q
            report.append({"block": block.index, "layers": [m.layer_name for m in layers],
                           "error_before": before, "error_after": after,
                           "seconds": time.perf_counter() - t0, **info})
            if on_block_done is not None:
                on_block_done(block.index)
    finally:
        spilled = pool.spilled_bytes
        pool.close()
    return {"blocks": report, "cache": {"spilled_mb": spilled / 2**20, "memory_limit_mb": cfg.memory_limit_mb}}


def run_method(name: str, model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, cfg: ReconConfig,
               prepare: Callable[[nn.Module], dict] | None = None) -> MethodResult:
    """quantize_model → calibrate → ``prepare(qmodel)`` (extra transforms such as OMR; returns report
    entries) → :func:`reconstruct` against the FP model as it was before ``prepare``. The report holds the
    options, per-block errors and the wall time."""
    with Timer() as t:
        qmodel = quantize_model(model, qcfg)
        calibrate(qmodel, calib)
        fp_model = fp_reference(qmodel)
        extra = prepare(qmodel) if prepare is not None else {}
        recon = reconstruct(qmodel, calib, cfg, tag=name, fp_model=fp_model)
    return MethodResult(qmodel, {"method": name, "seconds": t.seconds, "options": cfg.result_fields(),
                                 **extra, **recon})
