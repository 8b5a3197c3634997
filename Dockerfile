# syntax=docker/dockerfile:1
# Build stage: wheels for the project and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim, non-root, config mounted at /etc/llm-cache-proxy/config.yaml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    LLMCP_CONFIG=/etc/llm-cache-proxy/config.yaml
RUN useradd --create-home --uid 10001 proxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY config.yaml /etc/llm-cache-proxy/config.yaml
USER 10001:10001
WORKDIR /home/proxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# REDIS_URL comes from the environment; without it the embedded Redis is used.
CMD ["llm-cache-proxy", "serve", "--host", "0.0.0.0", "--port", "8080"]
