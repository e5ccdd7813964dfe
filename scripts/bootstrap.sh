#!/usr/bin/env bash
# Set up everything the gateway and its tests need on a fresh Debian machine:
# the Debian packages (installed with apt-get when missing), then a virtualenv in .venv
# with the project and its development tools. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# Debian packages the gateway or its tests use at run time (mosquitto: the MQTT broker that
# tests/cloud start themselves on loopback ports, its own service not needed; systemd: for
# systemd-analyze, with which the tests check the service unit; chromium and chromium-driver:
# the headless browser the web app's end-to-end test drives, nothing downloaded at run time).
DEBIAN_PACKAGES=(python3-venv mosquitto systemd chromium chromium-driver)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# A Python built from source (pyenv and the like) has venv without Debian's package.
if "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "bootstrap: run as root first: apt-get update && apt-get install -y ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap: Python 3.11 or newer is needed ($("$PYTHON" --version) found)" >&2; exit 1; }

# A virtualenv made before python3-venv was installed has no pip: start it again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "bootstrap: ready (.venv)"
