# syntax=docker/dockerfile:1
# The wasmxds image:  docker build -t wasmxds:0.1.0 .
#   docker run --rm wasmxds:0.1.0 serve --help
# Stage 1 builds the wheel and installs it, with its runtime dependencies only
# (no dev extras), into a virtualenv; stage 2 copies that virtualenv onto the
# same slim Python image. No compiler, pip cache or source tree is left in it.
# The base is pinned by exact version tag; add @sha256:<digest> when you
# publish, for byte-identical rebuilds.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wasmxds/ wasmxds/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && python -m venv /opt/wasmxds \
    && /opt/wasmxds/bin/pip install --no-cache-dir /dist/wasmxds-*.whl \
    && /opt/wasmxds/bin/pip uninstall --yes pip

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="wasmxds" \
      org.opencontainers.image.description="Istio's WasmPlugin API for plain Envoy" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, unprivileged UID/GID (the Kubernetes manifests use the same one).
# /var/cache/wasmxds is the module cache: a volume in compose, an emptyDir in
# Kubernetes, where the root filesystem is read-only.
RUN groupadd --system --gid 65532 wasmxds \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin wasmxds \
    && install -d -o 65532 -g 65532 -m 0755 /var/cache/wasmxds
COPY --from=build /opt/wasmxds /opt/wasmxds
ENV PATH=/opt/wasmxds/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache
USER 65532:65532
EXPOSE 18000 18001
ENTRYPOINT ["wasmxds"]
CMD ["--help"]
