# A healthnode node image. The base is a build argument: a standard Python image by default; any
# Debian bookworm root file system with apt works too (scripts/cluster makes one with debootstrap
# where no registry can be reached, see docs/cluster.md). Python >= 3.11 comes from the base when it
# has one, else from Debian's python3 (3.11 on bookworm).
#
#   docker build -t healthnode .
#   podman build --format docker --pull=never --build-arg BASE_IMAGE=localhost/healthnode-base .
#
# The node's home is the volume /data. On start the entrypoint seeds it from a generated testnet
# home when one is mounted ($HEALTHNODE_SEED), runs `healthnode init --home /data` (which keeps an
# existing key, genesis and config) and then execs `healthnode run --home /data`.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# gcc + libgmp-dev compile fastecdsa (pinned by libp2p); python3-dev only where the base has no
# Python of its own. The apt lists are dropped: this stage is thrown away anyway.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    if command -v python3 >/dev/null && python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null \
        && python3 -c 'import sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then \
        apt-get install -y -qq --no-install-recommends gcc libc6-dev libgmp-dev >/dev/null; \
    else \
        apt-get install -y -qq --no-install-recommends gcc libc6-dev libgmp-dev \
            python3 python3-venv python3-dev ca-certificates >/dev/null; \
    fi; \
    python3 -m venv /opt/healthnode; \
    rm -rf /var/lib/apt/lists/*
# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them.
# scripts/container/wheels/ holds wheels that scripts/cluster fetched on the host (where the package
# index may only be reachable through the host's own certificates); when it holds any, the build
# installs from them alone, else from the package index.
COPY pyproject.toml /src/pyproject.toml
COPY scripts/container/wheels/ /src/wheels/
RUN set -eu; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /src/requirements.txt; \
    if ls /src/wheels/*.whl >/dev/null 2>&1; then source="--no-index --find-links /src/wheels"; else source=""; fi; \
    /opt/healthnode/bin/pip install -q --disable-pip-version-check --no-cache-dir $source -r /src/requirements.txt 'setuptools>=68'; \
    rm -rf /src/wheels
COPY README.md /src/README.md
COPY healthnode /src/healthnode
RUN /opt/healthnode/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation /src

FROM ${BASE_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    if command -v python3 >/dev/null && python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get install -y -qq --no-install-recommends libgmp10 >/dev/null; \
    else \
        apt-get install -y -qq --no-install-recommends libgmp10 python3 ca-certificates >/dev/null; \
    fi; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/healthnode /opt/healthnode
COPY scripts/container/entrypoint.sh /usr/local/bin/healthnode-entrypoint
ENV PATH=/opt/healthnode/bin:$PATH \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
# 26600: libp2p (gossip, sync, client); 26700: Prometheus metrics ([metrics].listen in the home).
EXPOSE 26600 26700
# The admin socket is mode 0600 for root/the daemon's user: the check runs inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["healthnode", "admin", "--home", "/data", "status"]
ENTRYPOINT ["healthnode-entrypoint"]
CMD ["run"]
