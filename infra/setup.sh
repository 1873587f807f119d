#!/usr/bin/env bash
# Idempotent install of everything the project needs on a fresh Debian machine: system
# packages (ffmpeg; node and npm for the player's hls.js; with --test, chromium for the
# browser tests and postgresql for the load test), hls.js in player/node_modules, and a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=0
[ "${1:-}" = "--test" ] && for_tests=1

need_apt=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ "$for_tests" = 1 ]; then
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
    # the load test's Prefect server runs on a throwaway PostgreSQL cluster (benchmarks/postgres.py)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
fi
if ((${#need_apt[@]})); then
    echo "setup: installing ${need_apt[*]} (apt-get)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# hls.js for the player page, pinned by player/package-lock.json
if [ ! -f player/node_modules/hls.js/dist/hls.min.js ] || [ player/package-lock.json -nt player/node_modules/.package-lock.json ]; then
    echo "setup: installing hls.js (npm ci)"
    npm ci --prefix player --no-audit --no-fund --loglevel=error >/dev/null
fi

stamp=.venv/.setup-stamp
want=$(cat pyproject.toml infra/setup.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: creating .venv and installing the project (pip)"
[ -x .venv/bin/python ] || python3 -m venv .venv
# (this machine's pip configuration may warn about missing local indexes: not ours, hidden)
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q -e '.[test]'
echo "$want" > "$stamp"
echo "setup: done"
