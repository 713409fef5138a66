#!/usr/bin/env bash
# System packages the integration tests use: PostgreSQL (store tests) and Chromium + CJK fonts (web UI tests).
# Installs what is missing with apt-get when run as root; otherwise says what to install and carries on
# (the tests that need a missing piece then skip with that reason).
set -uo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if command -v dpkg >/dev/null 2>&1; then
  dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "==> system packages present (postgresql, chromium, CJK fonts)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> missing system packages: ${need[*]} (install them with apt-get as root); their tests will skip" >&2
  exit 0
fi
echo "==> installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
  echo "==> apt-get could not install ${need[*]}; their tests will skip" >&2
# Debian starts a cluster on install; the tests run their own servers on free ports.
command -v pg_ctlcluster >/dev/null 2>&1 && service postgresql stop >/dev/null 2>&1 || true
exit 0
