# syntax=docker/dockerfile:1
# One image for every kitrelay process. The command picks the role:
#   docker run IMAGE gateway | worker --agent triage|task|research | migrate
# Stages: `build` installs kitrelay into a virtualenv; `runtime` copies only that venv onto a slim base.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/kitrelay \
    PATH=/opt/kitrelay/bin:$PATH
RUN python -m venv /opt/kitrelay
WORKDIR /src
# Dependencies first, in their own layer: they change far less often than the code. Exactly the versions the lock
# file names, their hashes checked (`make lock` refreshes it).
COPY pyproject.toml README.md requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY gateway ./gateway
COPY agents ./agents
COPY services ./services
COPY shared ./shared
# A regular (not editable) install: the runtime stage gets no source tree, only the venv. pip byte-compiles it here,
# because the runtime filesystem is read-only in Kubernetes and every probe would otherwise recompile.
RUN pip install --no-deps . \
    && kitrelay --help > /dev/null \
    && python -c "import kitrelay.services.health, kitrelay.shared.store.migrations"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG UID=10001
LABEL org.opencontainers.image.title="kitrelay" \
      org.opencontainers.image.description="A self-hosted, horizontally scalable ChatKit backend" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${UID} kitrelay \
    && useradd --system --uid ${UID} --gid kitrelay --home-dir /app --shell /usr/sbin/nologin kitrelay \
    && mkdir -p /app /data/attachments \
    && chown -R kitrelay:kitrelay /app /data
COPY --from=build /opt/kitrelay /opt/kitrelay
# Settings defaults that differ inside a container: listen on every interface, JSON logs, uploads on a volume.
ENV PATH=/opt/kitrelay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    LOG_JSON=true \
    ATTACHMENTS_DIR=/data/attachments
WORKDIR /app
VOLUME ["/data/attachments"]
USER ${UID}:${UID}
EXPOSE 8000
# Valid for every role: gateway and workers alike need NATS, Redis and the database. Compose gives the gateway an
# HTTP check instead; Kubernetes uses its own probes (k8s/).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "kitrelay.services.health", "--quiet"]
ENTRYPOINT ["kitrelay"]
CMD ["gateway"]
