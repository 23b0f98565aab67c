#!/bin/sh
# What `make browser-test` drives: Debian's Chromium (Playwright's own browser download is not reachable here).
# Installed when missing, as root; otherwise says how to install it and fails.
set -eu
chromium="${WB_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "no Chromium at $chromium: the browser tests drive Debian's Chromium." >&2
    echo "Install it with \`sudo apt-get update && sudo apt-get install -y chromium\`," >&2
    echo "or point WB_CHROMIUM at a Chromium binary." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x "$chromium" ] || { echo "apt-get installed chromium, but there is no $chromium" >&2; exit 1; }
