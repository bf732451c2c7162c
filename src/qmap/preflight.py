"""Everything about a run that can be checked before any data is loaded or any file is written.

:func:`preflight` re-validates the config's types and ranges (:mod:`qmap.config`), the method name and its
options (against the method's ``Options`` dataclass), the device, the data root, the checkpoint (its manifest's
sha256, fields, BN statistics and normalisation; the model is built and filled, which is cheap), the layer
names the config mentions (``hardware.target_layers``, ``quant.skip``, ``quant.layer_bits``) against the
model's layers, the target layers' bit widths against the array's, the image indices against the test split,
an explicitly requested RTL simulator, and the output folder (:func:`qmap.runfolder.check_out_dir`).
Each failure is one :class:`~qmap.errors.QmapError` line naming the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import RunConfig, build_section, resolve_path
from .data import resolve_data_root
from .data.folders import IMAGE_SUFFIXES
from .errors import ConfigError, DataError
from .hw.mapping import geometry_issue
from .methods import method_options
from .models import load_model
from .models.checkpoint import manifest_path
from .nn import ModelGraph
from .quant.qmodules import numeric_padding
from .runfolder import check_inputs_outside, check_out_dir, config_fingerprint

# Images per split of CIFAR-10 (a smaller data root is caught again when the split loads, before any write).
SPLIT_SIZES = {"train": 50_000, "test": 10_000, "train_exact": 5 * 1017, "test_exact": 1017}


@dataclass
class Checked:
    """What the checks resolved, for the run to use: data root, checkpoint path, the loaded FP model and its
    manifest, and the config's fingerprint."""

    data_root: Path | None  # None: an image-folder run without a data root
    folder: Path | None  # the image-folder dataset, or None for CIFAR-10
    checkpoint: Path
    model: nn.Module
    manifest: object
    fingerprint: str


def check_method_options(name: str, options: dict) -> None:
    """``options`` must be fields of the method's ``Options`` dataclass, each of the declared type."""
    build_section(method_options(name), options, "method.options")


def check_device(name: str) -> None:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' requested but MPS is not available; use auto or cpu")


