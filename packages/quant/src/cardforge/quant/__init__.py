"""cardforge quant stage."""
