#!/usr/bin/env bash
# What the browser test (tests/browser, docs/CHAT_PAGE.md) needs: Debian's Chromium, a font
# with Hangul (so screenshots of Korean text are legible), and playwright-core from npm.
# Idempotent and non-interactive; runs as root. Playwright's own browser download does not
# work here, so the test drives /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=()
if [ ! -x /usr/bin/chromium ]; then
  packages+=(chromium)
fi
if ! fc-list :lang=ko 2>/dev/null | grep -q .; then
  packages+=(fonts-nanum)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  apt-get update
  apt-get install -y "${packages[@]}" </dev/null
fi

if [ -f tests/browser/package-lock.json ]; then
  npm ci --prefix tests/browser --no-audit --no-fund </dev/null
else
  npm install --prefix tests/browser --no-audit --no-fund </dev/null
fi
