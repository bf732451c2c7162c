"""qmap: post-training quantization of CNNs to 2-8 bits, mapped onto a systolic-array accelerator.

Data flow (one sub-package per stage): data -> models -> nn (fusion, graph helpers) -> quant (primitives)
-> methods (transforms on a model) -> hw (export, golden model, RTL) -> report / cli.

The Python API in one namespace (each imported on first use, so ``import qmap`` stays light):

- :func:`quantize` (``qmap.api``): any ``nn.Module`` + calibration images → fake-quant model and report;
- :func:`save_quantized` / :func:`load_quantized` (``qmap.export.quantized``): the quantized-model file;
- :func:`to_integer_model` (``qmap.quant.integer``): the bit-exact integer model of a fake-quant model;
- :func:`export_onnx` / :func:`verify_onnx` (``qmap.export.onnx``): the ONNX file, checked in onnxruntime;
- :class:`QuantConfig` (``qmap.quant``): bit widths and grids as one object.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"quantize": "api", "save_quantized": "export.quantized", "load_quantized": "export.quantized",
         "to_integer_model": "quant.integer", "export_onnx": "export.onnx", "verify_onnx": "export.onnx",
         "QuantConfig": "quant"}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'qmap' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
