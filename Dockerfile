# otel-arthur serve: the OTLP receiver beside a Collector, in a container (docs/scaling.md).
#   docker build -t otel-arthur:0.1.0 .
#   docker run -v otel-arthur-spool:/var/lib/otel-arthur -p 4319:4319 -p 4320:4320 \
#     -e ARTHUR_ENDPOINT_URL=https://app.arthur.ai -e ARTHUR_API_KEY -e ARTHUR_MODEL_ID=… otel-arthur:0.1.0
# With OTEL_ARTHUR_RECEIVER_TOKEN set, also give --tls-cert-file/--tls-key-file (or, behind a proxy that
# ends TLS, --allow-plaintext-token): serve refuses a token in clear on 0.0.0.0.
# The same python image in both stages: the virtual environment's interpreter link must hold.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
# Exactly the versions of uv.lock. Dependencies get a layer of their own, so a change to the
# package's source does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra server --no-install-project
COPY otel_arthur ./otel_arthur
RUN uv sync --frozen --no-dev --extra server --no-editable

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 otel-arthur \
 && useradd --system --uid 10001 --gid otel-arthur --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin otel-arthur \
 && install -d -o otel-arthur -g otel-arthur -m 0700 /var/lib/otel-arthur
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ARTHUR_SPOOL_DIR=/var/lib/otel-arthur \
    OTEL_ARTHUR_RECEIVER_PORT=4319
# The spool: what was accepted and not yet delivered survives the container.
VOLUME /var/lib/otel-arthur
# OTLP/HTTP (with /healthz, /readyz, /metrics) and OTLP/gRPC.
EXPOSE 4319 4320
USER 10001:10001
STOPSIGNAL SIGTERM
# Plain HTTP: with --tls-cert-file the probe must be https (Kubernetes uses its own probes, deploy/).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OTEL_ARTHUR_RECEIVER_PORT', '4319'), timeout=2)"
ENTRYPOINT ["otel-arthur", "serve", "--host", "0.0.0.0"]
