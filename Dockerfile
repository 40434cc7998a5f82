# x402-gateway: the paywall reverse proxy as a container (run it as a sidecar in front of
# an unchanged HTTP API). Build: docker build -t x402-gateway .
# Run:   docker run -p 8402:8402 -v $PWD/gateway.yaml:/etc/x402-gateway/gateway.yaml x402-gateway

# --- builder: the gateway's wheel and the wheels of everything it needs -----------------
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Dependencies that ship no wheel for this platform are compiled here, never in the image.
RUN pip wheel --wheel-dir /wheels .

# --- image: the wheels installed, nothing to build with ----------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
LABEL org.opencontainers.image.title="x402-gateway" \
      org.opencontainers.image.description="Self-hosted x402 paywall gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/x402_gateway-*.whl \
    && groupadd --system --gid 10001 x402 \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin x402
COPY config/gateway.example.yaml /etc/x402-gateway/gateway.yaml
USER 10001:10001
# 8402: the paid API; 9402: /metrics /healthz /readyz (set `admin: 0.0.0.0:9402` to scrape it
# from outside the container).
EXPOSE 8402 9402
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9402/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["x402-gateway"]
CMD ["serve", "--config", "/etc/x402-gateway/gateway.yaml"]
