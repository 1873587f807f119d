# The transcoder's image: the project, its Python dependencies in /opt/venv, ffmpeg, hls.js
# for the player page; runs as an unprivileged user. Used by the compose stack
# (infra/docker-compose.yml) and by the Docker work pool's flow-run containers.
#
#   docker build -t transcoder:local .                      # with a registry (python:3.11-slim)
#   python -m deployments.docker_host build-image [--root DIR]   # without one: see that module
#
# Before building, `npm ci --prefix player` (make setup) must have made
# player/node_modules/hls.js/dist/hls.min.js. No npm in the image.
#
# Build-time only: a `.docker-build` folder in the context may hold `ca.crt` (a CA bundle
# pip must trust) and `pip.conf` (package indexes). Only the builder stage sees them; the
# shipped stage copies the finished venv and code from it, never those files.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS runtime
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PREFECT_HOME=/tmp/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TRANSCODE_DATA_DIR=/tmp/transcode \
    TRANSCODE_CODE_DIR=/opt/transcoder
# ffmpeg from Debian unless the base has it (local/bookworm-py does); python3 -m venv must work;
# an unprivileged user (minbase Debian has no useradd): uid/gid 10001, no login, no password
RUN set -eu; \
    missing=""; \
    command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing="ffmpeg"; \
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"; \
    if [ -n "$missing" ]; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    ffmpeg -hide_banner -version | head -n 1; \
    grep -q '^transcoder:' /etc/group || echo 'transcoder:x:10001:' >> /etc/group; \
    grep -q '^transcoder:' /etc/passwd || \
        echo 'transcoder:x:10001:10001:transcoder:/home/transcoder:/usr/sbin/nologin' >> /etc/passwd; \
    mkdir -p /home/transcoder; chown 10001:10001 /home/transcoder

FROM runtime AS build
# dependencies first (a layer that changes only with pyproject.toml), then the project
COPY pyproject.toml .docker-build* /tmp/build/
RUN set -eu; cd /tmp/build; \
    if [ -f ca.crt ]; then export PIP_CERT=/tmp/build/ca.crt; fi; \
    if [ -f pip.conf ]; then export PIP_CONFIG_FILE=/tmp/build/pip.conf; fi; \
    python3 -m venv /opt/venv; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q -r requirements.txt
COPY . /opt/transcoder
# editable: the code runs from /opt/transcoder (Prefect's pull step sets it as the working
# directory; player/ and prefect.yaml are found next to the packages)
RUN set -eu; cd /tmp/build; \
    if [ -f ca.crt ]; then export PIP_CERT=/tmp/build/ca.crt; fi; \
    if [ -f pip.conf ]; then export PIP_CONFIG_FILE=/tmp/build/pip.conf; fi; \
    rm -rf /opt/transcoder/.docker-build*; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps -e /opt/transcoder; \
    rm -rf /opt/transcoder/build; \
    test -f /opt/transcoder/player/node_modules/hls.js/dist/hls.min.js; \
    /opt/venv/bin/python -m compileall -q /opt/transcoder >/dev/null; \
    cd /; rm -rf /tmp/build

FROM runtime
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/transcoder /opt/transcoder
WORKDIR /opt/transcoder
USER 10001:10001
CMD ["transcode", "--help"]