def check_forward(model: nn.Module, shape: tuple[int, ...], num_classes: int | None = None) -> None:
    """One forward pass of a zero image of ``shape`` (C, H, W): the model must run on it and return
    ``[1, classes]`` logits (at least ``num_classes`` of them, the dataset's classes) — else one line, before
    any data is loaded."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything; one line names it
        raise ConfigError(f"model: its forward fails on one {'x'.join(map(str, shape))} image (give the input "
                          f"shape it takes: --input-shape / model.input_shape): {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: forward must return [N, classes] logits, got {got}")
    if num_classes is not None and out.shape[1] < num_classes:
        raise ConfigError(f"model: {out.shape[1]} outputs but the dataset has {num_classes} classes "
                          f"(--num-classes / model.num_classes)")


def check_layers(cfg: RunConfig, model: nn.Module) -> None:
    """The layers the config names exist, by the model graph (which also refuses unsupported operations here,
    before any data): quantized layers in execution order, so 'first layer' is the one the image enters."""
    names = ModelGraph(model).layers
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    known = ", ".join(names)
    for key, mentioned in (("quant.skip", cfg.quant.skip), ("quant.layer_bits", list(cfg.quant.layer_bits)),
                           ("hardware.target_layers", cfg.hardware.target_layers if cfg.hardware.enabled else [])):
        for name in mentioned:
            if name not in names:
                raise ConfigError(f"{key}: the model has no layer {name!r}; layers: {known}")
    if not cfg.hardware.enabled:
        return
    spec = cfg.hardware.array
    if spec.dataflow != "ws":
        raise ConfigError(f"hardware.array.dataflow: {spec.dataflow!r} is not supported by qmap run, whose course-file "
                          f"export and target-layer check are weight-stationary; allowed: ws (the output-stationary "
                          f"core runs through qmap.hw.network.run_network and benchmarks/hw_dataflows.py)")
    for name in cfg.hardware.target_layers:
        if name not in convs:
            raise ConfigError(f"hardware.target_layers: {name} is not a conv layer; conv layers: "
                              f"{', '.join(n for n in names if n in convs)}")
        if names.index(name) == 0:
            raise ConfigError(f"hardware.target_layers: {name} is the first layer; its input is the normalised "
                              f"image (first-layer codes, kept on the host): pick a later conv layer")
        if name in cfg.quant.skip:
            raise ConfigError(f"hardware.target_layers: {name} is in quant.skip (left in float)")
        conv = model.get_submodule(name)
        if issue := geometry_issue(conv.stride, numeric_padding(conv), conv.dilation):
            raise ConfigError(f"hardware.target_layers: the array cannot run {name}: {issue}; pick another conv "
                              f"layer")
        w_bits, a_bits = cfg.quant.bits_for(name, names.index(name), len(names))
        if w_bits > spec.w_bits or a_bits > spec.a_bits:
            raise ConfigError(f"hardware.array: layer {name} is quantized to W{w_bits}A{a_bits} but the array "
                              f"takes {spec.w_bits}-bit weights and {spec.a_bits}-bit activations; raise "
                              f"hardware.array.w_bits/a_bits or set quant.layer_bits for {name}")


def split_images(folder: Path, split: str) -> int | None:
    """Image files under an image-folder tree's ``split`` (``test`` falls back to ``val``); None for a tar."""
    if folder.is_file():
        return None
    for name in ((split, "val") if split == "test" else (split,)):
        if (folder / name).is_dir():
            return sum(1 for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return 0


def optional_data_root(arg: str | None) -> Path | None:
    """The data root when one is set (an image-folder run needs it only for ``{data}/`` paths)."""
    try:
        return resolve_data_root(arg)
    except DataError:
        if arg is not None:
            raise
        return None


def check_folder(cfg: RunConfig, data_root: Path) -> Path | None:
    """The image-folder dataset: it exists and has the train split and the test (or val) split."""
    if cfg.data.folder is None:
        return None
    folder = resolve_path(cfg.data.folder, data_root)
    if not folder.exists():
        raise ConfigError(f"data.folder: {folder} does not exist")
    if cfg.data.test_split not in ("train", "test"):
        raise ConfigError(f"data.test_split: {cfg.data.test_split!r} is a CIFAR-10 split; an image folder has "
                          "train and test (or val)")
    for split in ("train", cfg.data.test_split):
        if split_images(folder, split) == 0:
            want = "test/ or val/" if split == "test" else f"{split}/"
            raise ConfigError(f"data.folder: {folder} has no images under {want}<class>/ "
                              f"(expected ROOT/{{train,val|test}}/<class>/*.png|jpg)")
    return folder


def check_images(cfg: RunConfig, folder: Path | None) -> None:
    if not cfg.hardware.enabled:
        return
    size = SPLIT_SIZES[cfg.data.test_split] if folder is None else split_images(folder, cfg.data.test_split)
    if size is None:  # a tar: checked once the split has loaded, still before any write
        return
    if cfg.data.test_limit is not None:
        size = min(size, cfg.data.test_limit)
    for k in cfg.hardware.images:
        if not 0 <= k < size:
            raise ConfigError(f"hardware.images: image {k} is outside the test set; allowed: 0..{size - 1} "
                              f"({cfg.data.test_split}, data.test_limit={cfg.data.test_limit})")


def check_simulator(cfg: RunConfig) -> None:
    from .hw.sim import simulator_available

    rtl = cfg.hardware.rtl
    if cfg.hardware.enabled and cfg.hardware.target_layers and rtl in ("icarus", "verilator") \
            and not simulator_available(rtl):
        tool = {"icarus": "iverilog (apt install iverilog)", "verilator": "verilator (apt install verilator)"}[rtl]
        raise ConfigError(f"hardware.rtl: {rtl} requested but {tool} is not installed; use rtl: auto (run it "
                          f"when installed) or none")


def preflight(cfg: RunConfig, data: str | None, out: str | Path | None = None, overwrite: bool = False,
              resume: bool = False) -> Checked:
    """Check the whole run (see the module docstring); raises one :class:`~qmap.errors.QmapError` on the first
    problem. Reads the checkpoint; loads no dataset and writes nothing."""
    try:
        build_section(RunConfig, cfg.to_dict())
    except ConfigError as e:
        raise ConfigError(f"config: {e}") from None
    check_method_options(cfg.method.name, cfg.method.options)
    check_device(cfg.device)
    check_simulator(cfg)
    fingerprint = config_fingerprint(cfg)
    if out is not None:
        check_out_dir(out, fingerprint, overwrite=overwrite, resume=resume)
    data_root = resolve_data_root(data or cfg.data.root) if cfg.data.folder is None else optional_data_root(
        data or cfg.data.root)
    folder = check_folder(cfg, data_root)
    check_images(cfg, folder)
    ckpt = resolve_path(cfg.model.checkpoint, data_root)
    if out is not None and overwrite:
        check_inputs_outside(out, {"the checkpoint": ckpt, "its manifest": manifest_path(ckpt),
                                   "the data root": data_root, "the image folder": folder})
    m = cfg.model
    model, manifest = load_model(ckpt, m.arch, m.width, m.num_classes, m.mean, m.std)
    if m.input_shape or folder is None:  # else the folder's first image fixes it: checked once it has loaded
        check_forward(model, tuple(m.input_shape or (3, 32, 32)))
    check_layers(cfg, model)
    return Checked(data_root, folder, ckpt, model, manifest, fingerprint)
