#!/usr/bin/env bash
# Install the headless browser the web UI tests drive: Debian's chromium (+ CJK fonts for readable screenshots).
# Does nothing when /usr/bin/chromium exists; needs root (or passwordless sudo) to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "chromium is missing and installing it needs root: apt-get install -y chromium fonts-noto-cjk" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install chromium at /usr/bin/chromium by other means" >&2
  exit 1
fi
echo "==> installing chromium (headless browser for the web UI tests)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null
/usr/bin/chromium --version || true
