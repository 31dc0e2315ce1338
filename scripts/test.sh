#!/usr/bin/env bash
# Run the whole django-pdr test suite, from a fresh Debian 12 machine if need be.
#
#   scripts/test.sh [PYTEST ARGS...]      e.g. scripts/test.sh -x -k mysql
#
# Installs the missing apt packages (PostgreSQL, MariaDB, Chromium and its driver),
# creates .venv (with ${PYTHON:-python3}) if it does not exist, installs the project
# with its mysql and test extras, then runs pytest against throwaway PostgreSQL and
# MariaDB servers started by tests/live_servers.py (PDR_TEST_PG_* / PDR_TEST_MYSQL_*).
# The exit code is pytest's; 5 ("no tests collected") is non-zero, i.e. a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n== %s ==\n' "$*"; }

section "apt packages"
missing=()
for pkg in postgresql mariadb-server chromium chromium-driver; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo apt-get)
    else
        echo "test.sh: missing packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${apt_get[@]}" update -q
    "${apt_get[@]}" install -y -q "${missing[@]}"
else
    echo "all present"
fi

section "virtualenv"
if [[ ! -x .venv/bin/python ]]; then
    "${PYTHON:-python3}" -m venv .venv
    echo "created .venv with $(.venv/bin/python --version)"
else
    echo "using .venv ($(.venv/bin/python --version))"
fi
.venv/bin/python -m pip install -q -e '.[mysql,test]'

section "tests"
# live_servers.py exits with pytest's code (5 = no tests collected: a failure too).
exec .venv/bin/python tests/live_servers.py run -- .venv/bin/python -m pytest "$@"
