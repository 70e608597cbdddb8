#!/usr/bin/env bash
# Installs everything the README's two commands need, on a fresh Debian 12
# machine with Python 3.11, Java 17 and Maven (our base image). Safe to rerun:
# each step is skipped when its result is already there.
#
#   system packages  ffmpeg, espeak-ng (test media), docker-compose (compose
#                    file validation), Java 17 + Maven if missing
#   .venv            the project and its Python dependencies (pyproject.toml)
#   Kafka jars       resolved from Maven Central by `mediafm stack up` itself
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# --- system packages (only the missing ones; apt needs root or sudo)
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python environment: reinstall only when pyproject.toml changed
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.mediafm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "pip install -e '.[triton,dev]' (first time: torch and its CUDA libraries, a few GB)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[triton,dev]'
  # aisfx (the offline profile's audio encoder weights, CC BY 4.0) pins numpy 1.23 and
  # librosa 0.9 in its metadata; we only load its checkpoint (mediafm/media/encoders.py),
  # so it is installed without its dependencies and cannot be a normal dependency.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps 'aisfx==0.1.2'
  touch "$stamp"
fi
say "ready: $(.venv/bin/python -c 'import torch, numpy; print(f"torch {torch.__version__}, numpy {numpy.__version__}")')"
