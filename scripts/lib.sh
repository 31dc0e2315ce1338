# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).

# apt_install PKG...: install the Debian packages that are missing (as root, or with sudo).
apt_install() {
    local missing=() pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    local apt_get
    if [[ $(id -u) -eq 0 ]]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo apt-get)
    else
        echo "missing packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${apt_get[@]}" update -q
    "${apt_get[@]}" install -y -q "${missing[@]}"
}

# ensure_venv: create .venv with ${PYTHON:-python3} unless it exists (Debian ships the
# venv module apart from python3: install it first when it is missing).
ensure_venv() {
    local python=${PYTHON:-python3}
    if [[ -x .venv/bin/python ]]; then
        echo "using .venv ($(.venv/bin/python --version))"
        return 0
    fi
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "$python not found; install Python 3.10 or newer (Debian: apt-get install python3)" >&2
        exit 1
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install "python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    fi
    if ! "$python" -m venv .venv; then
        rm -rf .venv  # nothing half-made for the next try
        echo "could not create .venv with $python" >&2
        exit 1
    fi
    echo "created .venv with $(.venv/bin/python --version)"
}
