# Shared helpers for scripts/test, scripts/demo and scripts/bench. Source, do not execute.
# shellcheck shell=bash

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_CACHE=${BACKUP_COORDINATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/backup-coordinator}

# Pinned versions of the real stack (see docs/operations.md).
HA_VERSION=2025.4.4
HA_FRONTEND_VERSION=20250411.0
APPDAEMON_VERSION=4.5.13
# Packages HA would install at runtime, installed up front (hass runs with --skip-pip):
# paho-mqtt is what HA's mqtt integration needs.
HA_EXTRAS=(pyotp==2.8.0 PyQRCode==1.2.1 'pycares<5' paho-mqtt==2.1.0)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# find_python X.Y: an interpreter of that version, from PATH or pyenv.
find_python() {
  local want=$1 candidate
  for candidate in "python$want" "$(command -v pyenv >/dev/null && pyenv root)/versions/$want"*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_apt_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_uv() {
  command -v uv >/dev/null 2>&1 && return 0
  local bootstrap="$STACK_CACHE/uv"
  if [ ! -x "$bootstrap/bin/uv" ]; then
    log "installing uv"
    python3 -m venv "$bootstrap"
    "$bootstrap/bin/pip" install -q uv
  fi
  PATH="$bootstrap/bin:$PATH"
}

# The project venv: the coordinator's runtime deps (incl. AppDaemon) and the dev tools.
ensure_project_venv() {
  ensure_uv
  local venv="$PROJECT_ROOT/.venv" stamp="$PROJECT_ROOT/.venv/.installed"
  if [ ! -f "$stamp" ] || [ "$PROJECT_ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "preparing the project venv"
    local py
    py=$(find_python 3.11) || py=$(find_python 3.12) || py=$(find_python 3.13) ||
      die "no Python 3.11-3.13 found (AppDaemon $APPDAEMON_VERSION needs >=3.10)"
    [ -x "$venv/bin/python" ] || uv venv -q --python "$py" "$venv"
    uv pip install -q --python "$venv/bin/python" -e "$PROJECT_ROOT[dev]"
    touch "$stamp"
  fi
  VENV_PY="$venv/bin/python"
}

# Home Assistant in its own Python 3.13 venv, cached outside the checkout.
ensure_home_assistant() {
  ensure_uv
  local venv="$STACK_CACHE/homeassistant-$HA_VERSION"
  if [ ! -f "$venv/.installed" ]; then
    local py
    py=$(find_python 3.13) || die "Home Assistant $HA_VERSION needs Python 3.13 (python3.13 on PATH or via pyenv)"
    log "installing Home Assistant $HA_VERSION (one time, ~1 min)"
    rm -rf "$venv"
    uv venv -q --python "$py" "$venv"
    uv pip install -q --compile-bytecode --python "$venv/bin/python" "homeassistant==$HA_VERSION"
    install_home_assistant_extras "$venv"
    touch "$venv/.installed"
  fi
  # A venv cached before an extra was added gets just the missing extras.
  [ "$(cat "$venv/.extras" 2>/dev/null)" = "${HA_EXTRAS[*]}" ] || install_home_assistant_extras "$venv"
  HA_BIN="$venv/bin/hass"
}

# The frontend and HA_EXTRAS, under HA's own constraints; records them in VENV/.extras.
install_home_assistant_extras() {
  local venv=$1 constraints
  log "installing Home Assistant's extras: ${HA_EXTRAS[*]}"
  constraints=$("$venv/bin/python" -c 'import homeassistant, os; print(os.path.join(os.path.dirname(homeassistant.__file__), "package_constraints.txt"))')
  uv pip install -q --compile-bytecode --python "$venv/bin/python" -c "$constraints" \
    "homeassistant==$HA_VERSION" "home-assistant-frontend==$HA_FRONTEND_VERSION" "${HA_EXTRAS[@]}"
  printf '%s\n' "${HA_EXTRAS[*]}" >"$venv/.extras"
}

# Everything the tests and the demo run on: Debian packages, the project venv (with AppDaemon),
# Home Assistant. Exports the binaries' paths for the Python side.
ensure_stack() {
  ensure_apt_packages borgbackup openssh-server rsync rclone mosquitto
  ensure_project_venv
  ensure_home_assistant
  export BACKUP_COORDINATOR_HASS="$HA_BIN"
  export BACKUP_COORDINATOR_APPDAEMON="$PROJECT_ROOT/.venv/bin/appdaemon"
  export BACKUP_COORDINATOR_MOSQUITTO=/usr/sbin/mosquitto
}
