# rollout-proxy container image.
#
#   docker build -t rollout-proxy:0.1.0 .
#   docker run --rm -p 8080:8080 -e ROLLOUT_ADMIN_TOKEN="$(openssl rand -hex 24)" rollout-proxy:0.1.0
#
# The builder stage compiles the source into a wheel; the final stage installs that wheel and its
# runtime dependencies only (no build tools, no source tree) and runs as an unprivileged user.
# The image starts with config/docker.yaml, which needs the admin token in ROLLOUT_ADMIN_TOKEN
# (its admin listener is off loopback); mount your own config over
# /etc/rollout-proxy/config.yaml. State is kept in /var/lib/rollout-proxy (mount a volume
# there to keep it across containers). Data plane on 8080, admin listener (/metrics,
# /healthz, /readyz, rollout API) on 9090. On SIGTERM (docker stop) readiness fails and
# in-flight requests drain for `limits.drain` (5 s by default) before the process exits 0.
# Pin the base image by digest for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The data plane is compiled with mypyc (see setup.py): a C compiler for the builder only, the
# final stage gets the wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV ROLLOUT_PROXY_COMPILE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin rollout \
    && install -d -o rollout -g rollout -m 0750 /var/lib/rollout-proxy
COPY config/docker.yaml /etc/rollout-proxy/config.yaml
USER 10001:10001
WORKDIR /var/lib/rollout-proxy
EXPOSE 8080 9090
# Liveness of the process through the admin listener (slim images have no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["rollout-proxy"]
CMD ["run", "--config", "/etc/rollout-proxy/config.yaml"]
