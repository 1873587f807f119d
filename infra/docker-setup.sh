#!/usr/bin/env bash
# Idempotent install of what a private Docker engine needs on a Debian machine (no image
# registry needed): the engine (docker.io: dockerd, containerd, runc), apparmor (the engine
# loads its profile where the kernel has AppArmor), mmdebstrap (the base image is made from
# Debian packages) and a compose (the `docker compose` plugin when present, else Debian's
# docker-compose). Starts nothing: deployments/docker_host.py starts a dockerd of its own.
set -euo pipefail

need_apt=()
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || need_apt+=(docker.io)
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
command -v apparmor_parser >/dev/null 2>&1 || [ -x /sbin/apparmor_parser ] || [ -x /usr/sbin/apparmor_parser ] \
    || need_apt+=(apparmor)
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    need_apt+=(docker-compose)
fi
if ((${#need_apt[@]})); then
    mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
    echo "docker-setup: installing ${need_apt[*]} (apt-get)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
