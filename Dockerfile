# syntax=docker/dockerfile:1
# CacheLink: one image, two entrypoints (cachelink-operator, the default, and cachelink-agent).
# The builder compiles the wheel (C++ core included); the runtime holds only the installed venv.

# ---- builder: build the wheel and install it into a self-contained venv -----------------------------
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake ninja-build libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same script the packaging test runs, so what CI checks is what the image does.
RUN hack/install-wheel.sh /wheels /opt/cachelink

# ---- runtime: the venv and the shared libraries it needs, nothing else --------------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="cachelink" \
      org.opencontainers.image.description="Moves LLM KV caches between prefill and decode servers on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/cachelink"
COPY --from=builder /opt/cachelink /opt/cachelink
ENV PATH=/opt/cachelink/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default; the chart sets the same uid and a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["cachelink-operator"]
