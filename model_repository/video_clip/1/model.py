"""Triton python backend: a thin shell around mediafm/media (see mediafm/media/served_encoders.py)."""

from mediafm.media.served_encoders import EncoderModel as TritonPythonModel  # noqa: F401
