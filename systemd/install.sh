#!/usr/bin/env bash
# Install the Luckey gateway as a systemd service on Raspberry Pi OS (or any Debian):
#   sudo systemd/install.sh [--start]
# - a system user "luckey" (no login) in the groups the unit names (dialout, gpio, bluetooth;
#   created when the machine has none, so the unit can start anywhere);
# - the code in /opt/luckey-gateway with its own virtualenv;
# - the config in /etc/luckey-gateway/config.toml (the commented example, kept if present);
# - the unit in /etc/systemd/system, enabled (and started with --start).
# Run it again to upgrade: the code and unit are replaced, the config and state are kept.
#
# --root DIR stages the files under DIR instead (packaging, tests): no user, no systemctl.
# --no-venv skips the virtualenv (with --root, for tests that only check the files).
set -euo pipefail
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
START=0
VENV=1
while (($#)); do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --start) START=1; shift ;;
    --no-venv) VENV=0; shift ;;
    *) echo "install: unknown option $1 (allowed: --start, --root DIR, --no-venv)" >&2; exit 2 ;;
  esac
done

PREFIX="$ROOT/opt/luckey-gateway"
CONFIG_DIR="$ROOT/etc/luckey-gateway"
UNIT_DIR="$ROOT/etc/systemd/system"
GROUPS_NEEDED=(dialout gpio bluetooth)

if [ -z "$ROOT" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "install: run as root (sudo $0)" >&2; exit 1; }
  command -v systemctl >/dev/null || { echo "install: systemd is needed" >&2; exit 1; }
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  for group in "${GROUPS_NEEDED[@]}"; do
    getent group "$group" >/dev/null || groupadd --system "$group"
  done
  if ! id luckey >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/luckey-gateway --no-create-home \
      --shell /usr/sbin/nologin --comment "Luckey edge gateway" luckey
  fi
  usermod --append --groups "$(IFS=,; echo "${GROUPS_NEEDED[*]}")" luckey
fi

echo "install: code → $PREFIX"
mkdir -p "$PREFIX"
# The project as released: sources and docs, never a checkout's own state or virtualenv.
tar -C "$SOURCE" --exclude=./.venv --exclude=./var --exclude=./.git --exclude=__pycache__ \
  --exclude='./.*_cache' --exclude=./.hypothesis --exclude='*.egg-info' \
  --exclude=./bench/out --exclude=./test-artifacts -cf - . | tar -C "$PREFIX" -xf -
if ((VENV)); then
  python3 -m venv "$PREFIX/.venv"
  "$PREFIX/.venv/bin/pip" install --quiet --upgrade pip
  "$PREFIX/.venv/bin/pip" install --quiet "$PREFIX"
fi

mkdir -p "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/config.toml" ]; then
  # The example with the state where systemd keeps it.
  sed 's|^state_dir = .*|state_dir = "/var/lib/luckey-gateway"|' \
    "$SOURCE/gateway/data/example.toml" > "$CONFIG_DIR/config.toml"
  echo "install: config → $CONFIG_DIR/config.toml (edit it, then restart the service)"
fi
chmod 0750 "$CONFIG_DIR"
chmod 0640 "$CONFIG_DIR/config.toml"

mkdir -p "$UNIT_DIR"
install -m 0644 "$SOURCE/systemd/luckey-gateway.service" "$UNIT_DIR/luckey-gateway.service"

if [ -z "$ROOT" ]; then
  chown root:luckey "$CONFIG_DIR" "$CONFIG_DIR/config.toml"
  systemctl daemon-reload
  systemctl enable luckey-gateway.service
  if ((START)); then
    systemctl restart luckey-gateway.service
    echo "install: started; follow it with: journalctl -u luckey-gateway -f"
  else
    echo "install: enabled; start it with: sudo systemctl start luckey-gateway"
  fi
fi
