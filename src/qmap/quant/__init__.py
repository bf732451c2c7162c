"""Quantization primitives: spec, rounding, observers, the fake-quant Quantizer, quantized layers/models."""

from .qmodel import QuantConfig, calibrate, quantize_model, set_quant_state
from .qmodules import QUANT_MODULES, QuantConv2d, QuantLinear, quant_layers
from .quantizer import Quantizer
from .spec import QuantSpec

__all__ = ["QUANT_MODULES", "QuantConfig", "QuantConv2d", "QuantLinear", "QuantSpec", "Quantizer", "calibrate",
           "quant_layers", "quantize_model", "set_quant_state"]
