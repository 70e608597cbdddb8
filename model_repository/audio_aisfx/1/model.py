"""Triton python backend: a thin shell around mediafm/media (see mediafm/media/serving.py)."""

from mediafm.media.serving import EncoderModel as TritonPythonModel  # noqa: F401
