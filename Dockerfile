# Lethe: API and GPU worker image. PyPI's torch 2.13.0 wheels for Linux carry their own
# CUDA libraries, so the image uses a GPU when the container is given one (the host
# needs only the NVIDIA driver and container toolkit) and the CPU otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LETHE_DATA_DIR=/data

WORKDIR /srv/lethe
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
COPY workers/__init__.py workers/__init__.py
COPY models_store/__init__.py models_store/__init__.py
COPY lethe/__init__.py lethe/__init__.py
RUN pip install --no-cache-dir -e . && python -c "import torch, torchvision, fastapi, celery"
COPY app app
COPY workers workers
COPY models_store models_store
COPY lethe lethe
COPY migrations migrations

RUN useradd --create-home --uid 10001 lethe && mkdir -p /data && chown lethe /data
USER lethe
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["lethe", "api", "--host", "0.0.0.0", "--port", "8000"]
