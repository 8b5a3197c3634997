# syntax=docker/dockerfile:1
# The base: the official python:3.11-slim by default. Any Debian-like image with python,
# pip and useradd on PATH works; CI builds one with debootstrap (.ci/container).
ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: the project and its dependencies, with the [tracing] extra (OpenTelemetry:
# `tracing.enabled: true` works without a rebuild), installed into a virtualenv of their
# own (binary wheels only: no compiler needed or shipped). The venv has no pip, and pip keeps
# no cache; bytecode is compiled here, once (startup takes half as long as without it).
# The dependencies come first, in a layer of their own that depends only on pyproject.toml
# (its dependencies and the tracing extra, read with tomllib): a builder that keeps layers
# reuses it while pyproject.toml is unchanged, and installs only the project again.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["tracing"]))' >/tmp/requirements.txt \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY proxy ./proxy
RUN python -m pip --python /opt/venv/bin/python install --no-cache-dir --only-binary=:all: --no-deps ".[tracing]"

# Runtime stage: the base plus that venv, non-root (numeric uid 10001), config at
# /etc/llm-cache-proxy/config.yaml. The base's own `proxy` system user is left alone.
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    LLMCP_CONFIG=/etc/llm-cache-proxy/config.yaml
RUN groupadd --gid 10001 llmcp \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/llmcp --shell /usr/sbin/nologin llmcp
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY config.yaml /etc/llm-cache-proxy/config.yaml
USER 10001:10001
# The embedded Redis (REDIS_URL unset) keeps its state here, under config.yaml's state_dir.
WORKDIR /home/llmcp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# REDIS_URL comes from the environment; without it the embedded Redis is used.
CMD ["llm-cache-proxy", "serve", "--host", "0.0.0.0", "--port", "8080"]
