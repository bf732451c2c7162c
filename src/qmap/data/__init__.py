"""qmap.data."""
