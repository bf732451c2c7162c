"""Training from scratch on an :class:`~qmap.data.ImageDataset` (for the FP baselines quantization starts from).

Recipe: SGD with Nesterov momentum and weight decay; learning rate set every step, either one-cycle (cosine
rise from lr/25 to ``lr`` over the first ``warmup`` fraction of steps, then cosine decay to ~0) or cosine
annealing from ``lr`` to 0;
cross-entropy with optional label smoothing; augmentation = random crop of the image padded by ``pad``
(reflect or zero padding) + horizontal flip, done on uint8 tensors on the training device;
channels_last on every device (measured 1.3–1.45× faster than NCHW for ResNet-20, the MobileNet-style
net and the GELU CNN on the 2-core development CPU); bf16 autocast on CUDA.

Resumable: after every epoch the full state (model, optimizer, scheduler, epoch, RNG, config) is written
atomically to ``<out>.state.pt`` and read back with ``torch.load(weights_only=True)``. The result is
``<out>`` (safetensors) + ``<out stem>.json`` manifest with test accuracy, data checksums, git sha and seed.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import ImageDataset
from .errors import CheckpointError, ConfigError
from .evaluate import default_device, evaluate
from .io import atomic_write_bytes
from .models import Manifest, build_model, get_entry, save_checkpoint
from .report.provenance import git_sha
from .rules import OneOf, Range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1                # one-cycle peak / cosine start
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"     # "onecycle" | "cosine"
    warmup: float = 0.25           # one-cycle: fraction of steps spent rising to lr
    label_smoothing: float = 0.0
    pad: int = 4
    pad_mode: str = "reflect"      # "reflect" | "zero"
    seed: int = 0
    channels_last: bool = True
    amp: bool = True               # bf16 autocast, CUDA only

    def __post_init__(self) -> None:
        for name, rule in TRAIN_RULES.items():
            rule.check(getattr(self, name), name)


# What SGD, the schedulers and the augmentation accept (a negative lr would ascend the loss, warmup 0 or 1
# divides by zero in OneCycleLR, momentum 1 never forgets); one ConfigError line naming the setting otherwise.
TRAIN_RULES = {"epochs": Range(1, None), "batch_size": Range(1, None), "lr": Range(0, None, lo_open=True),
               "momentum": Range(0, 1, hi_open=True), "weight_decay": Range(0, None),
               "schedule": OneOf(("onecycle", "cosine")), "warmup": Range(0, 1, lo_open=True, hi_open=True),
               "label_smoothing": Range(0, 1, hi_open=True), "pad": Range(0, None),
               "pad_mode": OneOf(("reflect", "zero")), "seed": Range(0, 2**32 - 1)}


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices without repeating the edge (−1 → 1, size → size−2), as ``F.pad`` 'reflect'."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def random_crop_flip(images: torch.Tensor, pad: int, pad_mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random ``H×W`` crop of each uint8 NHWC image padded by ``pad`` pixels, then a horizontal flip with
    probability ½ — one gather, no padded copy. Random numbers come from ``gen`` (CPU), so runs replay."""
    n, h, w, _ = images.shape
    dy = torch.randint(-pad, pad + 1, (n, 1), generator=gen)
    dx = torch.randint(-pad, pad + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5
    rows = torch.arange(h) + dy
    cols = torch.arange(w) + dx
    cols = torch.where(flip, cols.flip(1), cols)
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    rows, cols, inside = (t.to(images.device) for t in (rows.clamp(0, h - 1), cols.clamp(0, w - 1), inside))
    out = images[torch.arange(n, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out * inside[..., None].to(out.dtype)  # zero padding; all ones for reflect


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=cfg.warmup, cycle_momentum=False)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def _accepts_channels_last(model: torch.nn.Module, train_set: ImageDataset, device: torch.device) -> bool:
    """Whether ``model``'s forward runs on channels_last input (a user's ``x.view(n, -1)`` does not); if not,
    say so and train in NCHW (the manifest then records ``channels_last: false``)."""
    h, w, c = train_set.images.shape[1:]
    probe = torch.zeros(2, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.no_grad():
            model.to(memory_format=torch.channels_last)(probe)
        return True
    except RuntimeError as e:
        log.warning("the model's forward does not take channels_last tensors (%s); training in NCHW",
                    str(e).splitlines()[0])
        return False
    finally:
        model.to(memory_format=torch.contiguous_format)


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


def _save_state(path: Path, **state) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, run_id: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or refused pickle
        raise CheckpointError(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    if state.get("run") != run_id:
        diff = sorted(k for k in run_id if state.get("run", {}).get(k) != run_id[k])
        raise ConfigError(f"cannot resume from {path}: it was written with different settings ({', '.join(diff)}); "
                          "use the same options or delete the state file")
    return state


def train(arch: str, width: float, train_set: ImageDataset, test_set: ImageDataset, cfg: TrainConfig, out: Path,
          resume: bool = False, device: str | torch.device | None = None, progress: bool = True,
          on_epoch_end: Callable[[dict], None] | None = None, save_dtype: torch.dtype | None = None,
          extra_tests: dict[str, ImageDataset] | None = None, manifest_extra: dict | None = None,
          normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> dict:
    """Train ``arch`` at ``width`` on ``train_set``; write ``out`` (+ manifest) and return the final metrics.

    ``on_epoch_end(metrics)`` is called after each epoch's state is saved (metrics: epoch, loss, train_top1,
    seconds). ``save_dtype`` (e.g. ``torch.float16``) is the dtype of the saved floating-point tensors;
    each ``extra_tests[name]`` is evaluated too and recorded as ``<name>_top1``; ``manifest_extra`` (e.g. the
    command line) is added to the manifest's ``train`` record; ``normalization`` = (mean, std) of the input (default:
    the architecture's).
    """
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    entry = get_entry(arch)
    norm_mean, norm_std = normalization or (entry.mean, entry.std)
    torch.manual_seed(cfg.seed)
    model = build_model(arch, width=width, num_classes=len(train_set.classes)).to(device)
    if cfg.channels_last and not _accepts_channels_last(model, train_set, device):
        cfg = replace(cfg, channels_last=False)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_id = {"arch": arch, "width": width, "data_checksum": train_set.checksum,
              "normalization": [list(norm_mean), list(norm_std)], **asdict(cfg)}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_set) // cfg.batch_size)
    sched = _scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch, history = 0, []
    if resume and state_path(out).is_file():
        state = _load_state(state_path(out), run_id)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        start_epoch, history = state["epoch"], list(state["history"])
    images = torch.from_numpy(train_set.images).to(device)
    labels = torch.from_numpy(train_set.labels).to(device)
    mean = torch.tensor(norm_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm_std, device=device).view(1, -1, 1, 1)
    use_amp = cfg.amp and device.type == "cuda"
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set), generator=gen)[: steps_per_epoch * cfg.batch_size]
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(order.split(cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, file=sys.stderr, leave=False, mininterval=0.1 if sys.stderr.isatty() else 60)
        for idx in bar:
            idx = idx.to(device)
            x = _normalise(random_crop_flip(images[idx], cfg.pad, cfg.pad_mode, gen), mean, std, cfg.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
                loss = F.cross_entropy(logits, labels[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == labels[idx]).sum()
        seen = steps_per_epoch * cfg.batch_size
        if not torch.isfinite(loss_sum):  # diverged: keep the last good state rather than save NaN weights
            raise ConfigError(f"training diverged in epoch {epoch + 1} (the loss is {float(loss_sum)}); "
                              f"lower --lr (now {cfg.lr:g}) and start again")
        metrics = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "train_top1": int(correct) / seen,
                   "seconds": round(time.perf_counter() - epoch_started, 3)}
        history.append(metrics)
        _save_state(state_path(out), model=model.state_dict(), optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(), rng=gen.get_state(), epoch=epoch + 1, history=history, run=run_id)
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}, train top-1 "
                  f"{100 * metrics['train_top1']:.2f} %", file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    wall = time.perf_counter() - started
    result = evaluate(model, test_set, norm_mean, norm_std, device=device, progress=progress)
    extra = {"test_top1": result["top1"], "test_data": test_set.source, "test_data_checksum": test_set.checksum}
    for name, data in (extra_tests or {}).items():
        extra |= {f"{name}_top1": evaluate(model, data, norm_mean, norm_std, device=device,
                                           progress=progress)["top1"],
                  f"{name}_data": data.source, f"{name}_data_checksum": data.checksum}
    extra["dtype"] = str(save_dtype or torch.float32).removeprefix("torch.")
    extra["train"] = {**asdict(cfg), **(manifest_extra or {}), "data": train_set.source,
                      "data_checksum": train_set.checksum, "n_train": len(train_set), "device": str(device),
                      "git_sha": git_sha(), "wall_seconds_this_run": round(wall, 3),
                      "wall_seconds_all_epochs": round(sum(h.get("seconds", 0.0) for h in history), 3),
                      "history": history}
    manifest = Manifest(arch=arch, width=width, num_classes=len(train_set.classes), normalize_mean=tuple(norm_mean),
                        normalize_std=tuple(norm_std), extra=extra)
    save_checkpoint(model.float(), out, manifest, dtype=save_dtype)
    return {"test_top1": result["top1"], "n_test": result["n"], "history": history, "checkpoint": str(out)}
