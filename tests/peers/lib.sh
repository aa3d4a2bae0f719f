# Helpers for tests/peers/setup.d/*.sh (sourced, not run).

# need_apt PKG...: installs the Debian packages that are missing (apt-get update once).
need_apt() {
    local missing=()
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_pip MODULE SPEC: installs SPEC with pip unless python3 can import MODULE.
need_pip() {
    local module=$1 spec=$2
    python3 -c "import $module" >/dev/null 2>&1 && return 0
    python3 -m pip install --quiet --disable-pip-version-check "$spec"
}
