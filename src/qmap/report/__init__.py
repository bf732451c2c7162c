"""Results files, provenance, plots and the HTML/Markdown report."""
