"""cardforge train stage."""
