#!/usr/bin/env bash
# The newcomer's first command: a live django-pdr demo on SQLite, nothing else to install.
#
#   scripts/demo.sh [--rows N] [--dir DIR] [--keep] [-v]
#
# Creates .venv (with ${PYTHON:-python3}) if it does not exist, installing Debian's
# venv package first when Python lacks it, installs the project into .venv, then runs
# `python -m django_pdr.demo`: a SQLite table replicated live into two SQLite mirrors
# while it is being written to, then compared row by row.
# The exit code is the demo's: 0 when both mirrors are identical to the source.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "demo.sh: $python not found; install Python 3.10 or newer (Debian: apt-get install python3)" >&2
        exit 1
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian and Ubuntu ship the venv module apart from python3.
        version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        package="python${version}-venv"
        if [[ $(id -u) -eq 0 ]]; then
            apt_get=(apt-get)
        elif command -v sudo >/dev/null 2>&1; then
            apt_get=(sudo apt-get)
        else
            echo "demo.sh: $python cannot create a virtualenv; as root: apt-get install -y $package" >&2
            exit 1
        fi
        echo "installing $package (needed to create .venv)"
        export DEBIAN_FRONTEND=noninteractive
        "${apt_get[@]}" update -q
        "${apt_get[@]}" install -y -q "$package"
    fi
    if ! "$python" -m venv .venv; then
        rm -rf .venv  # nothing half-made for the next try
        echo "demo.sh: could not create .venv with $python" >&2
        exit 1
    fi
    echo "created .venv with $(.venv/bin/python --version)"
fi
.venv/bin/pip install -q -e .
exec .venv/bin/python -m django_pdr.demo "$@"
