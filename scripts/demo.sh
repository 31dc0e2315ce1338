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

. scripts/lib.sh
ensure_venv >&2
.venv/bin/pip install -q -e .
exec .venv/bin/python -m django_pdr.demo "$@"
