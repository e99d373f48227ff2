"""cardforge card stage: the model card compiled from one pipeline invocation's MLflow runs (stage.run)."""
