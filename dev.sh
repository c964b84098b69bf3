#!/usr/bin/env bash
# Development entry point: sets up .venv on first use, then runs a job.
#   ./dev.sh demo [args]    the main job (python -m dysl_ros demo)
#   ./dev.sh test [args]    the test suite (pytest)
#   ./dev.sh <command> ...  any other `python -m dysl_ros` command
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${DYSL_PYTHON:-python3.11}  # torch==2.13.0 (CPU) is provided for CPython 3.11

setup_system() {
  # Headless MuJoCo rendering (EGL / OSMesa); Debian package names.
  local pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "dev.sh: missing Debian packages ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
}

setup_venv() {
  local stamp=$VENV/.requirements.sha256
  if [ -f "$stamp" ] && sha256sum --quiet -c "$stamp" 2>/dev/null; then return; fi
  echo "dev.sh: creating $VENV from requirements-dev.txt (first run takes a few minutes)" >&2
  [ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
  $VENV/bin/python -m pip install -q --upgrade pip
  $VENV/bin/python -m pip install -q -r requirements-dev.txt
  sha256sum requirements-dev.txt > "$stamp"
}

setup_system
setup_venv

# DDS stays on this machine, in a domain of its own; rendering is headless.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
export MUJOCO_GL=${MUJOCO_GL:-egl}

job=${1:-demo}
shift || true
case "$job" in
  test) exec $VENV/bin/python -m pytest "$@" ;;
  *) exec $VENV/bin/python -m dysl_ros "$job" "$@" ;;
esac
