# One image for every role of slimformer: `api`, `worker`, `migrate` (see deploy/image/entrypoint.sh).
#
#   podman build --format docker -t slimformer:cpu .                       # CPU torch (default)
#   podman build --format docker --build-arg TORCH_FLAVOUR=cuda -t slimformer:cuda .
#
# BASE_IMAGE must be Debian bookworm-like with python3 (3.11) and python3-venv; where no registry is
# reachable, deploy/image/make-base.sh builds one from the Debian mirror. Wheels in deploy/image/wheels/
# (the exact torch build) are installed from there instead of being downloaded. Behind a TLS-intercepting
# proxy, hand pip its CA bundle as a build secret (not kept in any layer):
#   podman build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
# docs/deploy.md has the details.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_FLAVOUR=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/slimformer/bin:$PATH
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
RUN python3 -m venv /opt/slimformer

# torch first and on its own layer: the largest download, and the one that differs between flavours.
# cpu: a local +cpu wheel, else PyTorch's CPU index; cuda: a local CUDA wheel, else PyPI (CUDA build).
COPY deploy/image/wheels/ /tmp/wheels/
# DL3013 (unpinned pip install): TORCH_VERSION pins torch, in the wheel name or as torch==.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    case "$TORCH_FLAVOUR" in \
        cpu) wheel="$(find /tmp/wheels -name "torch-$TORCH_VERSION+cpu-*.whl" | head -n 1)"; \
             index="https://download.pytorch.org/whl/cpu" ;; \
        cuda) wheel="$(find /tmp/wheels -name "torch-$TORCH_VERSION-*.whl" -o -name "torch-$TORCH_VERSION+cu*.whl" \
                       | head -n 1)"; \
              index="https://pypi.org/simple" ;; \
        *) echo "TORCH_FLAVOUR must be cpu or cuda, not $TORCH_FLAVOUR" >&2; exit 2 ;; \
    esac; \
    if [ -n "$wheel" ]; then \
        pip install --find-links /tmp/wheels "$wheel"; \
    else \
        pip install --extra-index-url "$index" "torch==$TORCH_VERSION"; \
    fi; \
    rm -rf /tmp/wheels

# The other dependencies from pyproject.toml (library + service extra), cached until it changes.
COPY pyproject.toml /src/
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt

# pip byte-compiles what it installs, so the read-only image starts without compiling anything
COPY README.md /src/
COPY slimformer/ /src/slimformer/
COPY service/ /src/service/
COPY workers/ /src/workers/
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-deps /src

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/slimformer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLIMFORMER_DATA_DIR=/data \
    SLIMFORMER_HOST=0.0.0.0 \
    SLIMFORMER_LOG_FORMAT=json \
    HF_HUB_DISABLE_TELEMETRY=1
# /data/artifacts exists in the image so a volume mounted there starts out owned by the service user
RUN groupadd --system --gid 10001 slimformer && \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home slimformer && \
    mkdir -p /data/artifacts && chown -R 10001:10001 /data
COPY --from=build /opt/slimformer /opt/slimformer
COPY deploy/image/entrypoint.sh /usr/local/bin/slimformer-entrypoint
USER 10001:10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["slimformer-entrypoint", "healthcheck"]
ENTRYPOINT ["slimformer-entrypoint"]
CMD ["api"]
