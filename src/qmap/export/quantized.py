"""The quantized-model file (``quantized_model.safetensors``): a finished fake-quant model that loads back.

Format ``qmap.quantized/1`` (documented in docs/quantized_model.md): one safetensors file, no pickle.

- tensors: the model's whole ``state_dict`` under its own names (float weights and biases as the method left
  them, every quantizer's ``scale`` = s, ``dequant_scale`` = s' when decoupled, ``zero_point``, OMR shift
  indices, ...) plus, per quantized layer, ``qint:<layer>`` = the integer weights ``to_int(W)`` (int8), the
  codes the integer model and the hardware use;
- metadata: one key ``qmap`` holding a JSON header: ``format``, ``model`` (registry ``arch``/``width``/
  ``num_classes``, or ``factory`` for a user model), ``normalization`` (mean/std of the input), ``quant``
  (the QuantConfig), ``method`` (name and options), ``modules`` (the module tree of
  :mod:`qmap.export.module_tree`, which records OMR/OCS channel counts and inserted modules) and ``layers``
  (per quantized layer: type, weight/input QuantSpec, weight shape, step shapes).

:func:`load_quantized` rebuilds the root model (registry, or ``model_fn`` for a factory), replaces its
children from the module tree, loads the tensors strictly and checks that the weights still round to the
stored integers. The fake-quant model it returns computes exactly what the saved one computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import coerce
from ..errors import ConfigError, QmapError
from ..io import atomic_write_bytes, read_run_results
from ..nn import require_module
from ..quant import freeze, quant_layers
from .module_tree import build_children, module_tree

FORMAT = "qmap.quantized/1"
INT_PREFIX = "qint:"


@torch.no_grad()
def quantized_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors to store, per-layer header rows): the state dict plus the integer weights of every layer."""
    tensors = {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}
    layers: dict[str, dict] = {}
    for name, m in quant_layers(qmodel):
        wq, iq = m.weight_quantizer, m.input_quantizer
        tensors[f"{INT_PREFIX}{name}"] = wq.to_int(m.weight).to(torch.int8).cpu()
        layers[name] = {"type": type(m).__name__, "weight_spec": asdict(wq.spec), "input_spec": asdict(iq.spec),
                        "shape": list(m.weight.shape), "w_steps": wq.step.numel(),
                        "w_zero_point": bool(wq.zero_point.any()), "decoupled": wq.dequant_scale is not None}
    return {k: v.clone().contiguous() for k, v in tensors.items()}, layers


