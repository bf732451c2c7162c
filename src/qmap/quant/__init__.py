"""Quantization primitives: spec, rounding, observers, the fake-quant Quantizer, quantized layers/models, and the
integer-only model (:func:`to_integer_model`)."""

from .integer import IntegerModel, IntegerOutput, IntLayer, LayerTrace, to_integer_model
from .qmodel import QuantConfig, calibrate, float_mode, freeze, quantize_model, set_quant_state
from .qmodules import QUANT_MODULES, QuantConv2d, QuantLinear, quant_layers
from .quantizer import Quantizer
from .spec import QuantSpec

__all__ = ["QUANT_MODULES", "IntLayer", "IntegerModel", "IntegerOutput", "LayerTrace", "QuantConfig", "QuantConv2d",
           "QuantLinear", "QuantSpec", "Quantizer", "calibrate", "float_mode", "freeze", "quant_layers",
           "quantize_model", "set_quant_state", "to_integer_model"]
