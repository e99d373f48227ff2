"""cardforge shared core: config schemas, MLflow tracking, atomic artifacts, embedded models."""

__version__ = "0.1.0"
