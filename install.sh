#!/usr/bin/env bash
# Installs hsr_tf into a fresh virtual environment (default: ./.venv).
#   bash install.sh            -> library + tests' extras
#   VENV=/path bash install.sh -> another location
# Steps: the Debian package open3d needs (as root), the venv, tensorflow-graphics
# without its heavy declared dependencies, hsr_tf itself, then the custom ops build.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q libusb-1.0-0 || (apt-get update -q && apt-get install -y -q libusb-1.0-0)) >/dev/null
  else
    echo "install.sh: open3d needs the Debian package libusb-1.0-0: run 'sudo apt-get install libusb-1.0-0'" >&2
    exit 1
  fi
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q --no-deps "tensorflow-graphics==2021.12.3"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m hsr_tf.ops.build
echo "install.sh: hsr_tf installed in $VENV"
