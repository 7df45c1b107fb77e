#!/usr/bin/env bash
# One entry point that sets everything up on a fresh Debian/Ubuntu machine and runs a job.
#
#   ./run.sh demo [options of 'aeseg demo']   train + denoise the bundled sample, write results,
#                                             open napari when a display is present
#   ./run.sh test [pytest options]            the whole test suite (GUI tests under Xvfb)
#   ./run.sh setup                            only install (system packages, .venv, torch)
#
# Idempotent: system packages and the virtual environment are installed only when missing or
# when pyproject.toml / this script changed. Needs root or sudo for the system packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=".venv"
PY="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"   # CPU wheel; GPU users install their own build first
SYSTEM_PACKAGES=(
  python3 python3-venv python3-pip git
  xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0
  libxcb-render-util0 libxcb-image0 libxcb-shape0 libxkbcommon-x11-0 libgl1 libegl1
  libfontconfig1 libdbus-1-3 libglib2.0-0
)

log() { printf '[run.sh] %s\n' "$*" >&2; }

install_system_packages() {
  command -v dpkg >/dev/null 2>&1 || { log "not a Debian-like system: install Xvfb and Qt's xcb libraries yourself"; return 0; }
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  log "installing system packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_venv() {
  local stamp="$VENV/.aeseg-setup"
  local want
  want=$(cat pyproject.toml run.sh | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "creating the virtual environment in $VENV (about a minute)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # pin torch first: an unpinned torch (or one pulled in by a dependency) is a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q -e ".[dev]" "$TORCH_SPEC"
  echo "$want" > "$stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup)
    install_system_packages
    setup_venv
    ;;
  demo)
    install_system_packages
    setup_venv
    exec "$VENV/bin/aeseg" demo "$@"
    ;;
  test)
    install_system_packages
    setup_venv
    set +e
    # pytest-xvfb starts a virtual X server for the GUI tests
    "$VENV/bin/python" -m pytest -ra "$@"
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then
      log "pytest collected no tests: that is a failure"
      exit 1
    fi
    exit $rc
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
