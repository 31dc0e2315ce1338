#!/usr/bin/env bash
# Run the whole django-pdr test suite, from a fresh Debian 12 machine if need be.
#
#   scripts/test.sh [PYTEST ARGS...]      e.g. scripts/test.sh -x -k mysql
#   scripts/test.sh -m unit               the unit layer alone: no server, no browser, seconds
#
# Installs the missing apt packages (PostgreSQL, MariaDB, Firebird 3, Chromium and its
# driver), creates .venv (with ${PYTHON:-python3}) if it does not exist, installs the
# project with its mysql, firebird and test extras, then runs pytest against throwaway
# PostgreSQL, MariaDB and Firebird servers started by tests/live_servers.py
# (PDR_TEST_PG_* / PDR_TEST_MYSQL_* / PDR_TEST_FB_*).
# The exit code is pytest's; 5 ("no tests collected") is non-zero, i.e. a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n== %s ==\n' "$*"; }

. scripts/lib.sh

# One layer: `scripts/test.sh -m unit` runs the tests that need no server or browser, in
# seconds (no apt packages, no servers).
if [[ "$*" == *"-m unit"* ]]; then
    ensure_venv
    .venv/bin/python -m pip install -q -e '.[mysql,firebird,test]'
    exec .venv/bin/python -m pytest "$@"
fi

section "apt packages"
apt_install postgresql mariadb-server firebird3.0-server chromium chromium-driver
echo "present: postgresql mariadb-server firebird3.0-server chromium chromium-driver"

section "virtualenv"
ensure_venv
.venv/bin/python -m pip install -q -e '.[mysql,firebird,test]'

section "tests"
# live_servers.py exits with pytest's code (5 = no tests collected: a failure too).
.venv/bin/python tests/live_servers.py run -- .venv/bin/python -m pytest "$@"

section "pdr-install --check after an install (the demo's project)"
# the demo installs capture through the public API; pdr-install --check must then find
# nothing missing or outdated (its exit code fails this script otherwise)
demo_dir=$(mktemp -d /tmp/pdr-install-check-XXXXXX)
.venv/bin/python -m django_pdr.demo --dir "$demo_dir" --rows 20 >/dev/null
DJANGO_SETTINGS_MODULE=tests.settings PDR_TEST_SQLITE_PATH="$demo_dir/django.sqlite3" \
    .venv/bin/python -m django pdr-install --check --verbosity 2
rm -rf "$demo_dir"