def save_quantized(qmodel: nn.Module, path: str | Path, *, arch: str | None = None, width: float | None = None,
                   num_classes: int | None = None, factory: str | None = None,
                   mean: tuple[float, ...] = (), std: tuple[float, ...] = (), quant: dict | None = None,
                   method: dict | None = None, input_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``qmodel`` to ``path`` (safetensors + JSON header, atomically).

    ``arch``/``width``/``num_classes`` name the registry model whose ``forward`` the file's modules plug into
    (or ``factory``, a free-text name of the user function :func:`load_quantized` is then given as
    ``model_fn``); ``mean``/``std`` the input normalisation; ``input_shape`` (C, H, W) one image;
    ``quant``/``method`` the run's settings."""
    from safetensors.torch import save

    require_module(qmodel, "qmodel")
    if not quant_layers(qmodel):
        raise ConfigError("save_quantized: the model has no quantized layer (quantize it first: qmap.quantize)")
    input_shape = check_input_shape(input_shape)
    mean, std = tuple(coerce(mean, tuple[float, ...], "mean")), tuple(coerce(std, tuple[float, ...], "std"))
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std must have one value per input channel each, std > 0; got {mean} and {std}")
    tensors, layers = quantized_tensors(qmodel)
    header = {"format": FORMAT,
              "model": {"arch": arch, "width": width, "num_classes": num_classes, "factory": factory},
              "normalization": {"mean": list(mean), "std": list(std)},
              "input_shape": list(input_shape) if input_shape is not None else None,
              "quant": quant or {}, "method": method or {}, "modules": module_tree(qmodel), "layers": layers}
    atomic_write_bytes(path, save(tensors, metadata={"qmap": json.dumps(header)}))
    return Path(path)


def check_input_shape(shape) -> tuple[int, int, int] | None:
    """One image's (C, H, W) as the run config's ``model.input_shape`` check takes it (each 1..4096), or None."""
    return None if shape is None else coerce(shape, tuple[int, int, int], "model.input_shape")


@dataclass
class QuantizedModel:
    """A loaded quantized-model file: the fake-quant ``model`` (eval mode, CPU) and the file's ``header``."""

    model: nn.Module
    header: dict
    path: Path

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = self.header["normalization"]
        return tuple(n["mean"]), tuple(n["std"])

    def integer_model(self, acc_bits: int = 32):
        """The integer-only model (:func:`qmap.quant.integer.to_integer_model`) of the fake-quant model."""
        from ..quant.integer import to_integer_model

        shape = self.header.get("input_shape")
        return to_integer_model(self.model, acc_bits=acc_bits, input_shape=tuple(shape) if shape else None)


def read_header(path: str | Path) -> dict:
    """The JSON header of a quantized-model file (a QmapError when it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, Exception) as e:  # safetensors raises its own error types for a damaged file
        raise QmapError(f"cannot read quantized model {path}: {e}") from None
    if "qmap" not in meta:
        raise QmapError(f"{path} is not a qmap quantized-model file (no 'qmap' header; written by an older qmap?)")
    try:
        header = json.loads(meta["qmap"])
    except json.JSONDecodeError as e:
        raise QmapError(f"{path}: its 'qmap' header is not JSON ({e})") from None
    if not isinstance(header, dict) or not all(isinstance(header.get(k), dict) for k in ("model", "modules")):
        raise QmapError(f"{path}: its 'qmap' header is damaged (expected an object with 'model' and 'modules')")
    if header.get("format") != FORMAT:
        raise QmapError(f"{path}: format {header.get('format')!r} is not supported (this qmap reads {FORMAT})")
    return header


@torch.no_grad()
def load_quantized(path: str | Path, model_fn: Callable[[], nn.Module] | None = None) -> QuantizedModel:
    """Load a quantized-model file; ``model_fn()`` builds the float root model when the file was saved from a
    user factory (default: the registry model the header names). A damaged file is one :class:`QmapError`."""
    path = Path(path)
    header = read_header(path)
    try:
        shape = check_input_shape(header.get("input_shape"))
    except ConfigError as e:
        raise QmapError(f"{path}: damaged quantized-model file ({e})") from None
    root = model_fn() if model_fn is not None else None  # (the user's own code: its errors are its own)
    try:  # a damaged header's model spec, module tree or tensors: one line, whatever part of it broke
        model = freeze(_rebuild(path, header, root))
        if shape is not None:  # one zero image through it: damage the tree checks missed shows here, not later
            param = next(model.parameters())
            model(torch.zeros(1, *shape, dtype=param.dtype, device=param.device))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise QmapError(f"{path}: damaged quantized-model file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    return QuantizedModel(model, header, path)


def _rebuild(path: Path, header: dict, root: nn.Module | None) -> nn.Module:
    """The model of a quantized-model file: its float root (``root``, else the registry model the header names),
    the header's module tree, the stored tensors."""
    from safetensors.torch import load_file

    from ..models.registry import build_model

    spec = header["model"]
    if root is None and not spec.get("arch"):
        raise QmapError(f"{path} was saved from a user model ({spec.get('factory') or 'no factory name'}): "
                        f"pass model_fn= to build its float architecture")
    if root is None:
        root = build_model(spec["arch"], width=spec["width"], num_classes=spec["num_classes"])
    model = build_children(root, header["modules"])
    tensors = load_file(str(path))
    ints = {k[len(INT_PREFIX):]: v for k, v in tensors.items() if k.startswith(INT_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(INT_PREFIX)}
    # assign: each tensor in its saved float type (a float64 model's weights stay float64), not cast to the module's
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise QmapError(f"{path}: tensors do not match the module tree (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]})")
    for name, m in quant_layers(model):
        m.register_buffer("fp_weight", m.weight.detach().clone(), persistent=False)
        if name not in ints or not torch.equal(m.weight_quantizer.to_int(m.weight).to(torch.int8), ints[name]):
            raise QmapError(f"{path}: layer {name}: the weights do not round to the stored integer weights")
    return model


def load_run(run_dir: str | Path) -> tuple[dict, QuantizedModel]:
    """(``results.json`` of a finished ``qmap run`` folder, its loaded quantized model)."""
    run_dir = Path(run_dir)
    results = read_run_results(run_dir)
    name = results.get("files", {}).get("quantized_model")
    if not name:
        raise QmapError(f"{run_dir}: the run saved no quantized model (export.quantized_model was off, or the "
                        f"run did not reach the save stage)")
    return results, load_quantized(run_dir / name)
