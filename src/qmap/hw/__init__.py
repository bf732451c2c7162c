"""qmap.hw."""
