"""qmap.methods."""
