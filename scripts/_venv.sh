# Shared by scripts/test and scripts/localnet: make sure .venv exists and holds healthnode.
# Sourced, not run. Installs Debian's libgmp-dev (needed to compile fastecdsa, which libp2p pins)
# when it is missing and we are root; otherwise stops with a message naming the package.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo_root/.venv"

ensure_system_packages() {
    if [ -e /usr/include/gmp.h ] || [ -e /usr/include/x86_64-linux-gnu/gmp.h ] \
        || dpkg -s libgmp-dev >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ]; then
        echo "healthnode: installing Debian package libgmp-dev (needed to build fastecdsa for libp2p)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev >/dev/null
    else
        echo "healthnode: the Debian package libgmp-dev is missing; install it with: sudo apt-get install libgmp-dev" >&2
        exit 1
    fi
}

ensure_venv() {
    local extras="$1"
    local stamp="$venv/.healthnode-installed-$extras"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    # Reinstall when pyproject.toml changed since the last install.
    if [ ! -f "$stamp" ] || [ "$repo_root/pyproject.toml" -nt "$stamp" ]; then
        ensure_system_packages
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo_root[$extras]"
        touch "$stamp"
    fi
}
