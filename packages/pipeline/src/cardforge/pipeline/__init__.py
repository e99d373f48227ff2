"""The whole chain under one MLflow parent run: `make reproduce` / `python -m cardforge.pipeline`."""
