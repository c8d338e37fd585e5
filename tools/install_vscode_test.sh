#!/usr/bin/env bash
# Installs what tests/editors/test_vscode.py needs to run the extension in real VS Code, and builds
# the extension: Debian's chromium and ripgrep, code-server (VS Code in a browser), playwright-core
# (drives chromium), and editors/vscode packaged as a .vsix.
#
# Idempotent and cached in ~/.cache/mellum-lsp-ci/ (override with MELLUM_CI_CACHE): a second run
# only checks stamps and takes seconds; the .vsix is rebuilt when editors/vscode changes.
# Writes $CACHE/vscode-test.json (paths and versions) for the test and prints its path last.
#
# Exit codes: 0 ready; 75 something could not be installed here (no registry, not root): the test
# skips and names it; anything else is a real failure (a build error in the extension, ...).
#
# Offline facts (DESIGN.md §9): code-server's postinstall runs `npm install` in lib/vscode, which
# as root needs npm_config_unsafe_perm, and node-pty there runs `npx node-gyp` (npm_config_yes);
# @vscode/ripgrep downloads rg from outside the registries unless its cache folder already holds the
# release archive, which we make from Debian's /usr/bin/rg; npm 11 runs dependencies' install
# scripts only when a project's allowScripts or .npmrc allows them (not from the environment), so
# code-server is unpacked without scripts, .npmrc files allowing the few that must run are written
# in it and in its lib/vscode (where its postinstall runs `npm install`), then `npm rebuild` runs them.
set -euo pipefail

CODE_SERVER_VERSION=4.100.3   # the newest whose install runs on Node 20 (VS Code 1.100.3)
PLAYWRIGHT_VERSION=1.65.1
# What code-server 4.100.3 pins (lib/vscode/npm-shrinkwrap.json) and what that version of
# @vscode/ripgrep expects (lib/postinstall.js VERSION, lib/download.js asset name).
RIPGREP_NPM_VERSION=1.15.11
RIPGREP_ASSET=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
# Packages whose install scripts must run: code-server's own, then those of lib/vscode.
ALLOW_SCRIPTS=code-server,argon2
ALLOW_SCRIPTS_VSCODE=@parcel/watcher,@vscode/deviceid,@vscode/ripgrep,@vscode/spdlog,kerberos,native-watchdog,node-pty

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MELLUM_CI_CACHE:-$HOME/.cache/mellum-lsp-ci}
EXT_SRC=$REPO/editors/vscode
CS_DIR=$CACHE/code-server-$CODE_SERVER_VERSION
TOOLS_DIR=$CACHE/node-tools-playwright-$PLAYWRIGHT_VERSION
EXT_BUILD=$CACHE/vscode-extension-build
MANIFEST=$CACHE/vscode-test.json

say() { printf 'install_vscode_test: %s\n' "$*" >&2; }
cannot() { say "cannot install: $*"; exit 75; }
npm_quiet() { npm --no-audit --no-fund --loglevel=error "$@"; }

export npm_config_unsafe_perm=true npm_config_yes=true
# node-gyp builds against the installed Node's headers instead of downloading them.
[ -e /usr/include/node/common.gypi ] && export npm_config_nodedir=/usr
export npm_config_update_notifier=false

mkdir -p "$CACHE"
[ "$(uname -m)" = x86_64 ] || cannot "only x86_64 Linux is set up here (got $(uname -m))"
command -v node >/dev/null && command -v npm >/dev/null || cannot "node and npm are not on PATH"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" = 20 ] || cannot "code-server $CODE_SERVER_VERSION needs Node 20, found $(node --version)"

# ---- 1. Debian packages ------------------------------------------------------------------------
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v rg >/dev/null || missing+=(ripgrep)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v g++ >/dev/null && command -v make >/dev/null || missing+=(build-essential)
[ -e /usr/include/krb5.h ] || [ -e /usr/include/gssapi/gssapi.h ] || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || cannot "apt packages missing (${missing[*]}) and not root: apt-get install ${missing[*]}"
  command -v apt-get >/dev/null || cannot "apt packages missing (${missing[*]}) and no apt-get"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -q >&2 || cannot "apt-get update failed (no package registry?)"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || cannot "apt-get install ${missing[*]} failed"
  fi
fi

# ---- 2. ripgrep for @vscode/ripgrep, from Debian's rg (its own download is not reachable) -------
rg_cache="$(node -p 'require("os").tmpdir()')/vscode-ripgrep-cache-$RIPGREP_NPM_VERSION"
if [ ! -s "$rg_cache/$RIPGREP_ASSET" ]; then
  mkdir -p "$rg_cache"
  tmp=$(mktemp -d)
  cp "$(command -v rg)" "$tmp/rg"
  tar -czf "$rg_cache/$RIPGREP_ASSET.part" -C "$tmp" rg
  mv "$rg_cache/$RIPGREP_ASSET.part" "$rg_cache/$RIPGREP_ASSET"
  rm -rf "$tmp"
fi

