"""qmap.quant."""
