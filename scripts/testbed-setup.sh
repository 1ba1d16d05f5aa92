#!/usr/bin/env bash
# Installs what the test bed needs on a fresh Debian machine (as root), and nothing that is
# already there: Docker's engine (the tests start private ones), busybox-static (the stand-in
# rancher/agent image is built from it) and moto in a venv (a real SQS).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v tar >/dev/null 2>&1 || need+=(tar)
if [ ${#need[@]} -gt 0 ]; then
    echo "testbed-setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv=.testbed/venv
if [ ! -x "$venv/bin/moto_server" ]; then
    echo "testbed-setup: creating $venv with moto"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi
