"""cardforge card stage."""