# ---- 3. code-server -----------------------------------------------------------------------------
CODE_SERVER=$CS_DIR/node_modules/.bin/code-server
if [ ! -e "$CS_DIR/.complete" ]; then
  say "npm install code-server@$CODE_SERVER_VERSION (a few minutes: native modules are built)"
  rm -rf "$CS_DIR"
  mkdir -p "$CS_DIR"
  echo '{"name": "mellum-code-server", "private": true}' >"$CS_DIR/package.json"
  echo "allow-scripts=$ALLOW_SCRIPTS" >"$CS_DIR/.npmrc"
  log=$CACHE/code-server-install.log
  if ! (cd "$CS_DIR" && npm_quiet install --no-save --ignore-scripts "code-server@$CODE_SERVER_VERSION") >"$log" 2>&1; then
    tail -30 "$log" >&2
    if grep -qE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|network' "$log"; then
      cannot "npm could not reach the registry for code-server@$CODE_SERVER_VERSION (log: $log)"
    fi
    say "npm install code-server@$CODE_SERVER_VERSION failed (log: $log)"
    exit 1
  fi
  # code-server's postinstall, run directly: run by npm it would inherit npm's allow-scripts
  # setting in the environment, which the `npm install` it runs in lib/vscode refuses.
  cs=$CS_DIR/node_modules/code-server
  echo "allow-scripts=$ALLOW_SCRIPTS_VSCODE" >"$cs/lib/vscode/.npmrc"
  if ! { (cd "$CS_DIR" && npm_quiet rebuild argon2) &&
    (cd "$cs" && npm_config_user_agent="npm/$(npm --version) node/$(node --version) linux x64" sh ./postinstall.sh)
  } >>"$log" 2>&1; then
    tail -30 "$log" >&2
    if grep -qE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET' "$log"; then
      cannot "npm could not reach the registry for code-server's VS Code dependencies (log: $log)"
    fi
    say "code-server's postinstall failed (log: $log)"
    exit 1
  fi
  vs=$CS_DIR/node_modules/code-server/lib/vscode/node_modules
  for f in "$vs/@vscode/ripgrep/bin/rg" "$vs/node-pty/build/Release/pty.node"; do
    [ -e "$f" ] || { say "code-server installed without $f (log: $log)"; exit 1; }
  done
  "$CODE_SERVER" --version >/dev/null
  touch "$CS_DIR/.complete"
fi

# ---- 4. playwright-core (drives Debian's chromium; downloads no browser) ------------------------
if [ ! -e "$TOOLS_DIR/.complete" ]; then
  say "npm install playwright-core@$PLAYWRIGHT_VERSION"
  rm -rf "$TOOLS_DIR"
  mkdir -p "$TOOLS_DIR"
  echo '{"name": "mellum-node-tools", "private": true}' >"$TOOLS_DIR/package.json"
  (cd "$TOOLS_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_quiet install --no-save \
    "playwright-core@$PLAYWRIGHT_VERSION" >&2) || cannot "npm install playwright-core@$PLAYWRIGHT_VERSION failed"
  touch "$TOOLS_DIR/.complete"
fi

# ---- 5. the extension: type-check, bundle, package ----------------------------------------------
# Built in a copy under the cache (node_modules kept there, the work tree stays clean); the .vsix is
# named by a hash of the sources, so a change in editors/vscode builds a new one.
sources=(package.json package-lock.json tsconfig.json .vscodeignore README.md src)
src_hash=$(cd "$EXT_SRC" && find "${sources[@]}" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
VSIX=$CACHE/vsix/mellum-lsp-$src_hash.vsix
if [ ! -s "$VSIX" ]; then
  say "building the extension ($src_hash)"
  mkdir -p "$EXT_BUILD" "$CACHE/vsix"
  find "$EXT_BUILD" -mindepth 1 -maxdepth 1 ! -name node_modules ! -name .lock-hash -exec rm -rf {} +
  (cd "$EXT_SRC" && cp -r "${sources[@]}" "$EXT_BUILD/")
  lock_hash=$(sha256sum "$EXT_BUILD/package-lock.json" | cut -c1-16)
  if [ "$(cat "$EXT_BUILD/.lock-hash" 2>/dev/null)" != "$lock_hash" ]; then
    (cd "$EXT_BUILD" && npm_quiet ci >&2) || cannot "npm ci for the extension's dependencies failed"
    echo "$lock_hash" >"$EXT_BUILD/.lock-hash"
  fi
  (cd "$EXT_BUILD" && npm run --silent package >&2)
  mv "$EXT_BUILD/mellum-lsp.vsix" "$VSIX"
fi

# ---- 6. what the test reads ---------------------------------------------------------------------
CS_DIR=$CS_DIR CODE_SERVER=$CODE_SERVER TOOLS_DIR=$TOOLS_DIR VSIX=$VSIX MANIFEST=$MANIFEST \
  CODE_SERVER_VERSION=$CODE_SERVER_VERSION PLAYWRIGHT_VERSION=$PLAYWRIGHT_VERSION EXT_BUILD=$EXT_BUILD \
  node -e '
const fs = require("fs"), path = require("path"), cp = require("child_process");
const e = process.env;
const vscodeProduct = require(path.join(e.CS_DIR, "node_modules/code-server/lib/vscode/product.json"));
const lc = require(path.join(e.EXT_BUILD, "node_modules/vscode-languageclient/package.json"));
const manifest = {
  codeServer: e.CODE_SERVER,
  chromium: cp.execFileSync("sh", ["-c", "command -v chromium"]).toString().trim(),
  nodePath: path.join(e.TOOLS_DIR, "node_modules"),
  vsix: e.VSIX,
  versions: {
    codeServer: e.CODE_SERVER_VERSION,
    vscode: vscodeProduct.version,
    playwrightCore: e.PLAYWRIGHT_VERSION,
    vscodeLanguageclient: lc.version,
    node: process.version,
    chromium: cp.execFileSync("chromium", ["--version"], {stdio: ["ignore", "pipe", "ignore"]}).toString().trim(),
  },
};
fs.writeFileSync(e.MANIFEST + ".part", JSON.stringify(manifest, null, 2) + "\n");
fs.renameSync(e.MANIFEST + ".part", e.MANIFEST);
'
echo "$MANIFEST"
