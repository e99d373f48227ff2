"""cardforge eval stage."""
