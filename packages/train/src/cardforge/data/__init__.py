"""cardforge data stage."""
