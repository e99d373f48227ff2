"""cardforge serve stage."""
