"""Export of quantized models to interchange formats (ONNX with QuantizeLinear/DequantizeLinear)."""

from .onnx import export_onnx, verify_onnx

__all__ = ["export_onnx", "verify_onnx"]
