"""Kept for MediaFM versions exported before mediafm/served_mediafm.py had its name: their
model.py reads `from mediafm.serving import TritonPythonModel`. New exports import it from there."""

from mediafm.served_mediafm import TritonPythonModel  # noqa: F401
