#!/bin/sh
# Install what t/90-browser.t needs, each piece only when it is missing:
#   - Debian's chromium (/usr/bin/chromium),
#   - node and npm (Debian's nodejs npm) when there is no node,
#   - playwright-core, the version pinned in package.json, into
#     t/browser/node_modules (npm ci from package-lock.json). It never
#     downloads a browser of its own: the test drives Debian's chromium.
# Fast (no apt, no npm) when everything is already there. Runs as root
# (CI) or through sudo.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

export DEBIAN_FRONTEND=noninteractive
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

say() { printf 'browser setup: %s\n' "$*" >&2; }

apt_install() {
    say "apt-get install $*"
    if ! $sudo apt-get install -y -qq "$@" >/dev/null 2>&1; then
        # the package lists may be missing or stale: refresh them once
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq "$@" >/dev/null
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi

if ! command -v node >/dev/null 2>&1; then
    apt_install nodejs npm
elif ! command -v npm >/dev/null 2>&1; then
    apt_install npm
fi

# playwright-core at the pinned version?
want=$(node -e 'process.stdout.write(require("./package.json").dependencies["playwright-core"])')
have=$(node -e 'try { process.stdout.write(require("./node_modules/playwright-core/package.json").version) } catch (e) {}')
if [ "$have" != "$want" ]; then
    say "npm: playwright-core $want"
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error >&2
    else
        npm install --no-audit --no-fund --loglevel=error >&2
    fi
fi
