"""Checkpoints: safetensors (preferred) or ``torch.load(weights_only=True)``, with a JSON manifest beside them.

A manifest ``<stem>.json`` names the architecture, width and normalisation, so ``load_model(path)`` can build
and fill the right model with no other information. Nothing is ever unpickled without ``weights_only=True``.

Checked on load, each failure one :class:`~qmap.errors.CheckpointError` line: the manifest is a JSON object
(at most 1 MiB) whose ``arch`` is a registry model, ``width`` a positive number, ``num_classes`` a positive
integer, ``normalize_mean``/``normalize_std`` three finite numbers (std > 0); its ``sha256``, when present,
equals the checkpoint file's; every tensor matches the model's keys and shapes and is finite; every
BatchNorm has ``running_var >= 0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, QmapError
from ..io import atomic_write_bytes, atomic_write_text, file_problem
from .registry import build_model, get_entry


@dataclass
class Manifest:
    arch: str
    width: float = 1.0
    num_classes: int = 10
    normalize_mean: tuple[float, ...] = ()
    normalize_std: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint manifest") -> Manifest:
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if not isinstance(d.get("arch"), str):
            raise CheckpointError(f"{source}: 'arch' must name a model (a string), got {d.get('arch')!r}")
        try:
            get_entry(d["arch"])
        except QmapError as e:
            raise CheckpointError(f"{source}: {e}") from None
        width, classes = d.get("width", 1.0), d.get("num_classes", 10)
        if not _number(width) or not 0 < width <= 16:
            raise CheckpointError(f"{source}: 'width' must be a number in (0, 16], got {width!r}")
        if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= 100_000:
            raise CheckpointError(f"{source}: 'num_classes' must be a positive integer, got {classes!r}")
        mean, std = d.get("normalize_mean", []), d.get("normalize_std", [])
        for key, values in (("normalize_mean", mean), ("normalize_std", std)):
            if not isinstance(values, list) or values and (len(values) != 3 or not all(map(_number, values))):
                raise CheckpointError(f"{source}: '{key}' must be 3 finite numbers (one per RGB channel), "
                                      f"got {str(values)[:60]}")
        if any(v <= 0 for v in std):
            raise CheckpointError(f"{source}: 'normalize_std' must be > 0 for every channel, got {std}")
        sha = d.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise CheckpointError(f"{source}: 'sha256' must be 64 lowercase hex digits, got {str(sha)[:70]!r}")
        known = {"arch", "width", "num_classes", "normalize_mean", "normalize_std"}
        return cls(arch=d["arch"], width=float(width), num_classes=classes, normalize_mean=tuple(mean),
                   normalize_std=tuple(std), extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        return {"arch": self.arch, "width": self.width, "num_classes": self.num_classes,
                "normalize_mean": list(self.normalize_mean), "normalize_std": list(self.normalize_std), **self.extra}

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        entry = get_entry(self.arch)
        return (self.normalize_mean or entry.mean), (self.normalize_std or entry.std)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def manifest_path(ckpt: str | Path) -> Path:
    p = Path(ckpt)
    return p.with_suffix(".json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file, or a torch file with ``weights_only=True`` (never full pickle)."""
    p = Path(path)
    if problem := file_problem(p):
        raise CheckpointError(f"checkpoint {p}: {problem}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"cannot read safetensors checkpoint {p}: {e}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a refused or corrupt pickle
        raise CheckpointError(f"cannot read checkpoint {p} with weights_only=True (refused or corrupt): "
                              f"{str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {p} does not hold a state_dict of tensors")
    return obj


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model``; on any missing/unexpected key or shape mismatch, name the offenders."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source} does not match the model — " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} holds NaN/Inf values in: {', '.join(bad[:5])}")
    negative = [k for k, v in state.items() if k.endswith("running_var") and (v < 0).any()]
    if negative:
        raise CheckpointError(f"{source}: BatchNorm running_var must be >= 0, negative in: {', '.join(negative[:5])}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


MAX_MANIFEST_BYTES = 1 << 20


def read_manifest(ckpt: str | Path, verify_sha256: bool = True) -> Manifest | None:
    """The checkpoint's manifest (None when there is none), checked; with ``verify_sha256`` its ``sha256``
    (when present) must equal the checkpoint file's."""
    mp = manifest_path(ckpt)
    if not mp.is_file():
        return None
    try:
        if mp.stat().st_size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"manifest {mp} is larger than 1 MiB")
        d = json.loads(mp.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"manifest {mp} is not valid JSON: {' '.join(str(e).split())[:120]}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read manifest {mp}: {e.strerror}") from None
    man = Manifest.from_dict(d, source=f"manifest {mp}")
    sha = man.extra.get("sha256")
    if verify_sha256 and sha is not None and Path(ckpt).is_file() and (got := sha256_file(ckpt)) != sha:
        raise CheckpointError(f"checkpoint {ckpt} does not match its manifest: sha256 {got[:16]}… vs "
                              f"{sha[:16]}… in {mp.name} (file replaced or corrupt)")
    return man


def load_model(ckpt: str | Path, arch: str | None = None, width: float | None = None, num_classes: int | None = None,
               mean: list[float] | None = None, std: list[float] | None = None) -> tuple[nn.Module, Manifest]:
    """Build the model described by the checkpoint's manifest and load its weights. Without a manifest,
    ``arch`` (a registry name or ``package.module:factory``) says what to build; ``width``, ``num_classes`` and
    the normalisation ``mean``/``std`` override the manifest's (or the architecture's defaults)."""
    if problem := file_problem(ckpt):
        raise CheckpointError(f"checkpoint {ckpt}: {problem}")
    man = read_manifest(ckpt)
    if man is None:
        if arch is None:
            raise CheckpointError(f"no manifest {manifest_path(ckpt)} beside the checkpoint: name the model "
                                  "(a registry name or package.module:factory)")
        man = Manifest(arch=arch, width=width or 1.0)
    elif arch is not None and arch != man.arch:
        raise CheckpointError(f"checkpoint {ckpt} is a {man.arch!r} (manifest) but {arch!r} was asked for")
    for key, value in (("width", width), ("num_classes", num_classes)):
        if value is not None:
            setattr(man, key, value)
    if mean is not None:
        man.normalize_mean = tuple(mean)
    if std is not None:
        man.normalize_std = tuple(std)
    model = build_model(man.arch, width=man.width, num_classes=man.num_classes)
    load_state_dict_strict(model, read_state_dict(ckpt), source=f"checkpoint {ckpt}")
    model.eval()
    return model, man


def save_checkpoint(model: nn.Module, path: str | Path, manifest: Manifest, dtype: torch.dtype | None = None) -> None:
    """Write ``model``'s state_dict as safetensors (atomically) and its manifest JSON beside it."""
    from safetensors.torch import save

    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    p = Path(path)
    atomic_write_bytes(p, save(state))
    man = manifest.to_dict() | {"sha256": sha256_file(p)}
    atomic_write_text(manifest_path(p), json.dumps(man, indent=1) + "\n")
