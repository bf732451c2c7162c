"""qmap: post-training quantization of CNNs to 2-8 bits, mapped onto a systolic-array accelerator.

Data flow (one sub-package per stage): data -> models -> nn (fusion, graph helpers) -> quant (primitives)
-> methods (transforms on a model) -> hw (export, golden model, RTL) -> report / cli.
"""

__version__ = "0.1.0"


def quantize(*args, **kwargs):
    """See :func:`qmap.api.quantize` (imported lazily so ``import qmap`` stays light)."""
    from .api import quantize as _quantize

    return _quantize(*args, **kwargs)


def load_quantized(path, model_fn=None):
    """See :func:`qmap.export.quantized.load_quantized`: a saved quantized model (fake-quant + integer) back."""
    from .export.quantized import load_quantized as _load

    return _load(path, model_fn)
