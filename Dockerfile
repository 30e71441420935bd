# dlnsim: the HTTP service with its embedded Dask cluster and SQLite job store.
#
#   docker build -t dlnsim .
#   docker run --init -p 127.0.0.1:8000:8000 -v dlnsim-data:/data dlnsim
#
# Stage 1 builds the project wheel and installs it with its dependencies into a venv (the same
# `pip install` of the project that `make install` does, without the test extras and not editable, with the
# parquet extra: sweep results as Parquet);
# stage 2 is a clean slim image that receives only the venv and runs as a non-root user.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN /opt/venv/bin/python -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/python -m pip install --no-cache-dir "$(echo /tmp/wheels/*.whl)[parquet]"

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 dlnsim \
    && useradd --system --uid 10001 --gid dlnsim --create-home --home-dir /home/dlnsim dlnsim \
    && mkdir /data \
    && chown dlnsim:dlnsim /data
COPY --from=builder /opt/venv /opt/venv
# NUMBA_CACHE_DIR: the compiled GD kernels (numba, 10–25 s to compile in a fresh worker process) are cached
# on the data volume, so only the first start on a volume (and CPU model) compiles them. Otherwise numba
# keeps them in the service user's home (site-packages is read-only for it): lost with every new container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DLNSIM_HOST=0.0.0.0 \
    DLNSIM_PORT=8000 \
    DLNSIM_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/data/numba-cache
WORKDIR /home/dlnsim
USER 10001:10001
# The job store (dlnsim.sqlite3) lives here: mount a volume to keep jobs across containers.
VOLUME /data
EXPOSE 8000
# No curl in slim images: the image's own python asks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DLNSIM_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
